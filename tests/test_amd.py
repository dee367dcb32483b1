"""Answering-machine detection on generated audio (tests/support/audio.py).

The accuracy thresholds are what the detector measured on these seeds with margin to spare; the
defaults were tuned on other seeds (100000 and up), so these are held-out samples. Run with `-s` to
see the confusion matrices and decision times.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dialer.outcomes import AnswerKind
from sip.amd import AmdDetector, AmdResult, AmdSettings, Beep, BeepDetector, NoiseFloor, frame_bytes
from sip.wav import AudioFormatError, read_wav_pcm
from tests.support.audio import (
    FRAME_BYTES,
    SAMPLE_RATE_HZ,
    AudioSample,
    background_noise,
    human_answer,
    machine_greeting,
    pcm_frames,
    tone,
)

CAMPAIGN_AUDIO = Path(__file__).resolve().parents[1] / "config" / "audio"
HUMAN_SEEDS = range(0, 200)
MACHINE_SEEDS = range(1000, 1200)
KINDS = (AnswerKind.HUMAN, AnswerKind.MACHINE, AnswerKind.UNKNOWN)


def classify(frames: Iterable[bytes], amd_settings: AmdSettings | None = None) -> AmdResult | None:
    """Feed frames until a decision, as the SIP worker does."""
    detector = AmdDetector(amd_settings)
    for frame in frames:
        result = detector.feed(frame)
        if result is not None:
            return result
    return None


def confusion(
    label: str,
    humans: list[AmdResult | None],
    machines: list[AmdResult | None],
    record: Callable[[str, object], None],
) -> tuple[float, float]:
    """Print a confusion matrix and return (human accuracy, machine accuracy)."""
    rows = {"human": Counter(r.kind if r else None for r in humans)}
    rows["machine"] = Counter(r.kind if r else None for r in machines)
    lines = [f"AMD {label}: truth \\ decided   " + "  ".join(f"{k.value:>8}" for k in KINDS) + "  (none)"]
    for truth, counts in rows.items():
        cells = "  ".join(f"{counts[k]:>8}" for k in KINDS)
        lines.append(f"AMD {label}: {truth:>8} ({sum(counts.values())})  {cells}  {counts[None]:>6}")
    human_accuracy = rows["human"][AnswerKind.HUMAN] / len(humans)
    machine_accuracy = rows["machine"][AnswerKind.MACHINE] / len(machines)
    lines.append(f"AMD {label}: accuracy human {human_accuracy:.1%}, machine {machine_accuracy:.1%}")
    print("\n" + "\n".join(lines))
    record(f"amd_{label}_human_accuracy", round(human_accuracy, 4))
    record(f"amd_{label}_machine_accuracy", round(machine_accuracy, 4))
    return human_accuracy, machine_accuracy


@pytest.fixture(scope="module")
def human_samples() -> list[AudioSample]:
    return [human_answer(seed) for seed in HUMAN_SEEDS]


@pytest.fixture(scope="module")
def human_results(human_samples: list[AudioSample]) -> list[AmdResult | None]:
    return [classify(s.frames()) for s in human_samples]


@pytest.fixture(scope="module")
def machine_results() -> list[AmdResult | None]:
    # Decisions come within 4 s of the answer; the rest of a long greeting is not needed here.
    return [classify(machine_greeting(seed, max_duration_s=5.0).frames()) for seed in MACHINE_SEEDS]


def test_classifies_generated_humans_and_machines(
    human_results: list[AmdResult | None],
    machine_results: list[AmdResult | None],
    record_property: Callable[[str, object], None],
) -> None:
    human_accuracy, machine_accuracy = confusion(
        "snr10-35dB", human_results, machine_results, record_property
    )
    # Measured: 100 % / 100 % on these seeds, 99.7 % / 99.7 % on the tuning seeds.
    assert human_accuracy >= 0.97
    assert machine_accuracy >= 0.95
    reasons = Counter(r.reason for r in machine_results if r and r.kind is AnswerKind.MACHINE)
    print(f"AMD machine decisions by reason: {dict(reasons)}")
    assert set(reasons) <= {"long_greeting", "max_words", "beep"}


def test_humans_are_decided_quickly(
    human_samples: list[AudioSample],
    human_results: list[AmdResult | None],
    record_property: Callable[[str, object], None],
) -> None:
    """The 2-second abandon clock runs from the answer: most humans must be known well before it."""
    times = [r.decided_after_ms for r in human_results if r and r.kind is AnswerKind.HUMAN]
    # The detector's own share: time from the end of "hello?" to the decision.
    own = [
        r.decided_after_ms - s.greeting_end_ms
        for s, r in zip(human_samples, human_results, strict=True)
        if r and r.kind is AnswerKind.HUMAN
    ]
    p10, p50, p90 = np.percentile(times, [10, 50, 90])
    print(
        f"\nAMD human decision after answer: p10 {p10:.0f} ms, median {p50:.0f} ms, p90 {p90:.0f} ms, "
        f"max {max(times)} ms; after end of greeting: median {statistics.median(own):.0f} ms, "
        f"max {max(own)} ms"
    )
    record_property("amd_human_decision_median_ms", p50)
    # Measured: median 1600 ms (pickup 0.1-0.7 s + "hello?" 0.4-1.2 s + ~0.4 s of silence), p90 2260.
    assert p50 <= 1600
    assert p90 <= 2400
    assert statistics.median(own) <= 450
    assert all(r is None or r.decided_after_ms <= AmdSettings().total_analysis_time_ms for r in human_results)


def test_noisy_line_degrades_gracefully(record_property: Callable[[str, object], None]) -> None:
    """At 8 dB SNR speech barely clears the noise; the detector must still be mostly right."""
    humans = [classify(human_answer(seed, snr_db=8.0).frames()) for seed in range(5000, 5080)]
    machines = [
        classify(machine_greeting(seed, snr_db=8.0, max_duration_s=5.0).frames())
        for seed in range(6000, 6080)
    ]
    human_accuracy, machine_accuracy = confusion("snr8dB", humans, machines, record_property)
    # Measured: 95 % / 87.5 % on these seeds, 93.5 % / 90 % on 200 other seeds of each class.
    assert human_accuracy >= 0.85
    assert machine_accuracy >= 0.80


@pytest.mark.parametrize("level_dbfs", [-40.0, -10.0])
def test_quiet_and_loud_lines(level_dbfs: float, record_property: Callable[[str, object], None]) -> None:
    humans = [classify(human_answer(seed, level_dbfs=level_dbfs).frames()) for seed in range(7000, 7060)]
    machines = [
        classify(machine_greeting(seed, level_dbfs=level_dbfs, max_duration_s=5.0).frames())
        for seed in range(8000, 8060)
    ]
    human_accuracy, machine_accuracy = confusion(
        f"level{level_dbfs:.0f}dBFS", humans, machines, record_property
    )
    assert human_accuracy >= 0.95
    assert machine_accuracy >= 0.95


def _silence_frames(seconds: float, rng: np.random.Generator, noise_dbfs: float = -60.0) -> list[bytes]:
    n = int(seconds * SAMPLE_RATE_HZ)
    noise = background_noise(rng, n) * 32767 * 10 ** (noise_dbfs / 20)
    return list(pcm_frames(np.round(noise).astype(np.int16)))


def test_silent_answer_is_unknown_by_default_and_configurable() -> None:
    frames = _silence_frames(6.0, np.random.default_rng(1))
    result = classify(frames)
    assert result == AmdResult(AnswerKind.UNKNOWN, 2500, "initial_silence")
    as_machine = classify(
        frames, AmdSettings(initial_silence_kind=AnswerKind.MACHINE, initial_silence_ms=2000)
    )
    assert as_machine == AmdResult(AnswerKind.MACHINE, 2000, "initial_silence")


def test_gives_up_with_unknown_after_total_analysis_time() -> None:
    never_long_enough = AmdSettings(greeting_ms=20_000, maximum_number_of_words=1000)
    sample = machine_greeting(42, greeting_s=8.0, max_duration_s=6.0)
    result = classify(sample.frames(), never_long_enough)
    assert result == AmdResult(AnswerKind.UNKNOWN, 4000, "analysis_timeout")


def test_decision_is_sticky_and_returned_on_every_later_frame() -> None:
    detector = AmdDetector()
    frames = list(human_answer(3).frames())
    results = [detector.feed(f) for f in frames]
    first = next(i for i, r in enumerate(results) if r is not None)
    assert all(r is None for r in results[:first])
    assert all(r is results[first] for r in results[first:])
    assert detector.result is results[first]
    assert detector.elapsed_ms == len(frames) * 20


def test_a_beep_during_analysis_means_machine() -> None:
    rng = np.random.default_rng(7)
    frames = _silence_frames(0.3, rng)
    beep = np.round(tone(1000.0, 0.5) * 32767 * 10 ** (-20 / 20)).astype(np.int16)
    frames += list(pcm_frames(beep))
    result = classify(frames)
    assert result is not None
    assert result.kind is AnswerKind.MACHINE
    assert result.reason == "beep"
    assert result.decided_after_ms <= 300 + 100


@pytest.fixture(scope="module")
def full_machines() -> list[AudioSample]:
    return [machine_greeting(seed) for seed in range(3000, 3080)]


def test_beep_after_greeting_is_found_within_100_ms(
    full_machines: list[AudioSample], record_property: Callable[[str, object], None]
) -> None:
    """After the machine decision the detector keeps listening for the beep (voicemail drop)."""
    latencies: list[int] = []
    for sample in full_machines:
        assert sample.beep_start_ms is not None and sample.beep_end_ms is not None and sample.beep_hz
        detector = AmdDetector()
        found: Beep | None = None
        for frame in sample.frames():
            detector.feed(frame)
            beep = detector.beep
            if found is None and beep is not None and abs(beep.start_ms - sample.beep_start_ms) <= 100:
                found = beep
        assert found is not None, f"seed {sample.seed}: no beep found near {sample.beep_start_ms} ms"
        latencies.append(found.detected_at_ms - sample.beep_start_ms)
        assert abs(found.start_ms - sample.beep_start_ms) <= 40
        assert abs(found.frequency_hz - sample.beep_hz) <= 5.0
        last = detector.beep
        assert last is not None and last.end_ms is not None
        assert abs(last.end_ms - sample.beep_end_ms) <= 40
        assert detector.beep_at_ms == last.start_ms
    print(
        f"\nAMD beep detection after onset: median {statistics.median(latencies):.0f} ms, "
        f"max {max(latencies)} ms over {len(latencies)} machines"
    )
    record_property("amd_beep_latency_max_ms", max(latencies))
    assert max(latencies) <= 100


def test_speech_is_not_taken_for_a_beep(human_samples: list[AudioSample]) -> None:
    false_beeps = 0
    for sample in human_samples:
        detector = BeepDetector()
        for frame in sample.frames():
            detector.feed(frame)
        false_beeps += bool(detector.beeps)
    print(f"\nAMD false beeps in {len(human_samples)} human answers: {false_beeps}")
    # Measured: 0 in 400 human answers.
    assert false_beeps <= 2


def test_beep_detector_reports_onset_and_end() -> None:
    rng = np.random.default_rng(11)
    quiet = _silence_frames(0.2, rng, noise_dbfs=-45.0)
    sound = tone(850.0, 0.3) * 32767 * 0.1 + background_noise(rng, int(0.3 * SAMPLE_RATE_HZ)) * 32767 * 0.01
    frames = quiet + list(pcm_frames(np.round(sound).astype(np.int16))) + quiet
    detector = BeepDetector()
    events = [(i, e) for i, f in enumerate(frames) if (e := detector.feed(f)) is not None]
    assert len(events) == 2
    (_, started), (_, ended) = events
    assert started.end_ms is None and started.duration_ms is None
    assert 190 <= started.start_ms <= 210 and started.detected_at_ms <= 300
    assert abs(started.frequency_hz - 850.0) < 3.0
    assert ended.end_ms is not None and 490 <= ended.end_ms <= 520
    assert ended.duration_ms == ended.end_ms - ended.start_ms
    assert detector.beeps == [ended]


def test_a_tone_too_short_for_a_beep_is_reported_then_forgotten() -> None:
    """A 90 ms pure stretch is reported when recognised but is not kept as a beep to drop after."""
    rng = np.random.default_rng(12)
    quiet = _silence_frames(0.2, rng, noise_dbfs=-45.0)
    blip = np.round(tone(1000.0, 0.09) * 32767 * 0.1).astype(np.int16)
    detector = BeepDetector()
    events = [e for f in [*quiet, *pcm_frames(blip), *quiet] if (e := detector.feed(f)) is not None]
    assert len(events) == 1 and events[0].end_ms is None
    assert detector.beeps == []
    assert detector.beep is None


def test_noise_floor_falls_fast_and_rises_at_its_limit() -> None:
    floor = NoiseFloor(rise_db_per_s=3.0, fall_ratio=0.5, minimum_dbfs=-70.0)
    assert floor.update(-40.0, 20) == -40.0  # the first frame sets it
    assert floor.update(-50.0, 20) == -45.0  # halfway down at once
    assert floor.update(-10.0, 20) == pytest.approx(-44.94)  # speech: only 3 dB/s
    for _ in range(50):
        floor.update(-30.0, 20)  # a second of a noisier line
    assert floor.level_dbfs == pytest.approx(-44.94 + 3.0)
    for _ in range(10):
        floor.update(-100.0, 20)
    assert floor.level_dbfs == -70.0  # digital silence cannot drag it below its minimum


def _upsample(pcm: np.ndarray) -> np.ndarray:
    t8 = np.arange(len(pcm))
    t16 = np.arange(2 * len(pcm)) / 2
    return np.round(np.interp(t16, t8, pcm.astype(np.float64))).astype(np.int16)


def test_works_at_16_khz() -> None:
    wideband = AmdSettings(sample_rate_hz=16000)
    assert frame_bytes(16000) == 640
    for seed in range(20):
        human = classify(pcm_frames(_upsample(human_answer(seed).pcm), 320), wideband)
        assert human is not None and human.kind is AnswerKind.HUMAN
        machine = classify(
            pcm_frames(_upsample(machine_greeting(seed, max_duration_s=5.0).pcm), 320), wideband
        )
        assert machine is not None and machine.kind is AnswerKind.MACHINE
    with_beep = machine_greeting(3, greeting_s=3.0)
    assert with_beep.beep_start_ms is not None
    beeps = BeepDetector(wideband)
    for frame in pcm_frames(_upsample(with_beep.pcm), 320):
        beeps.feed(frame)
    assert len(beeps.beeps) == 1
    assert abs(beeps.beeps[0].start_ms - with_beep.beep_start_ms) <= 40


@pytest.mark.parametrize("size", [0, 1, 319, 321, 640])
def test_rejects_frames_of_the_wrong_size(size: int) -> None:
    with pytest.raises(AudioFormatError) as excinfo:
        AmdDetector().feed(b"\0" * size)
    assert str(excinfo.value) == (
        f"audio: frame of {size} bytes, expected {FRAME_BYTES} (20 ms of 16-bit mono at 8000 Hz)"
    )


def test_settings_are_frozen_and_checked() -> None:
    amd_settings = AmdSettings()
    with pytest.raises(ValidationError):
        amd_settings.greeting_ms = 5  # type: ignore[misc]
    with pytest.raises(ValidationError, match="voice_hold_margin_db must not exceed voice_start_margin_db"):
        AmdSettings(voice_start_margin_db=3.0, voice_hold_margin_db=6.0)
    with pytest.raises(ValidationError, match="beep_max_hz must be below the Nyquist frequency 4000 Hz"):
        AmdSettings(beep_max_hz=4500.0)
    with pytest.raises(ValidationError, match="beep_keep_min_ms must not be below beep_min_ms"):
        AmdSettings(beep_min_ms=100, beep_keep_min_ms=80)
    with pytest.raises(ValidationError, match="extra"):
        AmdSettings(greting_ms=100)  # type: ignore[call-arg]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=FRAME_BYTES, max_size=FRAME_BYTES), min_size=1, max_size=40))
def test_any_audio_gets_a_decision_within_the_analysis_time(chunks: list[bytes]) -> None:
    """Whatever arrives (noise, clipping, digital silence), a decision comes by the deadline."""
    detector = AmdDetector()
    frames = (chunks * (200 // len(chunks) + 1))[:200]  # 4 s of audio
    results = [detector.feed(f) for f in frames]
    decided = results[-1]
    assert decided is not None
    assert decided.decided_after_ms <= AmdSettings().total_analysis_time_ms
    assert decided.kind in KINDS


@pytest.mark.parametrize("name", ["safe_harbor", "robocall", "machine_message"])
def test_synthesised_voice_prompts_are_machines(name: str) -> None:
    """Real synthesised speech (eSpeak NG, not our generator) talking on is a machine."""
    _, pcm = read_wav_pcm(CAMPAIGN_AUDIO / f"{name}.wav")
    frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]
    result = classify(frames)
    assert result is not None
    assert result.kind is AnswerKind.MACHINE
    assert result.decided_after_ms <= 2500
