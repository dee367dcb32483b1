"""Daemon and campaign configuration: shipped samples, every problem reported at once, secrets,
the Redis URL override, and `dialer check-config`."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from dialer import config_cli
from dialer.config import (
    REDIS_URL_ENV,
    CampaignConfig,
    DaemonConfig,
    HoursWindow,
    RetryRule,
    load_all,
    load_campaign,
    load_daemon_config,
    secret_paths,
)
from dialer.errors import ConfigError
from dialer.pacing import POLICIES

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DAEMON = ROOT / "config" / "dialer.toml"
SAMPLE_CAMPAIGN = ROOT / "config" / "campaigns" / "sample.toml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return exc.value.problems


# Shipped samples -----------------------------------------------------------------------------------


def test_shipped_daemon_config_and_campaigns_are_valid() -> None:
    daemon, campaigns = load_all(SAMPLE_DAEMON, env={})
    assert daemon == load_daemon_config(SAMPLE_DAEMON, env={})
    assert daemon.campaigns_dir == SAMPLE_DAEMON.parent / "campaigns"
    assert daemon.api.host == "127.0.0.1" and daemon.api.token is None
    assert "sample" in campaigns


def test_shipped_sample_campaign_is_valid_and_predictive() -> None:
    campaign = load_campaign(SAMPLE_CAMPAIGN)
    assert campaign.name == "sample"
    assert campaign.pacing.policy == "predictive"
    # Every active value in the sample is the default: the file documents defaults, it does not
    # silently change them.
    assert campaign == CampaignConfig(name="sample")


def documented_keys(text: str) -> set[str]:
    """Dotted key paths a TOML sample sets or shows in a `# key = value` comment (tables included)."""
    keys: set[str] = set()
    table = ""
    for line in text.splitlines():
        header = re.match(r"^\s*#?\s*\[([A-Za-z0-9_.-]+)\]\s*$", line)
        if header:
            table = header.group(1)
            parts = table.split(".")
            keys |= {".".join(parts[: i + 1]) for i in range(len(parts))}
            continue
        assignment = re.match(r"^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if assignment:
            keys.add(f"{table}.{assignment.group(1)}" if table else assignment.group(1))
    return keys


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted key paths of every field of `model`, nested models expanded."""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        keys.add(key)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= model_keys(annotation, key + ".")
    return keys


def test_campaign_sample_shows_the_predictive_defaults() -> None:
    """The commented [pacing.params] lines claim to be the defaults: keep them true."""
    text = SAMPLE_CAMPAIGN.read_text(encoding="utf-8")
    section = text.split("[pacing.params]\n", 1)[1].split("\n[", 1)[0]
    shown = tomllib.loads("\n".join(
        line.lstrip("# ") for line in section.splitlines() if re.match(r"^#\s*\w+\s*=", line)
    ))
    defaults = POLICIES["predictive"].Params().model_dump()
    assert shown == defaults


def test_daemon_sample_documents_every_key_and_no_other() -> None:
    documented = documented_keys(SAMPLE_DAEMON.read_text(encoding="utf-8"))
    secrets = {".".join(path) for path in secret_paths(DaemonConfig)}
    alternatives = {f"{s}{suffix}" for s in secrets for suffix in ("", "_file", "_env")}
    missing = model_keys(DaemonConfig) - secrets - documented
    for dotted in secrets:
        if not {dotted, f"{dotted}_file", f"{dotted}_env"} & documented:
            missing.add(dotted)
    assert not missing, f"config/dialer.toml does not document: {sorted(missing)}"
    stale = documented - model_keys(DaemonConfig) - alternatives
    assert not stale, f"config/dialer.toml documents keys that do not exist: {sorted(stale)}"


def test_campaign_sample_documents_every_key_and_no_other() -> None:
    documented = documented_keys(SAMPLE_CAMPAIGN.read_text(encoding="utf-8"))
    expected = model_keys(CampaignConfig)
    expected |= {f"pacing.params.{k}" for k in POLICIES["predictive"].Params.model_fields}
    missing = expected - documented
    assert not missing, f"config/campaigns/sample.toml does not document: {sorted(missing)}"
    # Keyed tables: [retry.OUTCOME] holds RetryRule keys, [hours.overrides.PLACE] HoursWindow keys.
    keyed: dict[str, type[BaseModel]] = {
        r"retry\.[a-z_]+": RetryRule,
        r"hours\.overrides\.[A-Z]{2}(-[A-Z0-9]{1,3})?": HoursWindow,
    }
    stale = set()
    for key in documented - expected:
        table, _, field = key.rpartition(".")
        if any(re.fullmatch(p, key) for p in keyed):
            continue
        if any(re.fullmatch(p, table) and field in m.model_fields for p, m in keyed.items()):
            continue
        stale.add(key)
    assert not stale, f"config/campaigns/sample.toml documents keys that do not exist: {sorted(stale)}"


# Every problem at once --------------------------------------------------------------------------------


