"""Answering-machine detection benchmark: CPU per frame, accuracy and decision times.

The SIP worker calls `AmdDetector.feed` from pjsua2's media thread for every 20 ms frame of every
answered call, so the cost per call must stay far below 20 ms (the notes measured ~200 µs for the
whole callback). Frames are timed one by one over generated human answers and machine greetings
(tests/support/audio.py), split by what they hold, and the same corpus gives the confusion matrix.

    python -m bench.amd [--samples 200] [--out DIR]

Writes DIR/amd.json (default bench/results/) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dialer.outcomes import AnswerKind
from sip.amd import AmdDetector, AmdResult
from tests.support.audio import AudioSample, human_answer, machine_greeting

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def time_sample(sample: AudioSample, timings: dict[str, list[int]]) -> AmdResult | None:
    """Feed every frame of `sample` (also after the decision: beep detection keeps running)."""
    detector = AmdDetector()
    first: AmdResult | None = None
    for frame in sample.frames():
        start = time.perf_counter_ns()
        result = detector.feed(frame)
        elapsed = time.perf_counter_ns() - start
        timings["all"].append(elapsed)
        timings["deciding" if first is None else "after_decision"].append(elapsed)
        first = first or result
    return first


def summary_us(values: list[int]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64) / 1000.0
    return {
        "frames": len(values),
        "mean_us": round(float(arr.mean()), 2),
        "p50_us": round(float(np.percentile(arr, 50)), 2),
        "p99_us": round(float(np.percentile(arr, 99)), 2),
        "max_us": round(float(arr.max()), 2),
    }


def run(samples: int) -> dict[str, Any]:
    timings: dict[str, list[int]] = {"all": [], "deciding": [], "after_decision": []}
    humans = [time_sample(human_answer(seed), timings) for seed in range(20_000, 20_000 + samples)]
    machines = [time_sample(machine_greeting(seed), timings) for seed in range(30_000, 30_000 + samples)]
    human_times = [r.decided_after_ms for r in humans if r and r.kind is AnswerKind.HUMAN]
    machine_times = [r.decided_after_ms for r in machines if r and r.kind is AnswerKind.MACHINE]
    matrix = {
        "human": {k.value: Counter(r.kind for r in humans if r)[k] for k in AnswerKind},
        "machine": {k.value: Counter(r.kind for r in machines if r)[k] for k in AnswerKind},
    }
    per_frame = summary_us(timings["all"])
    return {
        "samples_per_class": samples,
        "feed_us": per_frame,
        "feed_us_while_deciding": summary_us(timings["deciding"]),
        "feed_us_after_decision": summary_us(timings["after_decision"]),
        "cpu_percent_per_call": round(per_frame["mean_us"] / 20_000 * 100, 4),
        "confusion": matrix,
        "human_accuracy": round(matrix["human"]["human"] / samples, 4),
        "machine_accuracy": round(matrix["machine"]["machine"] / samples, 4),
        "human_decision_ms": {
            "median": statistics.median(human_times),
            "p90": float(np.percentile(human_times, 90)),
        },
        "machine_decision_ms": {
            "median": statistics.median(machine_times),
            "p90": float(np.percentile(machine_times, 90)),
        },
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "load_average_1m": round(os.getloadavg()[0], 2),  # other work on the host inflates the tails
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="generated answers per class")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for amd.json")
    args = parser.parse_args(argv)
    if args.samples < 10:
        parser.error("--samples: at least 10")
    result = run(args.samples)
    print(f"{'frames fed':<36}{'mean µs':>10}{'p50 µs':>10}{'p99 µs':>10}{'max µs':>10}")
    for label, key in (
        ("all", "feed_us"),
        ("until decision", "feed_us_while_deciding"),
        ("after decision (beep watch)", "feed_us_after_decision"),
    ):
        row = result[key]
        print(
            f"{label + ' (' + str(row['frames']) + ')':<36}"
            f"{row['mean_us']:>10}{row['p50_us']:>10}{row['p99_us']:>10}{row['max_us']:>10}"
        )
    print(f"CPU per call with AMD running: {result['cpu_percent_per_call']} % of one core")
    print(
        f"accuracy: human {result['human_accuracy']:.1%}, machine {result['machine_accuracy']:.1%}; "
        f"confusion {result['confusion']}"
    )
    print(
        f"decision: human median {result['human_decision_ms']['median']} ms "
        f"(p90 {result['human_decision_ms']['p90']:.0f}), machine median "
        f"{result['machine_decision_ms']['median']} ms (p90 {result['machine_decision_ms']['p90']:.0f})"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "amd.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
