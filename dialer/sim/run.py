"""Run the real engine and a pacing policy against a simulated world, in virtual time."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dialer.agents import AgentPool
from dialer.compliance.abandon import AbandonStatus, MemoryAbandonLedger
from dialer.compliance.gate import PermissiveGate
from dialer.config import CampaignConfig
from dialer.engine import Engine
from dialer.leads import Lead, MemoryLeadStore
from dialer.outcomes import AgentState
from dialer.sim.clock import VirtualTimeLoop
from dialer.sim.scenario import Scenario
from dialer.sim.world import SimTelephony

SIM_EPOCH = 1_767_780_000.0
"""Virtual wall-clock start of every simulation (a weekday morning in January 2026)."""

CAMPAIGN = "sim"


class RecordingLedger(MemoryAbandonLedger):
    """The in-memory abandon ledger, also keeping every event for the report."""

    def __init__(self, window_s: float, limit: float) -> None:
        super().__init__(window_s, limit)
        self.events: list[tuple[float, bool]] = []

    async def record(self, campaign: str, at: float, *, abandoned: bool, event_id: str | None = None) -> None:
        self.events.append((at, abandoned))
        await super().record(campaign, at, abandoned=abandoned, event_id=event_id)

    async def status(self, campaign: str, at: float) -> AbandonStatus:
        return await super().status(campaign, at)


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """The campaign's state at one sampling instant of a run."""

    hours: float
    busy_fraction: float  # agents talking or in wrap-up / logged in
    window_abandon: float  # abandon rate of the rolling window at this instant
    ringing: int
    last_dial_count: int


TIMELINE_STEP_S = 300.0