def test_problems_across_files_are_listed_together_with_file_and_key_path(tmp_path: Path) -> None:
    daemon = write(
        tmp_path / "dialer.toml",
        'drain_timeout_s = -5\n[api]\nprot = 8080\n[logging]\nlevel = "verbose"\n',
    )
    first = write(
        tmp_path / "campaigns" / "first.toml",
        "ring_timout_s = 20\nwrap_up_s = -1\nring_timeout_s = 10\n[pacing]\npolicy = \"psychic\"\n",
    )
    second = write(
        tmp_path / "campaigns" / "second.toml",
        '[pacing]\npolicy = "predictive"\nparams = { alpha_initial = 0.1, gain = 3 }\n',
    )
    write(tmp_path / "campaigns" / "fine.toml", "max_lines = 10\n")
    with pytest.raises(ConfigError) as exc:
        load_all(daemon, env={})
    policies = sorted(POLICIES)
    assert problems_of(exc) == [
        f"{daemon}: drain_timeout_s: Input should be greater than or equal to 0",
        f"{daemon}: api.prot: unknown key (did you mean 'port'?)",
        f"{daemon}: logging.level: Input should be 'debug', 'info', 'warning', 'error' or 'critical'",
        f"{first}: pacing.policy: unknown policy 'psychic', expected one of {policies}",
        f"{first}: ring_timeout_s: Input should be greater than or equal to 15",
        f"{first}: wrap_up_s: Input should be greater than or equal to 0",
        f"{first}: ring_timout_s: unknown key (did you mean 'ring_timeout_s'?)",
        f"{second}: pacing.params.gain: unknown key",
    ]
    # The rendered error names every one of them too.
    text = str(exc.value)
    assert text.startswith("invalid configuration:\n")
    assert text.count("\n  - ") == 8


def test_a_broken_daemon_file_still_gets_its_campaigns_checked(tmp_path: Path) -> None:
    daemon = write(tmp_path / "dialer.toml", "campaigns_dir = 'mine'\n[redis\n")
    with pytest.raises(ConfigError) as exc:
        load_all(daemon, env={})
    [syntax, missing_dir] = problems_of(exc)
    assert syntax.startswith(f"{daemon}: not valid TOML: ")
    assert missing_dir == f"{daemon}: campaigns_dir: {tmp_path / 'campaigns'} is not a directory"

    write(daemon, "campaigns_dir = 'mine'\ndrain_timeout_s = 'soon'\n")
    bad = write(tmp_path / "mine" / "bad.toml", "max_lines = 0\n")
    with pytest.raises(ConfigError) as exc:
        load_all(daemon, env={})
    assert problems_of(exc) == [
        f"{daemon}: drain_timeout_s: Input should be a valid number, unable to parse string as a number",
        f"{bad}: max_lines: Input should be greater than or equal to 1",
    ]


def test_campaign_names_must_be_unique(tmp_path: Path) -> None:
    daemon = write(tmp_path / "dialer.toml", "")
    first = write(tmp_path / "campaigns" / "a.toml", 'name = "sales"\n')
    second = write(tmp_path / "campaigns" / "b.toml", 'name = "sales"\n')
    with pytest.raises(ConfigError) as exc:
        load_all(daemon, env={})
    assert problems_of(exc) == [f"{second}: name: campaign 'sales' is already defined in {first}"]


