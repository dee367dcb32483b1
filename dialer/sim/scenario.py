"""Simulation scenarios: the world a campaign dials into, read from TOML files in config/scenarios/.

A scenario says what happens to a dial (outcome probabilities, ring-time distributions per outcome),
how long agents talk and wrap up, how good answering-machine detection is, and optionally how all of
that shifts during the day (phases). Every problem in a file is reported at once, with its key path.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from dialer.config import Model, load_model, read_toml
from dialer.errors import ConfigError

PROBABILITY_TOLERANCE = 1e-6


class Component(Model):
    """One mode of a mixture of normal distributions (truncated at `min_s`)."""

    weight: float = Field(gt=0)
    mean_s: float = Field(gt=0)
    sd_s: float = Field(ge=0)


class Mixture(Model):
    """A ring-time distribution: a mixture of normals, truncated below at `min_s` seconds."""

    components: tuple[Component, ...] = Field(min_length=1)
    min_s: float = Field(0.5, ge=0)


class Durations(Model):
    """A duration distribution: lognormal by mean and standard deviation, or replayed from a CSV column."""

    distribution: Literal["lognormal", "fixed", "csv"] = "lognormal"
    mean_s: float = Field(180.0, gt=0)
    sd_s: float = Field(150.0, ge=0)
    csv: str | None = None  # path, relative to the scenario file
    column: str = "seconds"

    @model_validator(mode="after")
    def _csv_given(self) -> Self:
        if self.distribution == "csv" and not self.csv:
            raise ValueError("distribution 'csv' needs csv = 'path/to/file.csv'")
        return self

    @property
    def lognormal_params(self) -> tuple[float, float]:
        """(mu, sigma) of the underlying normal."""
        sigma2 = math.log(1.0 + (self.sd_s / self.mean_s) ** 2)
        return math.log(self.mean_s) - sigma2 / 2.0, math.sqrt(sigma2)


class Outcomes(Model):
    """Probability of each outcome of one dial; they must sum to 1."""

    live: float = Field(ge=0, le=1)
    machine: float = Field(0.0, ge=0, le=1)
    busy: float = Field(0.0, ge=0, le=1)
    no_answer: float = Field(0.0, ge=0, le=1)
    failed: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> Self:
        total = self.live + self.machine + self.busy + self.no_answer + self.failed
        if abs(total - 1.0) > PROBABILITY_TOLERANCE:
            raise ValueError(f"probabilities must sum to 1, they sum to {total:.6g}")
        return self


def _normal(mean_s: float, sd_s: float) -> Mixture:
    return Mixture(components=(Component(weight=1.0, mean_s=mean_s, sd_s=sd_s),))


class RingTimes(Model):
    """Seconds from INVITE to each outcome. No-answer calls ring until the ring timeout."""

    live: Mixture = Field(default_factory=lambda: Mixture(components=(
        Component(weight=0.65, mean_s=7.0, sd_s=2.5), Component(weight=0.35, mean_s=16.0, sd_s=4.0))))
    machine: Mixture = Field(default_factory=lambda: _normal(15.0, 4.0))
    busy: Mixture = Field(default_factory=lambda: _normal(3.0, 1.0))
    failed: Mixture = Field(default_factory=lambda: _normal(1.5, 0.5))


class Amd(Model):
    """Answering-machine detection as the world sees it: its errors and how long it takes."""

    enabled: bool = True
    false_positive: float = Field(0.02, ge=0, le=1, description="human classified as machine")
    false_negative: float = Field(0.10, ge=0, le=1, description="machine classified as human")
    human_decision_s: Mixture = Field(default_factory=lambda: _normal(0.6, 0.15))
    machine_decision_s: Mixture = Field(default_factory=lambda: _normal(2.5, 0.5))
    machine_talk_s: float = Field(8.0, gt=0, description="an agent's time on a machine passed as human")


class Phase(Model):
    """From `start_h` hours into the run, these settings replace the base ones."""

    start_h: float = Field(ge=0)
    outcomes: Outcomes | None = None
    talk: Durations | None = None
    wrap: Durations | None = None


class CampaignOverrides(Model):
    """Campaign settings the scenario fixes (the rest are CampaignConfig defaults)."""

    ring_timeout_s: float = Field(25.0, ge=15)
    wrap_up_s: float = Field(120.0, ge=0, description="auto-ready after this much wrap-up")
    connect_deadline_s: float = Field(2.0, gt=0, le=2.0)
    abandon_target: float = Field(0.025, gt=0, lt=1)
    abandon_limit: float = Field(0.03, gt=0, lt=1)
    max_lines: int = Field(1000, ge=1)


class Report(Model):
    """How the report measures the worst rolling-window abandon rate."""

    window_s: float = Field(3600.0, gt=0, description="rolling window length, also the campaign's")
    min_window_answers: int = Field(100, ge=1, description="windows with fewer live answers are skipped")


class Scenario(Model):
    """A whole simulated world."""

    name: str
    description: str = ""
    outcomes: Outcomes
    ring: RingTimes = Field(default_factory=RingTimes)
    talk: Durations = Field(default_factory=Durations)
    wrap: Durations = Field(default_factory=lambda: Durations(mean_s=15.0, sd_s=5.0))
    amd: Amd = Field(default_factory=Amd)
    connect_s: float = Field(0.2, ge=0, description="answer-to-agent bridge set-up time")
    safe_harbor_s: float = Field(8.0, gt=0, description="length of the safe-harbor message")
    campaign: CampaignOverrides = Field(default_factory=CampaignOverrides)
    report: Report = Field(default_factory=Report)
    phases: tuple[Phase, ...] = ()

    @model_validator(mode="after")
    def _phases_ordered(self) -> Self:
        starts = [p.start_h for p in self.phases]
        if starts != sorted(starts):
            raise ValueError("phases must be in increasing start_h order")
        return self

    def phase_at(self, hours: float) -> tuple[Outcomes, Durations, Durations]:
        """Outcome probabilities, talk and wrap distributions in force `hours` into the run."""
        outcomes, talk, wrap = self.outcomes, self.talk, self.wrap
        for phase in self.phases:
            if phase.start_h > hours:
                break
            outcomes = phase.outcomes or outcomes
            talk = phase.talk or talk
            wrap = phase.wrap or wrap
        return outcomes, talk, wrap


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; CSV duration files are checked too."""
    path = Path(path)
    data: dict[str, Any] = read_toml(path)
    data.setdefault("name", path.stem)
    scenario = load_model(Scenario, data, str(path))
    problems: list[str] = []
    for key, durations in (("talk", scenario.talk), ("wrap", scenario.wrap)):
        if durations.distribution == "csv" and durations.csv:
            try:
                load_durations_csv(path.parent / durations.csv, durations.column)
            except ConfigError as exc:
                problems.extend(f"{path}: {key}.csv: {p}" for p in exc.problems)
    if problems:
        raise ConfigError(problems)
    return scenario


def load_durations_csv(path: Path, column: str) -> list[float]:
    """Observed durations (seconds) from one CSV column; every bad row is reported with its line."""
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or column not in reader.fieldnames:
                raise ConfigError([f"{path}: no column {column!r} (columns: {reader.fieldnames})"])
            values: list[float] = []
            problems: list[str] = []
            for row in reader:
                raw = row[column]
                try:
                    value = float(raw)
                except (TypeError, ValueError):
                    problems.append(f"{path}:{reader.line_num}: {column}={raw!r} is not a number")
                    continue
                if not value > 0:
                    problems.append(f"{path}:{reader.line_num}: {column}={raw!r} must be > 0")
                    continue
                values.append(value)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    if problems:
        raise ConfigError(problems)
    if not values:
        raise ConfigError([f"{path}: no durations in column {column!r}"])
    return values
