"""Reports of simulated runs: a plain-text table and PNG plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dialer.sim.run import SimResult

COLUMNS = (
    ("policy", "policy", "{}"),
    ("agents", "agents", "{}"),
    ("seed", "seed", "{}"),
    ("occupancy", "occupancy", "{:.1%}"),
    ("talk min/agent-h", "talk_min_per_agent_hour", "{:.1f}"),
    ("abandon", "abandon_rate", "{:.2%}"),
    ("worst window", "worst_window_abandon", "{:.2%}"),
    ("mean wait s", "mean_wait_s", "{:.1f}"),
    ("dials/live", "dials_per_live", "{:.2f}"),
    ("dials", "dials", "{}"),
    ("live", "live_answers", "{}"),
    ("abandons", "abandons", "{}"),
)


def table(results: Sequence[SimResult]) -> str:
    """Fixed-width table, one row per run."""
    rows = [[fmt.format(getattr(r, attr)) for _, attr, fmt in COLUMNS] for r in results]
    heads = [h for h, _, _ in COLUMNS]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def plot_timeline(results: Sequence[SimResult], path: Path, abandon_limit: float = 0.03) -> None:
    """PNG: agents' busy fraction and the rolling-window abandon rate through the run, per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_busy, ax_ab) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for r in results:
        label = f"{r.policy} ({r.agents} agents, seed {r.seed})"
        hours = [p.hours for p in r.timeline]
        ax_busy.plot(hours, [p.busy_fraction * 100 for p in r.timeline], label=label)
        ax_ab.plot(hours, [p.window_abandon * 100 for p in r.timeline], label=label)
    ax_ab.axhline(abandon_limit * 100, color="red", linestyle="--", linewidth=1, label="limit")
    ax_busy.set_ylabel("agents busy (%)")
    ax_ab.set_ylabel("window abandon (%)")
    ax_ab.set_xlabel("hours")
    ax_busy.legend(fontsize=7)
    ax_busy.set_title(results[0].scenario if results else "")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
