"""Answering-machine detection (AMD) on the received audio of an answered call.

Pure numpy, no pjsua2: the SIP worker copies each 20 ms frame out of `AudioMediaPort.onFrameReceived`
and feeds it here, so the whole classifier is testable on generated audio or WAV files.

The idea is the one behind Asterisk's `AMD()` application, in which a person answers with a short
greeting ("Hello?") and then waits, while a machine talks on ("Hi, you've reached ... please leave a
message after the tone"). Frames are classified voice/silence, voice runs become words, and the
decision follows from the greeting's length, its word count and the silence after it. Differences
from Asterisk, each for a measured reason (see tests/test_amd.py for the accuracy):

- voice activity is relative to an adaptive noise floor (fast to fall, slow to rise) on top of an
  absolute minimum, so a noisy line is not one endless "word" and a quiet talker is still heard;
- voice/silence uses hysteresis (a higher level to start voice than to keep it), so the quiet ends
  of words do not split them;
- the greeting is measured as its span (first word onset to latest voice), which includes the short
  gaps between a machine's words, so a long greeting is recognised by the clock rather than only
  once enough voiced frames have piled up;
- the silence that confirms a human grows with the words heard (300 ms after one word, 700 ms after
  two): "Hello?" is decided fast, while a machine pausing after its first phrase is not taken for
  a person waiting;
- a narrow-band beep detector (FFT peak purity, dominance over every other spectral peak, frequency
  stability) runs all along: a beep is a machine, and after a machine decision it tells the worker
  when to start a voicemail drop;
- a long initial silence gives `unknown` by default, not `machine`: connecting a silent human to an
  agent costs less than hanging up on one (which is an abandoned call and an AMD false positive).

The 2-second abandon clock runs from the answer, so decisions come as early as the evidence allows;
`feed` returns the decision from the frame on which it is made and keeps returning it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dialer.outcomes import AnswerKind
from sip.wav import AudioFormatError

_FULL_SCALE_POWER = 32768.0**2
_MIN_DBFS = -100.0  # digital silence; keeps log10 finite


class AmdSettings(BaseModel):
    """Thresholds of the answering-machine detector. Times in milliseconds, levels in dBFS/dB.

    Defaults were chosen by measurement on generated speech (tests/support/audio.py) at 10-35 dB SNR;
    see tests/test_amd.py for the accuracy and decision times they give.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_rate_hz: Literal[8000, 16000] = 8000
    """Rate of the PCM fed in (the worker's media port runs at 8000 Hz for G.711)."""

    initial_silence_ms: int = Field(2500, ge=100)
    """No word heard for this long after the answer: decide `initial_silence_kind`."""

    initial_silence_kind: AnswerKind = AnswerKind.UNKNOWN
    """Decision on a silent answer. Asterisk says machine; unknown lets the engine connect an agent."""

    greeting_ms: int = Field(1600, ge=200)
    """A greeting spanning this long (first word onset to the latest voice frame, the pauses inside
    included) is a machine. A person's "hello?" takes 0.4-1.2 s."""

    after_greeting_silence_ms: int = Field(300, ge=100)
    """Silence this long after a short greeting means a person waiting for an answer: human.
    Longer is safer against machines pausing between phrases, shorter decides sooner."""

    after_greeting_silence_per_word_ms: int = Field(400, ge=0)
    """Extra silence required for each word of the greeting beyond the first: a person's greeting
    is one or two words, a machine pausing between phrases has usually said more."""

    total_analysis_time_ms: int = Field(4000, ge=500)
    """Give up with `unknown` after this long without a decision."""

    min_word_length_ms: int = Field(100, ge=20)
    """A voice run shorter than this is a click or a noise burst, not a word."""

    between_words_silence_ms: int = Field(60, ge=20)
    """Silence this long ends a word; shorter gaps are dips inside a word."""

    maximum_number_of_words: int = Field(4, ge=2)
    """This many words in the greeting is a machine (a person's greeting has one or two)."""

    min_voice_level_dbfs: float = Field(-55.0, le=-20.0)
    """Frames quieter than this are silence whatever the noise floor (Asterisk's silence_threshold
    256 is about -42 dBFS; lower here because the noise floor does the real work)."""

    voice_start_margin_db: float = Field(6.0, gt=0.0)
    """A frame this far above the noise floor starts voice."""

    voice_hold_margin_db: float = Field(4.0, gt=0.0)
    """Once in voice, frames this far above the noise floor keep it (hysteresis)."""

    noise_floor_rise_db_per_s: float = Field(3.0, gt=0.0)
    """How fast the noise floor may climb; slow so words do not raise it, enough for a noisier line."""

    noise_floor_fall_ratio: float = Field(0.3, gt=0.0, le=1.0)
    """Fraction of the distance the floor moves toward a quieter frame at once (1 = jump)."""

    beep_min_hz: float = Field(380.0, gt=0.0)
    """Lowest beep frequency looked for. Voicemail beeps are 400-2000 Hz (mostly 1 kHz); starting
    above ~350 Hz keeps the first formant of "ee"/"oo" vowels, which can hold one strong harmonic,
    out of the band."""

    beep_max_hz: float = Field(2200.0, gt=0.0)
    """Highest beep frequency looked for."""

    beep_min_ms: int = Field(60, ge=40)
    """A tone must last this long to count as a beep. Beeps last 150 ms and more; 60 ms lets a drop
    be timed within ~100 ms of the onset while speech almost never holds one pure tone that long."""

    beep_keep_min_ms: int = Field(120, ge=40)
    """A tone that stops before lasting this long is dropped from the beeps heard (after having been
    reported at `beep_min_ms`): real beeps last 150 ms and more, so a voicemail drop waiting for the
    end of the last beep is not started by a short pure stretch of speech."""

    beep_min_purity: float = Field(0.6, gt=0.0, lt=1.0)
    """Fraction of the frame's energy (above 150 Hz) that must sit within ±50 Hz of the peak."""

    beep_max_other_peak_db: float = Field(-12.0, lt=0.0)
    """The strongest spectral bin away from the tone (beyond ±80 Hz) must be at least this far below
    the tone's peak. Speech always has other strong harmonics; a beep over line noise has none."""

    beep_frequency_tolerance_hz: float = Field(10.0, gt=0.0)
    """How far the peak may lie from the frequency at the start of the run (beeps are crystal
    stable, speech pitch drifts)."""

    beep_min_level_dbfs: float = Field(-50.0, le=-10.0)
    """Tones quieter than this are ignored."""

    beep_is_machine: bool = True
    """A beep during analysis decides `machine` immediately."""

    @model_validator(mode="after")
    def _check_relations(self) -> AmdSettings:
        problems = []
        if self.voice_hold_margin_db > self.voice_start_margin_db:
            problems.append("voice_hold_margin_db must not exceed voice_start_margin_db")
        if self.beep_keep_min_ms < self.beep_min_ms:
            problems.append("beep_keep_min_ms must not be below beep_min_ms")
        if self.beep_min_hz >= self.beep_max_hz:
            problems.append("beep_min_hz must be below beep_max_hz")
        if self.beep_max_hz >= self.sample_rate_hz / 2:
            problems.append(f"beep_max_hz must be below the Nyquist frequency {self.sample_rate_hz // 2} Hz")
        if self.after_greeting_silence_ms >= self.total_analysis_time_ms:
            problems.append("after_greeting_silence_ms must be below total_analysis_time_ms")
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True, slots=True)
class AmdResult:
    """The classification of an answer and when it was made (ms of audio after the answer)."""

    kind: AnswerKind
    decided_after_ms: int
    reason: str  # snake_case: greeting_then_silence, long_greeting, max_words, beep, ...


