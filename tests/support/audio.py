"""Synthetic telephone audio for tests: speech-like answers, answering-machine greetings, beeps.

No recordings are shipped; every fixture is generated from a seed so a failure can be replayed.
The speech model is crude but has the properties answering-machine detection keys on:

- words are voiced bursts of 150-600 ms made of 1-3 syllables (a harmonic series with pitch drift,
  jitter and vibrato, shaped by gliding formant resonances, raised-cosine envelopes, energy dips
  between syllables and optional unvoiced onsets), so frame energy rises and falls like real speech;
- a human answer is one short "hello?" (0.4-1.2 s of speech) and then silence or, after a pause, a
  second short phrase;
- a machine greeting is 3-15 s of continuous speech (short gaps between words, longer pauses between
  phrases) followed by a pure-tone beep;
- everything sits on background noise (white, pink or mains hum) at a chosen SNR and level.

The sample rate is 8000 Hz, as delivered by the SIP worker (`AudioMediaPort` frames of 20 ms).
The SIP tests reuse `pcm16_bytes` and `write_wav` to build the streams their sipp peers play.
"""

from __future__ import annotations

import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

SAMPLE_RATE_HZ = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000
FRAME_BYTES = FRAME_SAMPLES * 2

FloatArray = npt.NDArray[np.float64]

# (F1, F2, F3) in Hz of a few vowels, adult average; words glide between them.
_VOWELS: tuple[tuple[float, float, float], ...] = (
    (730.0, 1090.0, 2440.0),  # a
    (530.0, 1840.0, 2480.0),  # e
    (270.0, 2290.0, 3010.0),  # i
    (570.0, 840.0, 2410.0),  # o
    (300.0, 870.0, 2240.0),  # u
    (660.0, 1720.0, 2410.0),  # ae
    (490.0, 1350.0, 1690.0),  # er
    (640.0, 1190.0, 2390.0),  # uh
)
_FORMANT_BANDWIDTHS_HZ = (90.0, 110.0, 170.0)
_TELEPHONE_BAND_HZ = (300.0, 3400.0)


@dataclass(frozen=True, slots=True)
class Voice:
    """A speaker: mean pitch and how lively it is."""

    pitch_hz: float
    pitch_spread: float  # relative pitch excursion over a phrase
    jitter: float  # relative cycle-to-cycle pitch noise


@dataclass(frozen=True, slots=True)
class AudioSample:
    """One generated answer: 16-bit PCM at 8000 Hz plus what is known about its content.

    All times are in milliseconds from the start of the sample (= the moment the call was answered).
    """

    kind: str  # "human" or "machine"
    pcm: npt.NDArray[np.int16]
    speech_start_ms: int
    greeting_end_ms: int  # end of the first utterance: the "hello?", or the machine's whole greeting
    speech_end_ms: int
    beep_start_ms: int | None
    beep_end_ms: int | None
    beep_hz: float | None
    snr_db: float
    level_dbfs: float
    seed: int

    @property
    def duration_ms(self) -> int:
        """Length of the sample in milliseconds."""
        return len(self.pcm) * 1000 // SAMPLE_RATE_HZ

    def frames(self) -> Iterator[bytes]:
        """The sample as 20 ms little-endian 16-bit frames, as `onFrameReceived` delivers them."""
        return pcm_frames(self.pcm)


def random_voice(rng: np.random.Generator) -> Voice:
    """A random adult voice: low (male-ish) or high (female-ish) pitch."""
    base = rng.uniform(85.0, 150.0) if rng.random() < 0.5 else rng.uniform(165.0, 260.0)
    return Voice(pitch_hz=base, pitch_spread=rng.uniform(0.05, 0.25), jitter=rng.uniform(0.005, 0.02))


def _envelope(n: int, attack: int, release: int) -> FloatArray:
    """Raised-cosine attack and release around a flat top, all in samples."""
    env = np.ones(n)
    attack = min(attack, n // 2)
    release = min(release, n - attack)
    if attack > 0:
        env[:attack] = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, attack))
    if release > 0:
        env[n - release :] = 0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, release))
    return env


def _formant_gain(freqs: FloatArray, formants: FloatArray) -> FloatArray:
    """Magnitude response of three cascaded resonances at each (harmonic, time) frequency.

    `formants` has shape (3, n) (one gliding track per formant); `freqs` has shape (k, n).
    """
    gain = np.ones_like(freqs)
    for i, bandwidth in enumerate(_FORMANT_BANDWIDTHS_HZ):
        f_c = formants[i][np.newaxis, :]
        # A second-order resonance: |H| ~ f_c^2 / sqrt((f_c^2 - f^2)^2 + (f*B)^2), unity at DC.
        gain *= f_c**2 / np.sqrt((f_c**2 - freqs**2) ** 2 + (freqs * bandwidth) ** 2)
    return gain


