"""Metrics: Prometheus naming, label sets initialised up front, helper updates, documentation."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from dialer import metrics as metrics_module
from dialer.compliance.gate import BlockReason
from dialer.metrics import DIAL_RESULTS, DialerMetrics, exposition_names, window_label
from dialer.outcomes import AgentState, Outcome

ALLOWED_LABELS = {"campaign", "result", "reason", "state", "registry", "window"}
INFO_LABELS = {
    "dialer_build_info": {"version", "python"},
    "dialer_campaign_info": {"policy", "rule_pack", "mode"},
}
HISTOGRAM_LABELS = {"le"}


class Clock:
    """A settable epoch clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scrape(m: DialerMetrics) -> list[Sample]:
    """Render the registry in the text format and parse it back, as Prometheus would."""
    text = generate_latest(m.registry).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


@pytest.fixture
def clock() -> Clock:
    return Clock(1_800_000_000.0)


@pytest.fixture
def m(clock: Clock) -> DialerMetrics:
    metrics = DialerMetrics(CollectorRegistry(), clock=clock)
    metrics.init_campaign("sales", windows={"30d": 0.03, "24h": 0.03}, state="running")
    metrics.set_campaign_info("sales", policy="predictive", rule_pack="us", mode="agent")
    metrics.set_dnc_loaded("national", clock.now - 3600)
    return metrics


def test_exposition_follows_prometheus_naming(m: DialerMetrics) -> None:
    text = generate_latest(m.registry).decode()
    families = list(text_string_to_metric_families(text))
    assert families, "nothing exposed"
    for family in families:
        assert re.fullmatch(r"dialer_[a-z0-9_]+", family.name), family.name
        assert not re.search(r"_(ms|milliseconds|minutes|hours|percent)(_|$)", family.name), family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), f"{family.name}: histograms here measure seconds"
        if family.name.endswith("_total"):
            assert family.type == "counter", f"{family.name} ends in _total but is a {family.type}"
        for sample in family.samples:
            allowed = ALLOWED_LABELS | INFO_LABELS.get(sample.name, set())
            if family.type == "histogram":
                allowed |= HISTOGRAM_LABELS
            assert set(sample.labels) <= allowed, f"{sample.name}: unexpected labels {sample.labels}"
    # The build facts are an _info series with value 1.
    build = [s for f in families for s in f.samples if s.name == "dialer_build_info"]
    assert len(build) == 1 and build[0].value == 1.0
    assert build[0].labels["version"]


def test_campaign_series_exist_at_zero_before_anything_happens(m: DialerMetrics) -> None:
    samples = scrape(m)
    for result in DIAL_RESULTS:
        assert value(samples, "dialer_dials_total", campaign="sales", result=result.value) == 0
    assert Outcome.BLOCKED not in DIAL_RESULTS  # never dialled: counted as a gate block instead
    for reason in BlockReason:
        assert value(samples, "dialer_gate_blocks_total", campaign="sales", reason=reason.value) == 0
    for state in AgentState:
        assert value(samples, "dialer_agents", campaign="sales", state=state.value) == 0
    for name in (
        "dialer_originations_total",
        "dialer_origination_failures_total",
        "dialer_live_answers_total",
        "dialer_abandons_total",
        "dialer_gate_checks_total",
        "dialer_dial_level",
        "dialer_lines_in_flight",
        "dialer_agent_occupancy_ratio",
        "dialer_answer_to_agent_seconds_count",
        "dialer_agent_wait_seconds_count",
        "dialer_pacing_tick_duration_seconds_count",
    ):
        assert value(samples, name, campaign="sales") == 0, name
    assert value(samples, "dialer_abandon_rate", campaign="sales", window="30d") == 0
    assert value(samples, "dialer_abandon_limit_ratio", campaign="sales", window="24h") == 0.03
    assert value(samples, "dialer_campaign_state", campaign="sales", state="running") == 1
    assert value(samples, "dialer_campaign_state", campaign="sales", state="stopped") == 0
    assert value(samples, "dialer_config_reloads_total", result="failure") == 0
    assert value(samples, "dialer_sip_worker_slots", state="free") == 0


def test_helpers_update_attempts_and_failures_together(m: DialerMetrics) -> None:
    m.record_gate("sales", None)
    m.record_gate("sales", BlockReason.DNC_NATIONAL)
    m.record_gate("sales", BlockReason.DNC_NATIONAL)
    m.record_live_answer("sales", abandoned=False)
    m.record_live_answer("sales", abandoned=True)
    m.dials.labels(campaign="sales", result=Outcome.BUSY.value).inc()
    m.set_agents("sales", {AgentState.READY: 3, AgentState.TALKING: 5})
    m.set_sip_slots(used=7, free=9)
    m.record_worker_start(restart=False)
    m.record_worker_start(restart=False)
    m.record_worker_start(restart=True)
    m.answer_to_agent.labels(campaign="sales").observe(0.4)
    m.answer_to_agent.labels(campaign="sales").observe(2.3)
    samples = scrape(m)
    assert value(samples, "dialer_gate_checks_total", campaign="sales") == 3
    assert value(samples, "dialer_gate_blocks_total", campaign="sales", reason="dnc_national") == 2
    assert value(samples, "dialer_gate_blocks_total", campaign="sales", reason="outside_hours") == 0
    assert value(samples, "dialer_live_answers_total", campaign="sales") == 2
    assert value(samples, "dialer_abandons_total", campaign="sales") == 1
    assert value(samples, "dialer_dials_total", campaign="sales", result="busy") == 1
    assert value(samples, "dialer_agents", campaign="sales", state="ready") == 3
    assert value(samples, "dialer_agents", campaign="sales", state="talking") == 5
    assert value(samples, "dialer_agents", campaign="sales", state="paused") == 0
    assert value(samples, "dialer_sip_worker_slots", state="used") == 7
    assert value(samples, "dialer_sip_worker_slots", state="free") == 9
    assert value(samples, "dialer_sip_worker_starts_total") == 3
    assert value(samples, "dialer_sip_worker_restarts_total") == 1
    # The answer-to-agent buckets straddle the 2 s deadline, so abandons show in the histogram.
    assert value(samples, "dialer_answer_to_agent_seconds_bucket", campaign="sales", le="0.5") == 1
    assert value(samples, "dialer_answer_to_agent_seconds_bucket", campaign="sales", le="2.0") == 1
    assert value(samples, "dialer_answer_to_agent_seconds_bucket", campaign="sales", le="2.5") == 2
    # A later set replaces every state, including those now absent.
    m.set_agents("sales", {AgentState.PAUSED: 1})
    samples = scrape(m)
    assert value(samples, "dialer_agents", campaign="sales", state="talking") == 0
    assert value(samples, "dialer_agents", campaign="sales", state="paused") == 1


