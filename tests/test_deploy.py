"""Deployment files: every alert and dashboard expression uses only metrics the dialer defines,
the alert rules pass promtool (syntax and their unit tests), the systemd unit is hardened."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dialer.config import DaemonConfig
from dialer.metrics import exposition_names

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
UNIT = ROOT / "deploy" / "systemd" / "dialer.service"

PROMETHEUS_BUILTINS = {"up"}
"""Series Prometheus itself records for every target; alerts may use them."""

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (Grafana variables allowed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", e):
        name = match.group(0)
        if e[match.end():].lstrip().startswith("("):
            continue  # a function call
        if name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le, campaign) (rate(a_bucket{campaign=~"$campaign"}[$__rate_interval]))', {"a_bucket"}),
        ("x / on (campaign, window) y >= 0.028 / 0.03", {"x", "y"}),
        ('max_over_time(a{state="ready"}[5m]) == 0 and on (instance) b{s="x"} == 1', {"a", "b"}),
        ("increase(c_total[10m]) > 5 and ignoring(state) d offset 5m", {"c_total", "d"}),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[1m]))) > 1e3", {"h_bucket"}),
        ("label_values(s, campaign)", {"s", "campaign"}),  # templating queries need their own parse
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard_queries(dashboard: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(PromQL expressions of panels and annotations, metrics named by templating queries)."""
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    exprs.extend(a["expr"] for a in dashboard.get("annotations", {}).get("list", []) if a.get("expr"))
    template_metrics = []
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        if variable.get("type") != "query":
            continue
        match = re.fullmatch(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*\w+\s*\)", text)
        assert match, f"unsupported templating query {text!r}"
        template_metrics.append(match.group(1))
    return exprs, template_metrics


def test_alert_rules_use_only_defined_metrics() -> None:
    defined = exposition_names() | PROMETHEUS_BUILTINS
    rules = alert_rules()
    used: set[str] = set()
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert names <= defined, f"{rule['alert']} uses undefined metrics {sorted(names - defined)}"
        used |= names
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    alerts = {rule["alert"] for rule in rules}
    # The alerts issue 5 asks for.
    assert {
        "DialerAbandonRateNearLimit",
        "DialerDncListStale",
        "DialerNoReadyAgents",
        "DialerSipWorkerRestartStorm",
        "DialerRedisUnreachable",
    } <= alerts
    assert "dialer_dnc_list_age_seconds" in used and "dialer_redis_up" in used


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_uses_only_defined_metrics(path: Path) -> None:
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    defined = exposition_names()
    exprs, template_metrics = dashboard_queries(dashboard)
    assert exprs, "no expression found"
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        assert names <= defined, f"{expr!r} uses undefined metrics {sorted(names - defined)}"
    assert set(template_metrics) <= defined
    rows = {p["title"] for p in dashboard["panels"] if p["type"] == "row"}
    assert {"Pacing", "Agents", "Compliance", "SIP capacity"} <= rows
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_grafana_dashboard_exists() -> None:
    assert [p.name for p in DASHBOARDS] == ["dialer.json"]


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    rules = run_promtool("check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout
    config = run_promtool("check", "config", str(PROMETHEUS))
    assert config.returncode == 0, config.stdout + config.stderr


def test_alert_rules_fire_when_they_should_and_not_otherwise() -> None:
    """deploy/prometheus/alerts_test.yml: each alert against a firing input and a near miss."""
    result = run_promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname:\s*(\w+)", ALERT_TESTS.read_text(encoding="utf-8")))
    assert tested == {rule["alert"] for rule in alert_rules()}, "every alert needs a unit test"


def read_unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(UNIT, encoding="utf-8")
    return parser


def test_systemd_unit_is_notify_typed_and_hardened() -> None:
    unit = read_unit()
    service = unit["Service"]
    expected = {
        "Type": "notify",
        "User": "dialer",
        "Group": "dialer",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "NoNewPrivileges": "true",
        "PrivateTmp": "true",
        "ReadWritePaths": "/var/lib/dialer",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "KillMode": "mixed",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert float(service["RestartSec"]) > 0
    watchdog_s = float(service["WatchdogSec"])
    assert 0 < watchdog_s <= 60
    # systemd must wait for the drain, with room for the final bookkeeping.
    default_drain = DaemonConfig.model_fields["drain_timeout_s"].default
    assert float(service["TimeoutStopSec"]) >= default_drain + 30
    assert "check-config" in service["ExecStartPre"]
    # numba's kernel cache must be somewhere the daemon can write (ProtectSystem=strict).
    assert "NUMBA_CACHE_DIR=/var/lib/dialer/" in service["Environment"]
    assert "MemoryDenyWriteExecute" not in service  # it would forbid the compiled kernels
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_accepts_the_unit() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    result = subprocess.run(
        [analyze, "verify", str(UNIT)], capture_output=True, text=True, timeout=60, check=False
    )
    # The binary lives in /opt/dialer on a real host; everything else must be clean.
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "/opt/dialer/.venv/bin/dialer is not executable" not in line
    ]
    assert complaints == []