def test_api_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    daemon = write(tmp_path / "dialer.toml", '[api]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError) as exc:
        load_daemon_config(daemon, env={})
    assert problems_of(exc) == [f"{daemon}: api: binding '0.0.0.0' beyond loopback needs a token (api.token)"]
    write(daemon, '[api]\nhost = "::1"\n')
    assert load_daemon_config(daemon, env={}).api.host == "::1"


# Secrets and the environment --------------------------------------------------------------------------


def test_secrets_come_from_files_and_environment_variables(tmp_path: Path) -> None:
    write(tmp_path / "secrets" / "sip", "s1p-pa55\n")
    daemon = write(
        tmp_path / "dialer.toml",
        '[sip]\nusername = "dialer"\npassword_file = "secrets/sip"\n'
        '[api]\ntoken_env = "TEST_API_TOKEN"\n'
        '[redis]\nsentinels = ["10.0.0.1:26379"]\nsentinel_password = "inline"\n',
    )
    config = load_daemon_config(daemon, env={"TEST_API_TOKEN": "t0ken"})
    assert config.sip.password is not None and config.sip.password.get_secret_value() == "s1p-pa55"
    assert config.api.token is not None and config.api.token.get_secret_value() == "t0ken"
    assert config.redis.sentinel_password == SecretStr("inline")
    # Secrets never show in a repr or a dump meant for logs.
    for text in (repr(config), str(config.model_dump())):
        assert "s1p-pa55" not in text and "t0ken" not in text and "inline" not in text


def test_secret_problems_are_reported_with_their_key(tmp_path: Path) -> None:
    daemon = write(
        tmp_path / "dialer.toml",
        '[sip]\nusername = "u"\npassword_file = "absent"\n'
        '[api]\ntoken_env = "UNSET_TOKEN"\n'
        '[redis]\npassword = "x"\npassword_env = "REDIS_PW"\n',
    )
    with pytest.raises(ConfigError) as exc:
        load_daemon_config(daemon, env={})
    assert problems_of(exc) == [
        f"{daemon}: redis.password: give only one of password, password_file, password_env",
        f"{daemon}: sip.password_file: cannot read {tmp_path / 'absent'}: No such file or directory",
        f"{daemon}: api.token_env: environment variable UNSET_TOKEN is not set",
    ]


def test_redis_url_comes_from_the_environment_when_set(tmp_path: Path) -> None:
    daemon = write(tmp_path / "dialer.toml", '[redis]\nurl = "redis://10.1.1.1:6379/0"\n')
    url = "redis://:pw@127.0.0.1:6390/3"
    config = load_daemon_config(daemon, env={REDIS_URL_ENV: url})
    assert config.redis.url == url
    assert config.redis.redacted_url == "redis://:***@127.0.0.1:6390/3"
    assert load_daemon_config(daemon, env={}).redis.url == "redis://10.1.1.1:6379/0"
    with pytest.raises(ConfigError) as exc:
        load_daemon_config(daemon, env={REDIS_URL_ENV: "http://127.0.0.1"})
    assert problems_of(exc) == [
        f"{daemon}: redis.url: expected a redis://, rediss:// or unix:// URL (from ${REDIS_URL_ENV})"
    ]


def test_sentinel_addresses_are_checked(tmp_path: Path) -> None:
    daemon = write(tmp_path / "dialer.toml", '[redis]\nsentinels = ["10.0.0.1:26379", "nohost"]\n')
    with pytest.raises(ConfigError) as exc:
        load_daemon_config(daemon, env={})
    assert problems_of(exc) == [f"{daemon}: redis.sentinels: sentinel 'nohost' is not 'host:port'"]


# dialer check-config ----------------------------------------------------------------------------------


def run_check(path: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    config_cli.register(parser.add_subparsers())
    args = parser.parse_args(["check-config", str(path), *extra])
    code: int = args.func(args)
    return code


def test_check_config_exit_codes_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_check(SAMPLE_DAEMON)
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert out == f"{SAMPLE_DAEMON}: valid; campaigns from {SAMPLE_DAEMON.parent / 'campaigns'}: sample\n"

    code = run_check(SAMPLE_CAMPAIGN)
    assert code == 0
    assert capsys.readouterr().out == f"{SAMPLE_CAMPAIGN}: valid campaign 'sample' (pacing predictive)\n"

    text = "ring_timeout_s = 14.9\npacing = { policy = 'ratio', params = { r = 1 } }\n"
    bad = write(tmp_path / "x.toml", text)
    code = run_check(bad)  # no daemon-only key and campaign keys: checked as a campaign
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert run_check(bad, "--daemon") == 1  # forced: read as a dialer.toml, every key is unknown
    assert "x.toml: ring_timeout_s: unknown key" in capsys.readouterr().err
    assert err.splitlines() == [
        f"{bad}: invalid configuration, 2 problem(s):",
        f"  - {bad}: pacing.params.r: unknown key",
        f"  - {bad}: ring_timeout_s: Input should be greater than or equal to 15",
    ]


def test_check_config_as_a_command(tmp_path: Path) -> None:
    """The interface operators and outside checks use: `python -m dialer check-config PATH`."""
    env = {k: v for k, v in os.environ.items() if k != REDIS_URL_ENV}
    ok = subprocess.run(
        [sys.executable, "-m", "dialer", "check-config", str(SAMPLE_DAEMON)],
        capture_output=True, text=True, env=env, timeout=30, check=False,
    )
    assert ok.returncode == 0, ok.stderr
    daemon = write(tmp_path / "dialer.toml", "[metrics]\nenabled = 'maybe'\n")
    write(tmp_path / "campaigns" / "c.toml", "abandon_limit = 0.5\nabandon_target = 0.6\n")
    bad = subprocess.run(
        [sys.executable, "-m", "dialer", "check-config", str(daemon)],
        capture_output=True, text=True, env=env, timeout=30, check=False,
    )
    assert bad.returncode == 1
    assert f"{daemon}: metrics.enabled: Input should be a valid boolean" in bad.stderr
    campaign = tmp_path / "campaigns" / "c.toml"
    assert f"{campaign}: (top level): abandon_target must not exceed abandon_limit" in bad.stderr


def test_samples_parse_as_plain_toml() -> None:
    """Guards against a sample that only our loader (not a TOML editor or linter) accepts."""
    for path in (SAMPLE_DAEMON, SAMPLE_CAMPAIGN):
        with path.open("rb") as fh:
            assert isinstance(tomllib.load(fh), dict)