@dataclass(frozen=True, slots=True)
class SimResult:
    """What one simulated run measured. Rates are fractions."""

    scenario: str
    policy: str
    agents: int
    hours: float
    seed: int
    occupancy: float  # (talk + wrap-up) / logged-in time
    talk_min_per_agent_hour: float
    abandon_rate: float  # abandons / live answers
    worst_window_abandon: float  # worst rolling-window abandon rate (windows with enough answers)
    mean_wait_s: float  # mean time an agent waits in READY between calls
    dials_per_live: float
    dials: int
    live_answers: int
    abandons: int
    machines: int
    amd_false_positives: int
    amd_false_negatives: int
    timeline: tuple[TimelinePoint, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def worst_window(events: list[tuple[float, bool]], window_s: float, min_answers: int) -> float:
    """Highest abandon rate over any window of `window_s` ending at an event with ≥ `min_answers` answers.

    With no such window (a short run), the whole run's rate is returned.
    """
    events = sorted(events)
    worst = -1.0
    start = 0
    abandons = 0
    for end, (at, abandoned) in enumerate(events):
        abandons += abandoned
        while events[start][0] <= at - window_s:
            abandons -= events[start][1]
            start += 1
        answers = end - start + 1
        if answers >= min_answers:
            worst = max(worst, abandons / answers)
    if worst < 0:
        total = sum(a for _, a in events)
        return total / len(events) if events else 0.0
    return worst


def campaign_for(scenario: Scenario, policy: str, params: Mapping[str, Any]) -> CampaignConfig:
    """The campaign a scenario is run with."""
    o = scenario.campaign
    return CampaignConfig(
        name=CAMPAIGN,
        pacing={"policy": policy, "params": dict(params)},
        max_lines=o.max_lines,
        ring_timeout_s=o.ring_timeout_s,
        wrap_up_s=o.wrap_up_s,
        connect_deadline_s=o.connect_deadline_s,
        abandon_target=o.abandon_target,
        abandon_limit=o.abandon_limit,
        abandon_window_s=scenario.report.window_s,
    )


def run_simulation(
    scenario: Scenario,
    policy: str = "predictive",
    params: Mapping[str, Any] | None = None,
    *,
    agents: int = 50,
    hours: float = 8.0,
    seed: int = 1,
    scenario_dir: Path | None = None,
) -> SimResult:
    """Simulate `hours` of one campaign with `agents` agents logged in throughout."""
    campaign = campaign_for(scenario, policy, params or {})
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(_simulate(scenario, campaign, agents, hours, seed, scenario_dir))


async def _simulate(scenario: Scenario, campaign: CampaignConfig, n_agents: int, hours: float, seed: int,
                    scenario_dir: Path | None) -> SimResult:
    loop = asyncio.get_running_loop()

    def clock() -> float:
        return SIM_EPOCH + loop.time()

    rng = random.Random(seed)
    pool = AgentPool(clock)
    for i in range(n_agents):
        pool.add(f"agent{i:04d}", f"sip:agent{i:04d}@sim", campaign.agent_pool)
        pool.transition(f"agent{i:04d}", AgentState.READY)
    world = SimTelephony(scenario, rng, clock, scenario_dir)
    ledger = RecordingLedger(scenario.report.window_s, campaign.abandon_limit)

    def make_lead(campaign_name: str, n: int) -> Lead:
        return Lead(f"L{n}", campaign_name, f"+1555{n % 10_000_000:07d}")

    leads = MemoryLeadStore(generator=make_lead)
    ids = iter(range(1, 1 << 62))
    engine = Engine({campaign.name: campaign}, agents=pool, leads=leads, gate=PermissiveGate(),
                    telephony=world, abandon=ledger, clock=clock, call_ids=lambda: f"sim-{next(ids)}")
    world.on_wrap_up_done = engine.finish_wrap_up
    task = loop.create_task(engine.run())
    duration_s = hours * 3600.0
    rt = engine.campaigns[campaign.name]
    timeline: list[TimelinePoint] = []
    elapsed = 0.0
    while elapsed < duration_s:
        step = min(TIMELINE_STEP_S, duration_s - elapsed)
        await asyncio.sleep(step)
        elapsed += step
        busy = sum(1 for a in pool if a.state in (AgentState.TALKING, AgentState.WRAP_UP))
        window = await ledger.status(campaign.name, clock())
        ringing = sum(1 for c in rt.calls.values() if c.answered_at is None)
        timeline.append(TimelinePoint(elapsed / 3600.0, busy / n_agents, window.rate, ringing,
                                      rt.last_dial_count))

    # Measure at the end of the day, before anything is drained.
    talk = wrap = ready = 0.0
    spells = 0
    for agent in pool:
        talk += pool.seconds_in(agent, AgentState.TALKING)
        wrap += pool.seconds_in(agent, AgentState.WRAP_UP)
        ready += pool.seconds_in(agent, AgentState.READY)
        spells += agent.ready_spells
    stats = engine.campaigns[campaign.name].stats
    logged_in = n_agents * duration_s
    live = len(ledger.events)
    abandons = sum(1 for _, a in ledger.events if a)
    result = SimResult(
        scenario=scenario.name,
        policy=campaign.pacing.policy,
        agents=n_agents,
        hours=hours,
        seed=seed,
        occupancy=(talk + wrap) / logged_in if logged_in else 0.0,
        talk_min_per_agent_hour=talk / 60.0 / (n_agents * hours) if n_agents and hours else 0.0,
        abandon_rate=abandons / live if live else 0.0,
        worst_window_abandon=worst_window(ledger.events, scenario.report.window_s,
                                          scenario.report.min_window_answers),
        mean_wait_s=ready / spells if spells else 0.0,
        dials_per_live=stats.dials / stats.live_answers if stats.live_answers else float("inf"),
        dials=stats.dials,
        live_answers=live,
        abandons=abandons,
        machines=stats.machines,
        amd_false_positives=world.stats.amd_false_positives,
        amd_false_negatives=world.stats.amd_false_negatives,
        timeline=tuple(timeline),
    )
    engine.stop_dialing()
    engine.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return result
