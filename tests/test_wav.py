"""Validation of the WAV files the SIP workers play (sip/wav.py), on files written in tmp dirs."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from dialer.errors import DialerError, TelephonyError
from sip.wav import AudioFormatError, WavInfo, read_wav_info, read_wav_pcm, wav_duration_s


def write(path: Path, *, rate: int = 8000, channels: int = 1, width: int = 2, frames: int = 8000) -> Path:
    """A WAV written by the standard library, with a ramp as content."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(bytes(i % 251 for i in range(frames * channels * width)))
    return path


def riff(*chunks: tuple[bytes, bytes]) -> bytes:
    """A RIFF/WAVE file built chunk by chunk (for encodings `wave` cannot write)."""
    body = b"WAVE" + b"".join(
        cid + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1) for cid, data in chunks
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def fmt(tag: int = 1, channels: int = 1, rate: int = 8000, bits: int = 16) -> tuple[bytes, bytes]:
    align = channels * bits // 8
    return b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


def problems_of(path: Path) -> str:
    with pytest.raises(AudioFormatError) as excinfo:
        read_wav_info(path)
    assert excinfo.value.path == path
    return str(excinfo.value)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_accepts_16_bit_mono_at_8_and_16_khz(tmp_path: Path, rate: int) -> None:
    path = write(tmp_path / "ok.wav", rate=rate, frames=rate * 3 // 2)
    info = read_wav_info(path)
    assert info == WavInfo(
        path=path,
        sample_rate_hz=rate,
        channels=1,
        bits_per_sample=16,
        sample_count=rate * 3 // 2,
        data_offset=44,
        data_bytes=rate * 3,
    )
    assert info.duration_s == pytest.approx(1.5)
    assert wav_duration_s(path) == pytest.approx(1.5)
    info_again, pcm = read_wav_pcm(str(path))
    assert info_again == info
    with wave.open(str(path), "rb") as reference:
        assert pcm == reference.readframes(reference.getnframes())


def test_skips_metadata_chunks_before_the_data(tmp_path: Path) -> None:
    samples = np.arange(-400, 400, dtype="<i2").tobytes()
    path = tmp_path / "tagged.wav"
    path.write_bytes(riff(fmt(), (b"LIST", b"INFOISFT\x05\0\0\0sox\0\0"), (b"data", samples)))
    info, pcm = read_wav_pcm(path)
    assert pcm == samples
    assert info.sample_count == 800
    assert info.duration_s == pytest.approx(0.1)


def test_rejects_stereo(tmp_path: Path) -> None:
    path = write(tmp_path / "stereo.wav", channels=2)
    assert problems_of(path) == f"{path}: stereo, expected mono"


def test_rejects_8_bit(tmp_path: Path) -> None:
    path = write(tmp_path / "8bit.wav", width=1)
    assert problems_of(path) == f"{path}: 8-bit, expected 16-bit PCM"


def test_rejects_24_bit(tmp_path: Path) -> None:
    path = write(tmp_path / "24bit.wav", width=3)
    assert problems_of(path) == f"{path}: 24-bit, expected 16-bit PCM"


def test_rejects_an_unsupported_rate(tmp_path: Path) -> None:
    path = write(tmp_path / "cd.wav", rate=44100)
    assert problems_of(path) == f"{path}: 44100 Hz, expected 8000 or 16000 Hz"


def test_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = write(tmp_path / "music.wav", rate=44100, channels=2, width=3, frames=100)
    assert (
        problems_of(path)
        == f"{path}: 24-bit, expected 16-bit PCM; stereo, expected mono; 44100 Hz, expected 8000 or 16000 Hz"
    )


def test_rejects_a_truncated_file(tmp_path: Path) -> None:
    path = write(tmp_path / "cut.wav", frames=1000)
    path.write_bytes(path.read_bytes()[:-300])
    assert problems_of(path) == f"{path}: truncated: data chunk declares 2000 bytes but only 1700 are present"


def test_rejects_a_file_cut_inside_the_header(tmp_path: Path) -> None:
    path = write(tmp_path / "stub.wav")
    path.write_bytes(path.read_bytes()[:30])
    assert problems_of(path) == f"{path}: 'fmt ' chunk is 10 bytes, expected at least 16"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"ID3\x04\0\0\0\0\0\0 this is an mp3", "not a WAV file (no RIFF/WAVE header)"),
        (b"RIFF\x10\0\0\0AVI LIST", "not a WAV file (no RIFF/WAVE header)"),
        (b"hello", "not a WAV file (5 bytes, too short for a RIFF header)"),
        (b"", "not a WAV file (0 bytes, too short for a RIFF header)"),
        (b"RIFX\x24\0\0\0WAVE", "big-endian RIFX file, expected little-endian RIFF/WAVE"),
    ],
)
def test_rejects_what_is_not_a_wav_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "message.wav"
    path.write_bytes(content)
    assert problems_of(path) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("tag", "bits", "name"),
    [
        (3, 32, "IEEE float"),
        (7, 8, "mu-law"),
        (6, 8, "A-law"),
        (0xFFFE, 16, "WAVE_FORMAT_EXTENSIBLE"),
        (2, 4, None),
    ],
)
def test_rejects_encodings_other_than_pcm(tmp_path: Path, tag: int, bits: int, name: str | None) -> None:
    path = tmp_path / "coded.wav"
    path.write_bytes(riff(fmt(tag=tag, bits=bits), (b"data", b"\0\0" * 100)))
    described = f"format {tag} ({name})" if name else f"format {tag}"
    assert problems_of(path) == f"{path}: {described}, expected 16-bit PCM (format 1)"


