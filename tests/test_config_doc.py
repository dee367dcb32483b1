"""The generated configuration reference: up to date, complete, rendered in TOML terms."""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, SecretStr

from dialer import config_doc
from dialer.config import CampaignConfig, DaemonConfig
from dialer.outcomes import Outcome
from dialer.pacing import POLICIES


def test_docs_configuration_md_is_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    code = config_doc.main(["--check"])
    assert code == 0, capsys.readouterr().err + " (run: python -m dialer.config_doc)"


def test_check_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n", encoding="utf-8")
    assert config_doc.main(["--check", "--output", str(stale)]) == 1
    assert f"{stale} is out of date: run python -m dialer.config_doc" in capsys.readouterr().err
    assert config_doc.main(["--output", str(stale)]) == 0
    assert config_doc.main(["--check", "--output", str(stale)]) == 0


def all_models() -> list[type[BaseModel]]:
    sections = config_doc.daemon_sections() + config_doc.campaign_sections()
    return [section.model for section in sections]


def test_every_key_is_described_and_appears_in_the_reference() -> None:
    text = config_doc.render()
    undocumented = []
    for model in all_models():
        for name, info in model.model_fields.items():
            key = info.alias or name
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                assert f"[{key}]" in text or f".{key}]" in text, key
                continue
            if not config_doc.describe(model, name, info):
                undocumented.append(f"{model.__name__}.{name}")
            assert f"| `{key}` |" in text, f"{model.__name__}.{name} missing from the reference"
    assert not undocumented, f"give these fields a description: {undocumented}"
    for policy in POLICIES:
        assert f'### [pacing.params] for policy = "{policy}"' in text


def test_reference_covers_both_files_and_secret_alternatives() -> None:
    text = config_doc.render()
    assert "## dialer.toml" in text and "## Campaign files" in text
    assert "(or `token_file`: a file holding it; `token_env`: a variable's name)" in text
    assert "| `ring_timeout_s` | number | `25.0` | ≥ 15.0, ≤ 120 |" in text
    assert "| `json` | boolean, optional | unset |" in text  # the alias, as written in TOML
    tops = [s.model for s in config_doc.daemon_sections() + config_doc.campaign_sections()
            if s.title == "top level"]
    assert tops == [DaemonConfig, CampaignConfig]


@pytest.mark.parametrize(
    ("annotation", "name"),
    [
        (int | None, "integer, optional"),
        (tuple[str, ...], "list of string"),
        (dict[Outcome, int], "table of outcome → integer"),
        (Literal["a", "b"], "one of `a`, `b`"),
        (SecretStr | None, "secret, optional"),
        (time, "time"),
    ],
)
def test_type_names(annotation: object, name: str) -> None:
    assert config_doc.type_name(annotation) == name


@pytest.mark.parametrize(
    ("value", "toml"),
    [
        (None, "unset"),
        (True, "true"),
        (Outcome.BUSY, '"busy"'),
        (time(8, 30), "08:30:00"),
        ({"Call-Info": "x", "a_b": 1}, '{ Call-Info = "x", a_b = 1 }'),
        (("*",), '["*"]'),
        (Path("campaigns"), '"campaigns"'),
    ],
)
def test_toml_values(value: object, toml: str) -> None:
    assert config_doc.toml_value(value) == toml