def voiced_word(
    rng: np.random.Generator, voice: Voice, duration_s: float, rising: bool = False
) -> FloatArray:
    """One word of 1-3 syllables, normalised to unit RMS over its voiced part.

    `rising` gives the word a question intonation ("hello?").
    """
    n = max(int(duration_s * SAMPLE_RATE_HZ), FRAME_SAMPLES)
    t = np.arange(n) / SAMPLE_RATE_HZ
    syllables = int(rng.integers(1, 4)) if duration_s > 0.25 else 1

    # Pitch: declination or question rise, slow wander, vibrato-ish wobble and cycle jitter.
    contour = np.linspace(0.0, 1.0, n)
    shape = contour * voice.pitch_spread * (1.0 if rising else -0.6)
    wobble = 0.02 * np.sin(2 * np.pi * rng.uniform(3.0, 7.0) * t + rng.uniform(0, 2 * np.pi))
    jitter = np.convolve(rng.normal(0.0, voice.jitter, n), np.ones(40) / 40, mode="same") * 6.0
    f0 = voice.pitch_hz * (1.0 + shape + wobble + jitter)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE_HZ

    # Formants glide from one vowel to the next across the syllables.
    picks = rng.integers(0, len(_VOWELS), syllables + 1)
    knots = np.linspace(0, n - 1, syllables + 1)
    formants = np.empty((3, n))
    for i in range(3):
        targets = np.array([_VOWELS[p][i] for p in picks]) * rng.uniform(0.9, 1.1)
        formants[i] = np.interp(np.arange(n), knots, targets)

    max_harmonic = int(_TELEPHONE_BAND_HZ[1] / (voice.pitch_hz * 0.8))
    harmonics = np.arange(1, max_harmonic + 1)[:, np.newaxis]
    freqs = harmonics * f0[np.newaxis, :]
    # Glottal source tilt (about -12 dB/octave) plus lip radiation (+6 dB/octave).
    amps = _formant_gain(freqs, formants) / harmonics
    amps[freqs > _TELEPHONE_BAND_HZ[1]] = 0.0
    word = np.sum(amps * np.sin(harmonics * phase[np.newaxis, :]), axis=0)

    # Syllable envelope: each syllable swells and fades; the gaps between are dips, not silence.
    env = np.zeros(n)
    edges = np.linspace(0, n, syllables + 1).astype(int)
    for s in range(syllables):
        length = edges[s + 1] - edges[s]
        peak = rng.uniform(0.6, 1.0)
        env[edges[s] : edges[s + 1]] = np.maximum(
            peak * _envelope(length, int(length * 0.25), int(length * 0.3)), rng.uniform(0.1, 0.3)
        )
    env *= _envelope(n, int(0.02 * SAMPLE_RATE_HZ), int(0.04 * SAMPLE_RATE_HZ))
    word *= env

    # An unvoiced onset (s, f, h, t ...) on some words: high-passed noise, quieter than the vowel.
    if rng.random() < 0.5:
        m = min(int(rng.uniform(0.03, 0.08) * SAMPLE_RATE_HZ), n // 3)
        hiss = np.diff(rng.normal(0.0, 1.0, m + 1)) * _envelope(m, m // 3, m // 3)
        rms_word = float(np.sqrt(np.mean(word**2))) or 1.0
        word[:m] += hiss / (float(np.sqrt(np.mean(hiss**2))) or 1.0) * rms_word * rng.uniform(0.1, 0.4)

    rms = float(np.sqrt(np.mean(word**2)))
    normalised: FloatArray = word / rms if rms > 0 else word
    return normalised


def tone(freq_hz: float, duration_s: float, ramp_ms: float = 5.0) -> FloatArray:
    """A pure tone (an answering machine's beep) with short ramps, unit RMS."""
    n = int(duration_s * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    ramp = int(ramp_ms * SAMPLE_RATE_HZ / 1000)
    beep: FloatArray = np.sqrt(2.0) * np.sin(2 * np.pi * freq_hz * t) * _envelope(n, ramp, ramp)
    return beep


def background_noise(rng: np.random.Generator, n: int) -> FloatArray:
    """Unit-RMS line noise: white, pink, or pink with mains hum, chosen at random."""
    white = rng.normal(0.0, 1.0, n)
    choice = rng.random()
    if choice < 0.35:
        noise = white
    else:
        # Pink-ish (-3 dB/octave) within the telephone band: the line's high-pass removes the rest.
        spectrum = np.fft.rfft(white)
        f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE_HZ)
        spectrum[1:] /= np.sqrt(f[1:] / 100.0)
        spectrum[f < 200.0] = 0.0
        noise = np.fft.irfft(spectrum, n)
        if choice > 0.8:
            t = np.arange(n) / SAMPLE_RATE_HZ
            mains = rng.choice([50.0, 60.0])
            noise = noise / (np.sqrt(np.mean(noise**2)) or 1.0)
            noise += 0.7 * np.sin(2 * np.pi * mains * t) + 0.3 * np.sin(2 * np.pi * 3 * mains * t)
    rms = float(np.sqrt(np.mean(noise**2)))
    return noise / rms if rms > 0 else noise


def _db_to_amplitude(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def _mix(
    rng: np.random.Generator, speech: FloatArray, level_dbfs: float, snr_db: float
) -> npt.NDArray[np.int16]:
    """Scale unit-RMS-while-active speech to `level_dbfs`, add noise `snr_db` below it, clip to int16."""
    full_scale = 32767.0
    signal = speech * _db_to_amplitude(level_dbfs) * full_scale
    noise = background_noise(rng, len(signal)) * _db_to_amplitude(level_dbfs - snr_db) * full_scale
    return np.clip(np.round(signal + noise), -32768, 32767).astype(np.int16)


def _place(track: FloatArray, pos: int, clip: FloatArray, gain: float = 1.0) -> FloatArray:
    """Write `clip` into `track` at sample `pos`, growing the track when needed."""
    end = pos + len(clip)
    if end > len(track):
        track = np.concatenate([track, np.zeros(end - len(track))])
    track[pos:end] += clip * gain
    return track


def _ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE_HZ


def human_answer(
    seed: int,
    *,
    snr_db: float | None = None,
    level_dbfs: float | None = None,
    duration_s: float = 5.0,
    pickup_s: float | None = None,
) -> AudioSample:
    """A person picking up: a short pause, "hello?" (0.4-1.2 s), then silence or a second phrase.

    The pause before "hello?" is 0.1-0.7 s unless `pickup_s` says otherwise. In 40 % of samples
    the person speaks again ("hello? ... who is this?") after 0.8-2.0 s.
    """
    rng = np.random.default_rng(seed)
    snr = rng.uniform(10.0, 35.0) if snr_db is None else snr_db
    level = rng.uniform(-32.0, -14.0) if level_dbfs is None else level_dbfs
    voice = random_voice(rng)
    n_total = int(duration_s * SAMPLE_RATE_HZ)
    track = np.zeros(n_total)

    pickup = rng.uniform(0.1, 0.7) if pickup_s is None else pickup_s
    pos = int(pickup * SAMPLE_RATE_HZ)  # bringing the phone to the ear
    start = pos
    hello_s = rng.uniform(0.4, 1.2)
    if hello_s > 0.7 and rng.random() < 0.5:
        # Two words with a short gap: "yeah, hello?"
        first = rng.uniform(0.2, hello_s - 0.35)
        gap = rng.uniform(0.05, 0.15)
        track = _place(track, pos, voiced_word(rng, voice, first), rng.uniform(0.7, 1.2))
        pos += int((first + gap) * SAMPLE_RATE_HZ)
        hello_s -= first + gap
    word = voiced_word(rng, voice, hello_s, rising=True)
    track = _place(track, pos, word, rng.uniform(0.7, 1.2))
    pos += len(word)
    end = greeting_end = pos
    if rng.random() < 0.4:
        pos += int(rng.uniform(0.8, 2.0) * SAMPLE_RATE_HZ)
        for _ in range(int(rng.integers(1, 4))):
            w = voiced_word(rng, voice, rng.uniform(0.15, 0.45), rising=rng.random() < 0.3)
            if pos + len(w) > n_total:
                break
            track = _place(track, pos, w, rng.uniform(0.6, 1.1))
            pos += len(w) + int(rng.uniform(0.03, 0.15) * SAMPLE_RATE_HZ)
            end = pos
    track = track[:n_total]
    return AudioSample(
        kind="human",
        pcm=_mix(rng, track, level, snr),
        speech_start_ms=_ms(start),
        greeting_end_ms=_ms(min(greeting_end, n_total)),
        speech_end_ms=_ms(min(end, n_total)),
        beep_start_ms=None,
        beep_end_ms=None,
        beep_hz=None,
        snr_db=snr,
        level_dbfs=level,
        seed=seed,
    )


BEEP_FREQUENCIES_HZ = (440.0, 800.0, 850.0, 1000.0, 1400.0, 2000.0)
"""Beep tones common on voicemail systems; `machine_greeting` also draws random ones in 400-2000 Hz."""


def machine_greeting(
    seed: int,
    *,
    snr_db: float | None = None,
    level_dbfs: float | None = None,
    greeting_s: float | None = None,
    max_duration_s: float | None = None,
) -> AudioSample:
    """An answering machine: a pause, 3-15 s of continuous speech, silence, a beep, silence.

    Words are 150-600 ms with 30-200 ms between them; every 2-7 words comes a phrase pause of
    250-600 ms ("Hi, you've reached Sam. [pause] I can't take your call right now...").
    `max_duration_s` cuts the sample short (the beep may then be missing) to save time in tests
    that only need the start.
    """
    rng = np.random.default_rng(seed)
    snr = rng.uniform(10.0, 35.0) if snr_db is None else snr_db
    level = rng.uniform(-32.0, -14.0) if level_dbfs is None else level_dbfs
    greeting = rng.uniform(3.0, 15.0) if greeting_s is None else greeting_s
    limit = None if max_duration_s is None else int(max_duration_s * SAMPLE_RATE_HZ)
    voice = random_voice(rng)
    track = np.zeros(0)

    pos = int(rng.uniform(0.2, 1.2) * SAMPLE_RATE_HZ)
    start = pos
    greeting_end = pos + int(greeting * SAMPLE_RATE_HZ)
    words_to_pause = int(rng.integers(2, 8))
    while pos < greeting_end and (limit is None or pos < limit):
        w = voiced_word(rng, voice, rng.uniform(0.15, 0.6))
        track = _place(track, pos, w, rng.uniform(0.6, 1.1))
        pos += len(w)
        words_to_pause -= 1
        if words_to_pause == 0:
            pos += int(rng.uniform(0.25, 0.6) * SAMPLE_RATE_HZ)
            words_to_pause = int(rng.integers(2, 8))
        else:
            pos += int(rng.uniform(0.03, 0.2) * SAMPLE_RATE_HZ)
    end = len(track)

    beep_hz = float(rng.choice(BEEP_FREQUENCIES_HZ)) if rng.random() < 0.6 else rng.uniform(400.0, 2000.0)
    beep_start = end + int(rng.uniform(0.3, 1.0) * SAMPLE_RATE_HZ)
    beep = tone(beep_hz, rng.uniform(0.15, 1.0)) * _db_to_amplitude(rng.uniform(-6.0, 3.0))
    track = _place(track, beep_start, beep)
    beep_end = beep_start + len(beep)
    track = np.concatenate([track, np.zeros(int(0.6 * SAMPLE_RATE_HZ))])
    if limit is not None and len(track) > limit:
        track = track[:limit]
    has_beep = beep_end <= len(track)
    return AudioSample(
        kind="machine",
        pcm=_mix(rng, track, level, snr),
        speech_start_ms=_ms(start),
        greeting_end_ms=_ms(min(end, len(track))),
        speech_end_ms=_ms(min(end, len(track))),
        beep_start_ms=_ms(beep_start) if has_beep else None,
        beep_end_ms=_ms(beep_end) if has_beep else None,
        beep_hz=beep_hz if has_beep else None,
        snr_db=snr,
        level_dbfs=level,
        seed=seed,
    )


def pcm16_bytes(pcm: npt.NDArray[np.int16]) -> bytes:
    """Little-endian 16-bit PCM bytes, the byte order pjsua2 frames and WAV files use."""
    return pcm.astype("<i2").tobytes()


def pcm_frames(pcm: npt.NDArray[np.int16], frame_samples: int = FRAME_SAMPLES) -> Iterator[bytes]:
    """Split PCM into whole frames; a trailing partial frame is dropped, as a media port would."""
    data = pcm16_bytes(pcm)
    step = frame_samples * 2
    for offset in range(0, len(data) - step + 1, step):
        yield data[offset : offset + step]


def write_wav(path: Path, pcm: npt.NDArray[np.int16], sample_rate_hz: int = SAMPLE_RATE_HZ) -> Path:
    """Write mono 16-bit PCM to a WAV file (the format the SIP workers play)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate_hz)
        out.writeframes(pcm16_bytes(pcm))
    return path
