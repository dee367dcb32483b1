"""Generate the configuration reference (`docs/configuration.md`) from the settings models.

`python -m dialer.config_doc` rewrites the file; `--check` exits 1 when it is out of date (a test
runs the check, so the reference cannot drift from the code). Every key gets its type, default,
limits and description; the description comes from the field's `description`, or from
`FALLBACK_DESCRIPTIONS` for models whose fields carry none.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, time
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from dialer.config import (
    DEFAULT_RETRY,
    REDIS_URL_ENV,
    CallingHours,
    CampaignConfig,
    DaemonConfig,
    HoursWindow,
    RetryRule,
)
from dialer.outcomes import Outcome
from dialer.pacing import POLICIES

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

FALLBACK_DESCRIPTIONS: dict[str, str] = {
    "CampaignConfig.name": "campaign name in the API, metrics and logs; default: the file name",
    "CampaignConfig.mode": "agent: live answers go to agents; robocall: a message plays first",
    "CampaignConfig.agent_pool": "agent pool whose agents take this campaign's calls",
    "CampaignConfig.ring_timeout_s": "seconds a call rings before we give up; the law's floor is 15 s",
    "CampaignConfig.abandon_target": "abandon rate the pacing controller aims for (fraction)",
    "CampaignConfig.abandon_limit": "abandon rate never to exceed over the window (fraction; FTC 0.03)",
    "CampaignConfig.rule_pack": "compliance rule pack: us (TCPA/TSR), uk (Ofcom/PECR), ca (CRTC)",
    "CampaignConfig.caller_id": "caller ID presented on every call (E.164)",
    "CampaignConfig.transfer_mode": "bridge: the worker joins customer and agent legs; refer: blind transfer",
    "CampaignConfig.machine_action": "on an answering machine: hang up, or leave machine_message",
    "CampaignConfig.machine_message": "audio file left on machines when machine_action = 'message'",
    "CampaignConfig.safe_harbor_message": "audio file played on an abandoned call (FTC safe harbor)",
    "CampaignConfig.robocall_message": "audio file played first when a person answers a robocall",
    "CampaignConfig.connect_key": "DTMF key with which a robocall listener asks for an agent",
    "CampaignConfig.opt_out_key": "DTMF key that puts the number on the internal do-not-call list",
    "CampaignConfig.retry": "retry rule per outcome; listing any replaces every default rule",
    "PacingSettings.policy": "pacing policy: " + ", ".join(sorted(POLICIES)),
    "PacingSettings.params": "the policy's parameters (see the policy tables below)",
    "SipSettings.rtp_port_base": "first RTP port; worker i uses rtp_ports_per_worker ports from here",
    "SipSettings.heartbeat_interval_s": "seconds between pool-to-worker heartbeats",
    "SipSettings.restart_backoff_initial_s": "first delay before restarting a crashed worker (doubles)",
    "SipSettings.restart_backoff_max_s": "longest delay between worker restarts",
    "VicidialParams.drop_method": "VICIdial's ADAPT_ dial method: how the drop percentage bounds the level",
}


@dataclass(frozen=True)
class Section:
    """One table of the reference: a TOML table and the model that validates it."""

    title: str
    model: type[BaseModel]
    note: str = ""


def describe(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    """The description of a field, from the model or the fallbacks ('' when there is none)."""
    return info.description or FALLBACK_DESCRIPTIONS.get(f"{model.__name__}.{name}", "")


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def type_name(tp: Any) -> str:
    """A reader's name for an annotation, in TOML terms."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = " or ".join(type_name(a) for a in args)
        return f"{inner}, optional" if len(args) < len(get_args(tp)) else inner
    if origin is Literal:
        return "one of " + ", ".join(f"`{v}`" for v in get_args(tp))
    if origin in (tuple, list, frozenset, set):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping):
        key, value = get_args(tp)
        key_name = key.__name__.lower() if isinstance(key, type) and issubclass(key, Enum) else type_name(key)
        return f"table of {key_name} → {type_name(value)}"
    if isinstance(tp, type):
        if issubclass(tp, Enum):
            return "one of " + ", ".join(f"`{m.value}`" for m in tp)
        if issubclass(tp, BaseModel):
            return "table"
        names: dict[type, str] = {
            bool: "boolean",
            int: "integer",
            float: "number",
            str: "string",
            Path: "path",
            SecretStr: "secret",
            time: "time",
            date: "date",
        }
        if tp in names:
            return names[tp]
    if tp is Any:
        return "any"
    return str(tp)


def toml_value(value: Any) -> str:
    """A default rendered as it would be written in TOML."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return f'"{value.value}"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, time | date):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return toml_value(value.model_dump(by_alias=True))
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def _key(key: Any) -> str:
    text = key.value if isinstance(key, Enum) else str(key)
    return text if text.replace("_", "").replace("-", "").isalnum() else f'"{text}"'


def default_of(info: FieldInfo) -> str:
    """The field's default as TOML, or 'required'."""
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(table)"
    return toml_value(value)