def test_dnc_age_is_computed_at_scrape_time(m: DialerMetrics, clock: Clock) -> None:
    assert value(scrape(m), "dialer_dnc_list_age_seconds", registry="national") == 3600
    clock.now += 86400
    assert value(scrape(m), "dialer_dnc_list_age_seconds", registry="national") == 90000
    m.set_dnc_loaded("national", clock.now)
    m.set_dnc_loaded("internal", clock.now - 10)
    samples = scrape(m)
    assert value(samples, "dialer_dnc_list_age_seconds", registry="national") == 0
    assert value(samples, "dialer_dnc_list_age_seconds", registry="internal") == 10


def test_reload_counts_and_timestamps(m: DialerMetrics, clock: Clock) -> None:
    started = clock.now
    clock.now += 60
    m.record_reload(ok=False)
    samples = scrape(m)
    assert value(samples, "dialer_config_reloads_total", result="failure") == 1
    assert value(samples, "dialer_config_reloads_total", result="success") == 0
    assert value(samples, "dialer_config_last_reload_successful") == 0
    assert value(samples, "dialer_config_last_reload_success_timestamp_seconds") == started
    clock.now += 60
    m.record_reload(ok=True)
    samples = scrape(m)
    assert value(samples, "dialer_config_reloads_total", result="success") == 1
    assert value(samples, "dialer_config_last_reload_successful") == 1
    assert value(samples, "dialer_config_last_reload_success_timestamp_seconds") == started + 120


def test_reconfiguring_a_campaign_replaces_and_removes_its_series(m: DialerMetrics) -> None:
    m.set_campaign_info("sales", policy="progressive", rule_pack="us", mode="agent")
    m.init_campaign("sales", windows={"30d": 0.025})
    m.abandon_rate.labels(campaign="sales", window="30d").set(0.01)
    samples = scrape(m)
    info = [s for s in samples if s.name == "dialer_campaign_info"]
    assert [s.labels["policy"] for s in info] == ["progressive"]
    assert not [s for s in samples if s.labels.get("window") == "24h"]
    assert value(samples, "dialer_abandon_limit_ratio", campaign="sales", window="30d") == 0.025
    # Re-initialising keeps what was counted and the campaign's state.
    assert value(samples, "dialer_abandon_rate", campaign="sales", window="30d") == 0.01
    assert value(samples, "dialer_campaign_state", campaign="sales", state="running") == 1

    m.init_campaign("other")
    m.remove_campaign("sales")
    remaining = {s.labels.get("campaign") for s in scrape(m)} - {None}
    assert remaining == {"other"}
    m.remove_campaign("never-configured")  # nothing to drop, no error


def test_campaign_state_must_be_known(m: DialerMetrics) -> None:
    with pytest.raises(ValueError, match=r"unknown campaign state 'dialling', expected one of"):
        m.set_campaign_state("sales", "dialling")
    m.set_campaign_state("sales", "paused")
    samples = scrape(m)
    assert value(samples, "dialer_campaign_state", campaign="sales", state="paused") == 1
    assert value(samples, "dialer_campaign_state", campaign="sales", state="running") == 0


def test_registries_are_independent_and_duplicates_are_refused() -> None:
    registry = CollectorRegistry()
    first = DialerMetrics(registry)
    DialerMetrics(CollectorRegistry())  # a second, fresh registry is fine
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        DialerMetrics(registry)
    first.dials.labels(campaign="a", result="live").inc()
    assert value(scrape(first), "dialer_dials_total", campaign="a", result="live") == 1


def test_every_exposed_family_is_documented_in_the_module_docstring() -> None:
    doc = metrics_module.__doc__ or ""
    documented = set(re.findall(r"^(dialer_[a-z0-9_]+)\s", doc, flags=re.MULTILINE))
    exposed = set()
    for name in exposition_names():
        if name.endswith("_created"):
            continue  # prometheus-client's creation stamps, described once at the end of the table
        exposed.add(re.sub(r"_(bucket|count|sum)$", "", name))
    assert exposed == documented


@pytest.mark.parametrize(
    ("seconds", "label"),
    [(30 * 86400, "30d"), (86400, "24h"), (72 * 3600, "3d"), (3600, "1h"), (90, "90s"), (120, "2m")],
)
def test_window_label(seconds: float, label: str) -> None:
    assert window_label(seconds) == label


@pytest.mark.parametrize("seconds", [0, -5, 1.5])
def test_window_label_rejects_odd_windows(seconds: float) -> None:
    with pytest.raises(ValueError, match="window must be a positive whole number of seconds"):
        window_label(seconds)