@dataclass(frozen=True, slots=True)
class Beep:
    """A detected answering-machine beep; times in ms of audio from the first frame fed."""

    start_ms: int  # estimated tone onset
    detected_at_ms: int  # end of the frame on which the beep was recognised
    frequency_hz: float
    end_ms: int | None = None  # None while the tone still sounds

    @property
    def duration_ms(self) -> int | None:
        """Length of the tone once it has ended. A real beep lasts 150 ms or more; a voicemail drop
        should start after the end of the last beep heard."""
        return None if self.end_ms is None else self.end_ms - self.start_ms


FRAME_MS = 20
"""Frame length the detectors take: what pjsua2's media port delivers (`onFrameReceived`)."""


def frame_bytes(sample_rate_hz: int) -> int:
    """Size of one 20 ms frame of 16-bit mono PCM at `sample_rate_hz`."""
    return sample_rate_hz * FRAME_MS // 1000 * 2


def _pcm(frame: bytes, sample_rate_hz: int) -> npt.NDArray[np.int16]:
    expected = frame_bytes(sample_rate_hz)
    if len(frame) != expected:
        what = f"20 ms of 16-bit mono at {sample_rate_hz} Hz"
        raise AudioFormatError(None, [f"frame of {len(frame)} bytes, expected {expected} ({what})"])
    return np.frombuffer(frame, dtype="<i2")


