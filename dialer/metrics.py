"""Prometheus metrics of the dialer, registered on an injectable `CollectorRegistry`.

`DialerMetrics(registry)` owns every metric family; its attributes are the families and its helper
methods initialise label sets up front so that every series exists (at zero) from the moment a
campaign is loaded, as Prometheus practice asks: a rate over a series that appears only on the first
failure is blind to that failure. Tests build a fresh registry; the daemon builds one and serves it
at `/metrics`.

Naming follows the Prometheus conventions: prefix ``dialer_``, base units (seconds, ratios 0..1),
counters end in ``_total``, build facts in an ``_info`` series. Labels are bounded: ``campaign``,
``result`` (an `Outcome`), ``reason`` (a `BlockReason`), ``state``, ``registry``, ``window``, plus the
fixed label names of the info series. Never a phone number, lead id or call id.

Every failure counter has its attempts counter next to it, so that a failure *ratio* can be computed.
Third column: labels, then meaning.

====================================================  =========  =============================================
exposition name                                       type       labels: meaning
====================================================  =========  =============================================
dialer_dials_total                                    counter    campaign, result: dial attempts resolved, by
                                                                 final `Outcome` (blocked numbers are never
                                                                 dialled: see gate blocks)
dialer_originations_total                             counter    campaign: calls handed to telephony (attempts
                                                                 of the next)
dialer_origination_failures_total                     counter    campaign: originate raised (no free slot,
                                                                 clearance refused, ...)
dialer_live_answers_total                             counter    campaign: humans answered (attempts of
                                                                 abandons)
dialer_abandons_total                                 counter    campaign: live answers not connected to an
                                                                 agent within 2 s
dialer_calls_shed_total                               counter    campaign: unanswered calls pacing cancelled
                                                                 after 15 s of ringing, no agent free for them
dialer_abandon_rate                                   gauge      campaign, window: abandons / live answers
                                                                 over the rolling window (ratio; window "30d"
                                                                 FTC/FCC, "24h" Ofcom)
dialer_abandon_limit_ratio                            gauge      campaign, window: the regulatory limit the
                                                                 rate is held under
dialer_dial_level                                     gauge      campaign: lines dialled per working agent at
                                                                 the last tick
dialer_lines_in_flight                                gauge      campaign: calls ringing, or answered and
                                                                 waiting for an agent
dialer_agents                                         gauge      campaign, state: agents of the campaign's
                                                                 pool by `AgentState`
dialer_agent_occupancy_ratio                          gauge      campaign: talking + wrap-up time / logged-in
                                                                 working time
dialer_agent_wait_seconds                             histogram  campaign: an agent's wait in READY between
                                                                 two calls
dialer_answer_to_agent_seconds                        histogram  campaign: live answer (200 OK) to agent
                                                                 connected; over 2 s is an abandon
dialer_campaign_state                                 gauge      campaign, state: 1 for the state the campaign
                                                                 is in (running, paused, stopped), 0 for the
                                                                 others
dialer_campaign_info                                  gauge      campaign, policy, rule_pack, mode:
                                                                 configuration facts, value 1
dialer_gate_checks_total                              counter    campaign: numbers put to the compliance gate
                                                                 (attempts of the next)
dialer_gate_blocks_total                              counter    campaign, reason: numbers the gate refused,
                                                                 by `BlockReason`
dialer_dnc_list_age_seconds                           gauge      registry: age of the loaded copy of a DNC
                                                                 list, computed at scrape time
dialer_sip_worker_slots                               gauge      state: call slots of the SIP worker pool,
                                                                 "used" or "free"
dialer_sip_workers_up                                 gauge      SIP worker processes running and answering
dialer_sip_worker_starts_total                        counter    worker processes spawned, first starts
                                                                 included (attempts of the next)
dialer_sip_worker_restarts_total                      counter    workers respawned after a crash or a hang
dialer_pacing_tick_duration_seconds                   histogram  campaign: wall time of one pacing tick
                                                                 (decide, claim, gate)
dialer_config_reloads_total                           counter    result: reloads, "success" or "failure" (the
                                                                 sum is the attempts)
dialer_config_last_reload_successful                  gauge      1 when the last reload was applied, 0 when it
                                                                 was rejected
dialer_config_last_reload_success_timestamp_seconds   gauge      epoch time the running configuration was
                                                                 applied
dialer_build_info                                     gauge      version, python: build facts, value 1
dialer_redis_up                                       gauge      1 when the last Redis health check succeeded
====================================================  =========  =============================================

Counters and histograms also expose ``_created`` series (prometheus-client's default).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import dialer
from dialer.compliance.gate import BlockReason
from dialer.outcomes import AgentState, Outcome

DIAL_RESULTS: Final = tuple(o for o in Outcome if o is not Outcome.BLOCKED)
"""Values of the `result` label of `dialer_dials_total`: every outcome of a dial that was placed."""

CAMPAIGN_STATES: Final = ("running", "paused", "stopped")
"""Values of the `state` label of `dialer_campaign_state`."""

RELOAD_RESULTS: Final = ("success", "failure")
SLOT_STATES: Final = ("used", "free")

ANSWER_TO_AGENT_BUCKETS: Final = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 5.0)
"""Dense around the 2 s abandon deadline, where the pacing controller lives."""

AGENT_WAIT_BUCKETS: Final = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0)
"""Seconds of idle between calls: a good predictive campaign keeps most waits under 15 s."""

TICK_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""A tick should take milliseconds; anything near the tick interval (1 s) starves the loop."""


