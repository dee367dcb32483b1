"""A real Prometheus scrapes a running daemon; every dashboard and alert expression finds its data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.daemon import REPO, DaemonProcess, prepare_campaign, write_node_config
from tests.support.servers import RedisServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROMETHEUS = shutil.which("prometheus")
DASHBOARDS = sorted((REPO / "deploy" / "grafana").glob("*.json"))
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"

# Functions, keywords and label names that look like metric names to a regex.
PROMQL_WORDS = {
    "sum", "rate", "increase", "histogram_quantile", "by", "without", "le", "min", "max", "avg", "count",
    "bool", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "abs", "clamp_min",
    "clamp_max", "absent", "time", "vector", "scalar", "label_replace", "offset", "topk", "bottomk",
    "delta", "deriv", "irate", "avg_over_time", "max_over_time", "min_over_time", "changes", "resets",
}


def dashboard_exprs() -> list[str]:
    exprs: list[str] = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        panels = list(board.get("panels", []))
        while panels:
            panel = panels.pop()
            panels.extend(panel.get("panels", []))
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def instantiate(expr: str) -> str:
    """Grafana variables replaced as Grafana would for 'all campaigns' and a short rate interval."""
    return expr.replace("$__rate_interval", "30s").replace("$campaign", ".*")


def metric_names(expr: str) -> set[str]:
    no_labels = re.sub(r"\{[^}]*\}", "", re.sub(r"\[[^\]]*\]", "", expr))
    no_strings = re.sub(r'"[^"]*"', "", no_labels)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", no_strings))
    return {n for n in names if n not in PROMQL_WORDS and not n.isdigit() and ("_" in n or n == "up")}


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (make test installs it as root)")
def test_every_dashboard_and_alert_expression_has_data(tmp_path: Path) -> None:
    assert DASHBOARDS and ALERTS.exists()
    assert len(dashboard_exprs()) >= 10 and len(alert_exprs()) >= 5
    redis = RedisServer(tmp_path)
    redis.start()
    daemon: DaemonProcess | None = None
    prom: subprocess.Popen[bytes] | None = None
    prom_log = (tmp_path / "prometheus.log").open("w")
    try:
        config = write_node_config(tmp_path, redis.url)
        prepare_campaign(tmp_path, redis.url)
        daemon = DaemonProcess(config, scenario=tmp_path / "fast.toml", sim_agents=4)
        api_port = daemon.wait_started()

        prom_port = free_port()
        shutil.copy(ALERTS, tmp_path / "alerts.yml")
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": "dialer",
                                "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]}],
        }))
        assert PROMETHEUS is not None
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=prom_log,
        )
        # Enough scrapes for rates and histogram quantiles over 30 s windows, with calls connected.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                connected = query(prom_port, "sum(dialer_answer_to_agent_seconds_count)")
                if connected and float(connected[0]["value"][1]) >= 3 and time.monotonic() > deadline - 45:
                    break
            except OSError:
                pass
            time.sleep(1)
        rules_url = f"http://127.0.0.1:{prom_port}/api/v1/rules"
        with urllib.request.urlopen(rules_url, timeout=5) as resp:
            groups = json.load(resp)["data"]["groups"]
        assert sum(len(g["rules"]) for g in groups) == len(alert_exprs())  # every alert rule loaded

        missing = []
        for expr in dashboard_exprs():
            if not query(prom_port, instantiate(expr)):
                missing.append(f"dashboard: {expr}")
        for expr in alert_exprs():
            query(prom_port, expr)  # valid PromQL; an alert that is not firing rightly returns nothing
            for name in metric_names(expr):
                if not query(prom_port, name):
                    missing.append(f"alert: {expr.strip()} (metric {name})")
        assert not missing, "expressions without data:\n" + "\n".join(missing)
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=10)
        prom_log.close()
        if daemon is not None:
            assert daemon.stop() == 0
        redis.stop()