def test_rejects_missing_chunks_and_empty_data(tmp_path: Path) -> None:
    no_fmt = tmp_path / "no_fmt.wav"
    no_fmt.write_bytes(riff((b"data", b"\0\0" * 10)))
    assert problems_of(no_fmt) == f"{no_fmt}: no 'fmt ' chunk before the data, cannot tell the encoding"
    no_data = tmp_path / "no_data.wav"
    no_data.write_bytes(riff(fmt()))
    assert problems_of(no_data) == f"{no_data}: no 'data' chunk"
    empty = write(tmp_path / "empty.wav", frames=0)
    assert problems_of(empty) == f"{empty}: no samples (empty data chunk)"
    odd = tmp_path / "odd.wav"
    odd.write_bytes(riff(fmt(), (b"data", b"\0" * 11)))
    assert problems_of(odd) == f"{odd}: data chunk holds 11 bytes, not a whole number of 16-bit samples"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.wav") == f"{tmp_path / 'nope.wav'}: file not found"
    assert problems_of(tmp_path) == f"{tmp_path}: is a directory, expected a WAV file"
    with pytest.raises(AudioFormatError, match="file not found"):
        wav_duration_s(tmp_path / "nope.wav")
    with pytest.raises(AudioFormatError, match="file not found"):
        read_wav_pcm(tmp_path / "nope.wav")


def test_error_belongs_to_the_dialer_hierarchy(tmp_path: Path) -> None:
    path = write(tmp_path / "stereo.wav", channels=2, rate=11025)
    with pytest.raises(TelephonyError) as excinfo:
        read_wav_info(path)
    error = excinfo.value
    assert isinstance(error, DialerError)
    assert isinstance(error, AudioFormatError)
    assert error.problems == ["stereo, expected mono", "11025 Hz, expected 8000 or 16000 Hz"]


CAMPAIGN_AUDIO = Path(__file__).resolve().parents[1] / "config" / "audio"


@pytest.mark.parametrize("name", ["safe_harbor", "robocall", "machine_message"])
def test_shipped_campaign_audio_is_playable(name: str) -> None:
    """The prompts in config/audio are 8 kHz mono 16-bit and small enough to keep in git."""
    path = CAMPAIGN_AUDIO / f"{name}.wav"
    info = read_wav_info(path)
    assert info.sample_rate_hz == 8000
    assert 5.0 <= info.duration_s <= 19.0
    assert path.stat().st_size <= 300_000
    assert (CAMPAIGN_AUDIO / f"{name}.txt").read_text().strip() != ""