def limits_of(info: FieldInfo) -> str:
    """Bounds and patterns declared on a field."""
    parts: list[str] = []
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            parts.append(f"≥ {meta.ge}")
        elif isinstance(meta, annotated_types.Gt):
            parts.append(f"> {meta.gt}")
        elif isinstance(meta, annotated_types.Le):
            parts.append(f"≤ {meta.le}")
        elif isinstance(meta, annotated_types.Lt):
            parts.append(f"< {meta.lt}")
        elif isinstance(meta, annotated_types.MinLen):
            parts.append(f"length ≥ {meta.min_length}")
        elif isinstance(meta, annotated_types.MaxLen):
            parts.append(f"length ≤ {meta.max_length}")
        elif getattr(meta, "pattern", None):
            parts.append(f"matches `{meta.pattern}`")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(model: type[BaseModel]) -> Iterator[str]:
    """Markdown rows for the non-table fields of `model`."""
    yield "| key | type | default | limits | description |"
    yield "|---|---|---|---|---|"
    for name, info in model.model_fields.items():
        if _is_model(info.annotation):
            continue  # a sub-table: it has its own section
        key = info.alias or name
        kind = type_name(info.annotation)
        description = describe(model, name, info)
        if "secret" in kind:
            description += f" (or `{key}_file`: a file holding it; `{key}_env`: a variable's name)"
        default = default_of(info)
        shown = default if default in ("required", "unset") else f"`{default}`"
        cells = [f"`{key}`", kind, shown, limits_of(info), description.replace("*", "\\*")]
        yield "| " + " | ".join(_cell(c) for c in cells) + " |"


def sub_sections(model: type[BaseModel], prefix: str) -> Iterator[Section]:
    """Sections for `model`'s table fields, depth first."""
    for name, info in model.model_fields.items():
        if _is_model(info.annotation):
            assert isinstance(info.annotation, type)
            title = f"{prefix}{info.alias or name}"
            yield Section(f"[{title}]", info.annotation)
            yield from sub_sections(info.annotation, title + ".")


def daemon_sections() -> list[Section]:
    """The tables of dialer.toml."""
    return [Section("top level", DaemonConfig), *sub_sections(DaemonConfig, "")]


def campaign_sections() -> list[Section]:
    """The tables of a campaign file, with one section per pacing policy and per keyed table."""
    sections = [Section("top level", CampaignConfig), *sub_sections(CampaignConfig, "")]
    sections.append(
        Section(
            "[retry.OUTCOME]",
            RetryRule,
            "OUTCOME is one of " + ", ".join(f"`{o.value}`" for o in Outcome) + ". Without any "
            "[retry.*] table the defaults apply: " + ", ".join(o.value for o in DEFAULT_RETRY) + ".",
        )
    )
    sections.append(
        Section(
            "[hours.overrides.PLACE]",
            HoursWindow,
            "PLACE is a callee place such as `US-FL`, `CA`, `CA-QC` or `GB`; the window applies there "
            "instead of the campaign's own (the law of the place still applies on top).",
        )
    )
    for policy in sorted(POLICIES):
        params = POLICIES[policy].Params
        note = "" if params.model_fields else "This policy has no parameters."
        sections.append(Section(f'[pacing.params] for policy = "{policy}"', params, note))
    return sections


def render() -> str:
    """The whole reference as markdown."""
    out: list[str] = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m dialer.config_doc` from the settings models: do not edit by hand."
        " -->",
        "",
        "Two kinds of file, both TOML, both validated whole (every problem reported at once, with file "
        "and key path) by `dialer check-config PATH` and on every reload (SIGHUP):",
        "",
        "- `config/dialer.toml`: the node (Redis, SIP trunk and workers, API, metrics, logging);",
        "- `config/campaigns/*.toml`: one campaign per file (pacing, rules, caller ID, hours, DNC, "
        "retries).",
        "",
        "The shipped samples `config/dialer.toml` and `config/campaigns/sample.toml` explain when to "
        "change each key. Unknown keys are errors. Durations are seconds (`_s`), rates are fractions.",
        "",
        "## dialer.toml",
        "",
        f"Secrets (type *secret*) may be given as `KEY_file` or `KEY_env` instead of `KEY`. "
        f"`${REDIS_URL_ENV}` overrides `redis.url`. Relative paths start at dialer.toml's directory.",
    ]
    for sections in (daemon_sections(), None, campaign_sections()):
        if sections is None:
            out += ["", "## Campaign files", ""]
            out.append(
                "The campaign's name defaults to the file name. "
                f"[hours] is a {CallingHours.__name__}: the campaign's window, narrowed by the law of the "
                "callee's place."
            )
            continue
        for section in sections:
            out += ["", f"### {section.title}", ""]
            doc = (section.model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
            if doc:
                out += [doc, ""]
            if section.note:
                out += [section.note, ""]
            rows = list(table(section.model))
            if len(rows) > 2:
                out += rows
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the reference, or with --check report whether it is up to date."""
    parser = argparse.ArgumentParser(prog="python -m dialer.config_doc", description=__doc__)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="file to write")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python -m dialer.config_doc", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