def frame_level_dbfs(samples: npt.NDArray[np.int16]) -> float:
    """Mean power of a frame relative to a full-scale square wave, in dB."""
    x = samples.astype(np.float64)
    power = float(np.dot(x, x)) / len(x) / _FULL_SCALE_POWER
    return 10.0 * math.log10(power) if power > 1e-10 else _MIN_DBFS


class NoiseFloor:
    """Running estimate of the background level: falls quickly toward quiet frames, rises slowly.

    Speech only raises it between pauses, and every pause pulls it back down, so it follows the
    line noise rather than the talker.
    """

    def __init__(self, rise_db_per_s: float, fall_ratio: float, minimum_dbfs: float) -> None:
        self._rise_db_per_ms = rise_db_per_s / 1000.0
        self._fall = fall_ratio
        self._minimum = minimum_dbfs
        self.level_dbfs: float | None = None

    def update(self, level_dbfs: float, frame_ms: int) -> float:
        """Account for one frame's level; returns the new floor."""
        if self.level_dbfs is None:
            floor = level_dbfs
        elif level_dbfs < self.level_dbfs:
            floor = self.level_dbfs + (level_dbfs - self.level_dbfs) * self._fall
        else:
            floor = self.level_dbfs + min(level_dbfs - self.level_dbfs, self._rise_db_per_ms * frame_ms)
        self.level_dbfs = max(floor, self._minimum)
        return self.level_dbfs