def window_label(seconds: float) -> str:
    """A short, stable `window` label for a rolling window length: 2592000 -> "30d", 86400 -> "24h"."""
    s = int(seconds)
    if s <= 0 or s != seconds:
        raise ValueError(f"window must be a positive whole number of seconds, got {seconds!r}")
    if s % 86400 == 0 and s != 86400:
        return f"{s // 86400}d"
    if s % 3600 == 0:
        return f"{s // 3600}h"
    if s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


class _DncAgeCollector(Collector):
    """Computes each DNC list's age at scrape time, so the age never freezes while nobody updates it."""

    NAME: Final = "dialer_dnc_list_age_seconds"
    DOC: Final = "Age of the loaded copy of a do-not-call list, in seconds, at scrape time."

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.loaded_at: dict[str, float] = {}

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.NAME, self.DOC, labels=["registry"])]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.NAME, self.DOC, labels=["registry"])
        now = self._clock()
        for registry, loaded_at in sorted(self.loaded_at.items()):
            family.add_metric([registry], max(0.0, now - loaded_at))
        yield family


class DialerMetrics:
    """Every metric family of the dialer, registered on `registry`.

    `clock` (epoch seconds) is used for the DNC list age and reload timestamps; tests inject one.
    """

    def __init__(
        self, registry: CollectorRegistry, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = registry
        self._clock = clock
        r = registry

        # Dialling and answers.
        self.dials = Counter(
            "dialer_dials", "Dial attempts resolved, by final outcome.", ["campaign", "result"], registry=r
        )
        self.originations = Counter(
            "dialer_originations", "Calls handed to the telephony layer.", ["campaign"], registry=r
        )
        self.origination_failures = Counter(
            "dialer_origination_failures",
            "Originations the telephony layer refused or failed to start.",
            ["campaign"],
            registry=r,
        )
        self.live_answers = Counter(
            "dialer_live_answers", "Calls answered by a human.", ["campaign"], registry=r
        )
        self.abandons = Counter(
            "dialer_abandons",
            "Live answers not connected to an agent within the connect deadline.",
            ["campaign"],
            registry=r,
        )
        self.calls_shed = Counter(
            "dialer_calls_shed",
            "Unanswered calls pacing cancelled after the minimum ring time, for want of an agent.",
            ["campaign"],
            registry=r,
        )
        self.abandon_rate = Gauge(
            "dialer_abandon_rate",
            "Abandons divided by live answers over the rolling regulatory window (ratio).",
            ["campaign", "window"],
            registry=r,
        )
        self.abandon_limit = Gauge(
            "dialer_abandon_limit_ratio",
            "The abandon rate limit the campaign is held under (ratio).",
            ["campaign", "window"],
            registry=r,
        )

        # Pacing.
        self.dial_level = Gauge(
            "dialer_dial_level", "Lines dialled per working agent at the last tick.", ["campaign"], registry=r
        )
        self.lines_in_flight = Gauge(
            "dialer_lines_in_flight",
            "Calls ringing or answered and waiting for an agent.",
            ["campaign"],
            registry=r,
        )
        self.tick_duration = Histogram(
            "dialer_pacing_tick_duration_seconds",
            "Wall time of one pacing tick.",
            ["campaign"],
            buckets=TICK_BUCKETS,
            registry=r,
        )

        # Agents.
        self.agents = Gauge(
            "dialer_agents", "Agents of the campaign's pool by state.", ["campaign", "state"], registry=r
        )
        self.agent_occupancy = Gauge(
            "dialer_agent_occupancy_ratio",
            "Talking and wrap-up time over logged-in working time (ratio).",
            ["campaign"],
            registry=r,
        )
        self.agent_wait = Histogram(
            "dialer_agent_wait_seconds",
            "An agent's wait in the ready state between two calls.",
            ["campaign"],
            buckets=AGENT_WAIT_BUCKETS,
            registry=r,
        )
        self.answer_to_agent = Histogram(
            "dialer_answer_to_agent_seconds",
            "Delay from a live answer to the agent being connected.",
            ["campaign"],
            buckets=ANSWER_TO_AGENT_BUCKETS,
            registry=r,
        )

        # Campaigns.
        self.campaign_state = Gauge(
            "dialer_campaign_state",
            "1 for the state the campaign is in, 0 for the others.",
            ["campaign", "state"],
            registry=r,
        )
        self.campaign_info = Gauge(
            "dialer_campaign_info",
            "Campaign configuration facts (value 1).",
            ["campaign", "policy", "rule_pack", "mode"],
            registry=r,
        )
        self._campaign_info_labels: dict[str, tuple[str, str, str]] = {}
        self._campaign_windows: dict[str, set[str]] = {}
        self._campaign_states: dict[str, str] = {}

        # Compliance.
        self.gate_checks = Counter(
            "dialer_gate_checks", "Numbers put to the compliance gate.", ["campaign"], registry=r
        )
        self.gate_blocks = Counter(
            "dialer_gate_blocks",
            "Numbers the compliance gate refused, by reason.",
            ["campaign", "reason"],
            registry=r,
        )
        self._dnc_age = _DncAgeCollector(clock)
        r.register(self._dnc_age)

        # SIP worker pool.
        self.sip_slots = Gauge(
            "dialer_sip_worker_slots", "Call slots of the SIP worker pool by state.", ["state"], registry=r
        )
        self.sip_workers_up = Gauge(
            "dialer_sip_workers_up", "SIP worker processes running and answering.", registry=r
        )
        self.sip_worker_starts = Counter(
            "dialer_sip_worker_starts", "SIP worker processes spawned, first starts included.", registry=r
        )
        self.sip_worker_restarts = Counter(
            "dialer_sip_worker_restarts", "SIP workers respawned after a crash or a hang.", registry=r
        )

        # Configuration, build, dependencies.
        self.config_reloads = Counter(
            "dialer_config_reloads", "Configuration reloads by result.", ["result"], registry=r
        )
        self.config_last_reload_successful = Gauge(
            "dialer_config_last_reload_successful",
            "1 when the last reload was applied, 0 when it was rejected.",
            registry=r,
        )
        self.config_last_reload_success_timestamp = Gauge(
            "dialer_config_last_reload_success_timestamp_seconds",
            "Epoch time at which the running configuration was applied.",
            registry=r,
        )
        self.build_info = Info("dialer_build", "Build facts of the running dialer.", registry=r)
        self.redis_up = Gauge("dialer_redis_up", "1 when the last Redis health check succeeded.", registry=r)

        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result=result)
        for state in SLOT_STATES:
            self.sip_slots.labels(state=state)
        self.build_info.info({"version": dialer.__version__, "python": platform.python_version()})
        self.config_last_reload_successful.set(1)
        self.config_last_reload_success_timestamp.set(clock())

    # Campaign label sets --------------------------------------------------------------------------

    def init_campaign(
        self,
        name: str,
        *,
        windows: Mapping[str, float] | None = None,
        state: str = "stopped",
    ) -> None:
        """Create every series of campaign `name` at zero.

        `windows` maps each abandon window label (see `window_label`) to its limit ratio, e.g.
        ``{"30d": 0.03}``; their rate series start at 0. Idempotent: existing values are kept.
        """
        for result in DIAL_RESULTS:
            self.dials.labels(campaign=name, result=result.value)
        for reason in BlockReason:
            self.gate_blocks.labels(campaign=name, reason=reason.value)
        for agent_state in AgentState:
            self.agents.labels(campaign=name, state=agent_state.value)
        for family in (
            self.originations,
            self.origination_failures,
            self.live_answers,
            self.abandons,
            self.calls_shed,
            self.gate_checks,
        ):
            family.labels(campaign=name)
        for gauge in (self.dial_level, self.lines_in_flight, self.agent_occupancy):
            gauge.labels(campaign=name)
        for histogram in (self.tick_duration, self.agent_wait, self.answer_to_agent):
            histogram.labels(campaign=name)
        for label, limit in (windows or {}).items():
            self.abandon_rate.labels(campaign=name, window=label)
            self.abandon_limit.labels(campaign=name, window=label).set(limit)
        old_windows = self._campaign_windows.get(name, set())
        for label in old_windows - set(windows or {}):
            self.abandon_rate.remove(name, label)
            self.abandon_limit.remove(name, label)
        self._campaign_windows[name] = set(windows or {})
        if name not in self._campaign_states:
            self.set_campaign_state(name, state)

    def set_campaign_state(self, name: str, state: str) -> None:
        """Mark campaign `name` as being in `state` (one of `CAMPAIGN_STATES`)."""
        if state not in CAMPAIGN_STATES:
            raise ValueError(f"unknown campaign state {state!r}, expected one of {list(CAMPAIGN_STATES)}")
        for s in CAMPAIGN_STATES:
            self.campaign_state.labels(campaign=name, state=s).set(1 if s == state else 0)
        self._campaign_states[name] = state

    def set_campaign_info(self, name: str, *, policy: str, rule_pack: str, mode: str) -> None:
        """Publish campaign configuration facts, replacing the series of an earlier configuration."""
        labels = (policy, rule_pack, mode)
        previous = self._campaign_info_labels.get(name)
        if previous is not None and previous != labels:
            self.campaign_info.remove(name, *previous)
        self.campaign_info.labels(name, *labels).set(1)
        self._campaign_info_labels[name] = labels

    def remove_campaign(self, name: str) -> None:
        """Drop every series of a campaign that is no longer configured."""
        families: list[Counter | Gauge | Histogram] = [
            self.originations,
            self.origination_failures,
            self.live_answers,
            self.abandons,
            self.calls_shed,
            self.gate_checks,
            self.dial_level,
            self.lines_in_flight,
            self.agent_occupancy,
            self.tick_duration,
            self.agent_wait,
            self.answer_to_agent,
        ]
        for family in families:
            _remove_if_present(family, name)
        for result in DIAL_RESULTS:
            _remove_if_present(self.dials, name, result.value)
        for reason in BlockReason:
            _remove_if_present(self.gate_blocks, name, reason.value)
        for agent_state in AgentState:
            _remove_if_present(self.agents, name, agent_state.value)
        for s in CAMPAIGN_STATES:
            _remove_if_present(self.campaign_state, name, s)
        self._campaign_states.pop(name, None)
        for label in self._campaign_windows.pop(name, set()):
            _remove_if_present(self.abandon_rate, name, label)
            _remove_if_present(self.abandon_limit, name, label)
        info = self._campaign_info_labels.pop(name, None)
        if info is not None:
            _remove_if_present(self.campaign_info, name, *info)

    # Updates that touch several series at once ---------------------------------------------------

    def set_agents(self, campaign: str, counts: Mapping[AgentState, int]) -> None:
        """Set the agent count of every state (states missing from `counts` are 0)."""
        for state in AgentState:
            self.agents.labels(campaign=campaign, state=state.value).set(counts.get(state, 0))

    def record_gate(self, campaign: str, reason: BlockReason | None) -> None:
        """Count one gate check, and its block when `reason` is given."""
        self.gate_checks.labels(campaign=campaign).inc()
        if reason is not None:
            self.gate_blocks.labels(campaign=campaign, reason=reason.value).inc()

    def record_live_answer(self, campaign: str, *, abandoned: bool) -> None:
        """Count one live answer, and its abandon."""
        self.live_answers.labels(campaign=campaign).inc()
        if abandoned:
            self.abandons.labels(campaign=campaign).inc()

    def set_dnc_loaded(self, registry: str, loaded_at: float) -> None:
        """Record when the copy of DNC list `registry` (e.g. "national", "internal") was loaded."""
        self._dnc_age.loaded_at[registry] = loaded_at

    def set_sip_slots(self, *, used: int, free: int) -> None:
        """Publish the SIP pool's slot usage."""
        self.sip_slots.labels(state="used").set(used)
        self.sip_slots.labels(state="free").set(free)

    def record_worker_start(self, *, restart: bool) -> None:
        """Count a SIP worker spawn; `restart` when it replaces a worker that crashed or hung."""
        self.sip_worker_starts.inc()
        if restart:
            self.sip_worker_restarts.inc()

    def record_reload(self, *, ok: bool) -> None:
        """Count a configuration reload; a success also stamps the running configuration's time."""
        self.config_reloads.labels(result="success" if ok else "failure").inc()
        self.config_last_reload_successful.set(1 if ok else 0)
        if ok:
            self.config_last_reload_success_timestamp.set(self._clock())


def _remove_if_present(family: Counter | Gauge | Histogram, *labels: str) -> None:
    try:
        family.remove(*labels)
    except KeyError:
        pass  # never initialised: nothing to drop


def exposition_names() -> frozenset[str]:
    """Every sample name `DialerMetrics` can expose (with `_total`, `_bucket`, ... suffixes).

    Built from a throw-away registry with one campaign, one window and one DNC list initialised, so
    the answer comes from the real exposition rather than a list kept by hand.
    """
    m = DialerMetrics(CollectorRegistry())
    m.init_campaign("probe", windows={"30d": 0.03})
    m.set_campaign_info("probe", policy="progressive", rule_pack="us", mode="agent")
    m.set_dnc_loaded("national", 0.0)
    return frozenset(s.name for family in m.registry.collect() for s in family.samples)