class BeepDetector:
    """Finds answering-machine beeps: a pure tone in the beep band held for `beep_min_ms`.

    Each 20 ms frame is analysed together with the previous one (40 ms, Hann window, FFT zero-padded
    to ~16 Hz bins). A frame is tonal when the peak in the beep band holds `beep_min_purity` of the
    energy above 150 Hz *and* no other bin comes within `beep_max_other_peak_db` of it; a beep is a
    run of tonal frames whose peak stays within `beep_frequency_tolerance_hz` of where it started.
    Voiced speech can put most of its energy in one harmonic for a while, but it always has other
    strong harmonics and its pitch drifts; line noise lowers a beep's purity but not its dominance.
    """

    def __init__(self, settings: AmdSettings | None = None) -> None:
        self.settings = settings or AmdSettings()
        rate = self.settings.sample_rate_hz
        self._frame_samples = rate // 50
        window_samples = 2 * self._frame_samples
        self._fft_size = 1 << (2 * window_samples - 1).bit_length()
        self._window = np.hanning(window_samples)
        freqs = np.fft.rfftfreq(self._fft_size, 1.0 / rate)
        self._bin_hz = float(freqs[1])
        # Mains hum and DC lie below any beep and would only dilute the purity measure.
        self._first_bin = int(np.searchsorted(freqs, 150.0))
        self._last_bin = int(np.searchsorted(freqs, min(3400.0, rate / 2 - 100.0)))
        self._band_lo = int(np.searchsorted(freqs, self.settings.beep_min_hz))
        self._band_hi = int(np.searchsorted(freqs, self.settings.beep_max_hz, side="right"))
        self._peak_half_width = max(1, round(50.0 / self._bin_hz))
        self._exclude_half_width = max(2, round(80.0 / self._bin_hz))
        self._min_run_frames = -(-self.settings.beep_min_ms // FRAME_MS)
        self._prev = np.zeros(self._frame_samples)
        self._elapsed_ms = 0
        self._run_frames = 0
        self._run_start_ms = 0
        self._run_freq = 0.0
        self._run_freq_sum = 0.0
        self._gap_start_ms: int | None = None
        self._current: Beep | None = None
        self.beeps: list[Beep] = []

    @property
    def elapsed_ms(self) -> int:
        """Milliseconds of audio fed so far."""
        return self._elapsed_ms

    @property
    def beep(self) -> Beep | None:
        """The most recent beep (possibly still sounding), or None."""
        return self.beeps[-1] if self.beeps else None

    def feed(self, frame: bytes, level_dbfs: float | None = None) -> Beep | None:
        """Analyse one 20 ms frame. Returns a `Beep` on the frame where it is recognised (`end_ms`
        None) and again on the frame where the tone stops (`end_ms` set) if it lasted at least
        `beep_keep_min_ms`; a shorter tone is forgotten. Otherwise returns None.

        `level_dbfs` may be passed when the caller has already measured the frame.
        """
        samples = _pcm(frame, self.settings.sample_rate_hz)
        start_ms = self._elapsed_ms
        self._elapsed_ms += FRAME_MS
        level = frame_level_dbfs(samples) if level_dbfs is None else level_dbfs
        current = samples.astype(np.float64)
        frequency = self._tonal_frequency(current, level)
        self._prev = current

        tolerance = self.settings.beep_frequency_tolerance_hz
        matches = (
            frequency is not None and self._run_frames > 0 and abs(frequency - self._run_freq) <= tolerance
        )
        if matches:
            self._run_frames += 1
            self._gap_start_ms = None
            assert frequency is not None  # for mypy: `matches` implies it
            self._run_freq_sum += frequency
        elif self._current is not None and self._gap_start_ms is None:
            # One frame off a sounding beep is line noise or a lost packet, not the end of the tone.
            self._gap_start_ms = start_ms
        else:
            ended = self._end_current(start_ms if self._gap_start_ms is None else self._gap_start_ms)
            self._gap_start_ms = None
            if frequency is not None:
                self._run_frames = 1
                self._run_start_ms = start_ms
                self._run_freq = self._run_freq_sum = frequency
            else:
                self._run_frames = 0
            if ended is not None:
                return ended

        if self._current is None and self._run_frames >= self._min_run_frames:
            # The 40 ms window of the first tonal frame already held the onset for a while: the tone
            # started about half a frame before that frame.
            self._current = Beep(
                start_ms=max(0, self._run_start_ms - FRAME_MS // 2),
                detected_at_ms=self._elapsed_ms,
                frequency_hz=round(self._run_freq_sum / self._run_frames, 1),
            )
            self.beeps.append(self._current)
            return self._current
        return None

    def _end_current(self, at_ms: int) -> Beep | None:
        if self._current is None:
            return None
        if at_ms - self._current.start_ms < self.settings.beep_keep_min_ms:
            self.beeps.pop()  # too short for a beep: forget it
            self._current = None
            return None
        ended = Beep(
            start_ms=self._current.start_ms,
            detected_at_ms=self._current.detected_at_ms,
            frequency_hz=self._current.frequency_hz,
            end_ms=at_ms,
        )
        self.beeps[-1] = ended
        self._current = None
        return ended

    def _tonal_frequency(self, samples: npt.NDArray[np.float64], level_dbfs: float) -> float | None:
        """Peak frequency of this frame if it is a loud enough, pure enough tone; else None."""
        s = self.settings
        if level_dbfs < s.beep_min_level_dbfs:
            return None
        spectrum = np.fft.rfft(np.concatenate((self._prev, samples)) * self._window, self._fft_size)
        power = (spectrum.real**2 + spectrum.imag**2)[self._first_bin : self._last_bin]
        total = float(power.sum())
        if total <= 0.0:
            return None
        lo_band = self._band_lo - self._first_bin
        peak = lo_band + int(np.argmax(power[lo_band : self._band_hi - self._first_bin]))
        peak_power = float(power[peak])
        half = self._peak_half_width
        if float(power[max(peak - half, 0) : peak + half + 1].sum()) < s.beep_min_purity * total:
            return None
        exclude = self._exclude_half_width
        others = max(
            float(power[: max(peak - exclude, 0)].max(initial=0.0)),
            float(power[peak + exclude + 1 :].max(initial=0.0)),
        )
        if others > peak_power * 10.0 ** (s.beep_max_other_peak_db / 10.0):
            return None
        # Parabolic interpolation on log power refines the peak to a fraction of a bin.
        shift = 0.0
        if 0 < peak < len(power) - 1:
            a, b, c = np.log(power[peak - 1 : peak + 2] + 1e-12)
            denominator = a - 2.0 * b + c
            if denominator != 0.0:
                shift = float(0.5 * (a - c) / denominator)
        return (self._first_bin + peak + shift) * self._bin_hz


class AmdDetector:
    """Streaming human/machine classifier for one answered call.

    Feed every received frame in order from the answer on. `feed` returns None until a decision is
    made, then the same `AmdResult` on every later frame. Beep detection keeps running after the
    decision (see `beep`, `beep_at_ms`) so a machine's beep can trigger a voicemail drop.
    """

    def __init__(self, settings: AmdSettings | None = None) -> None:
        self.settings = settings or AmdSettings()
        s = self.settings
        self._floor = NoiseFloor(
            rise_db_per_s=s.noise_floor_rise_db_per_s,
            fall_ratio=s.noise_floor_fall_ratio,
            minimum_dbfs=s.min_voice_level_dbfs - s.voice_start_margin_db - 10.0,
        )
        self._beeps = BeepDetector(s)
        self._elapsed_ms = 0
        self._in_voice = False
        self._voice_run_ms = 0  # current word candidate, short gaps included
        self._silence_run_ms = 0
        self._in_word = False
        self._words = 0
        self._greeting_start_ms: int | None = None
        self._last_voice_end_ms = 0
        self.result: AmdResult | None = None

    @property
    def elapsed_ms(self) -> int:
        """Milliseconds of audio fed so far."""
        return self._elapsed_ms

    @property
    def words(self) -> int:
        """Words counted so far in the greeting."""
        return self._words

    @property
    def beep(self) -> Beep | None:
        """The most recent beep heard, or None."""
        return self._beeps.beep

    @property
    def beep_at_ms(self) -> int | None:
        """Onset of the most recent beep (ms after the answer), or None."""
        beep = self._beeps.beep
        return beep.start_ms if beep is not None else None

    @property
    def noise_floor_dbfs(self) -> float | None:
        """Current background level estimate."""
        return self._floor.level_dbfs

    def feed(self, frame: bytes) -> AmdResult | None:
        """Account for one 20 ms frame of received PCM (16-bit little-endian, mono, `sample_rate_hz`).

        Raises `AudioFormatError` for a frame of any other size.
        """
        s = self.settings
        samples = _pcm(frame, s.sample_rate_hz)
        frame_ms = FRAME_MS
        level = frame_level_dbfs(samples)
        beep = self._beeps.feed(frame, level)
        self._elapsed_ms += frame_ms
        if self.result is not None:
            return self.result

        floor = self._floor.level_dbfs
        margin = s.voice_hold_margin_db if self._in_voice else s.voice_start_margin_db
        voice = level >= s.min_voice_level_dbfs and (floor is None or level >= floor + margin)
        # Every frame updates the floor, speech included: the rise limit keeps words from lifting it
        # much, and a line that really got noisier is learnt within seconds.
        self._floor.update(level, frame_ms)
        self._in_voice = voice
        self._account(voice, frame_ms)

        if beep is not None and s.beep_is_machine:
            return self._decide(AnswerKind.MACHINE, "beep")
        return self._rules()

    def _account(self, voice: bool, frame_ms: int) -> None:
        s = self.settings
        if voice:
            if self._silence_run_ms and self._silence_run_ms < s.between_words_silence_ms:
                self._voice_run_ms += self._silence_run_ms  # a dip inside the word
            self._silence_run_ms = 0
            self._voice_run_ms += frame_ms
            self._last_voice_end_ms = self._elapsed_ms
            if not self._in_word and self._voice_run_ms >= s.min_word_length_ms:
                self._in_word = True
                self._words += 1
                if self._greeting_start_ms is None:
                    self._greeting_start_ms = self._elapsed_ms - self._voice_run_ms
        else:
            self._silence_run_ms += frame_ms
            if self._silence_run_ms >= s.between_words_silence_ms:
                self._in_word = False
                self._voice_run_ms = 0

    def _rules(self) -> AmdResult | None:
        s = self.settings
        if self._greeting_start_ms is not None:
            if self._words >= s.maximum_number_of_words:
                return self._decide(AnswerKind.MACHINE, "max_words")
            if self._last_voice_end_ms - self._greeting_start_ms >= s.greeting_ms:
                return self._decide(AnswerKind.MACHINE, "long_greeting")
            required = s.after_greeting_silence_ms + s.after_greeting_silence_per_word_ms * (self._words - 1)
            if self._silence_run_ms >= required:
                return self._decide(AnswerKind.HUMAN, "greeting_then_silence")
        elif self._elapsed_ms >= s.initial_silence_ms:
            return self._decide(s.initial_silence_kind, "initial_silence")
        if self._elapsed_ms >= s.total_analysis_time_ms:
            return self._decide(AnswerKind.UNKNOWN, "analysis_timeout")
        return None

    def _decide(self, kind: AnswerKind, reason: str) -> AmdResult:
        self.result = AmdResult(kind=kind, decided_after_ms=self._elapsed_ms, reason=reason)
        return self.result
