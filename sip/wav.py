"""WAV files the SIP workers play: read, validate, measure.

pjsua2's `AudioMediaPlayer` reads RIFF/WAVE files itself, but it accepts some formats it then plays
badly (wrong speed, noise) and rejects others only when the call is already up. Campaign audio is
therefore checked here when a campaign is loaded: plain PCM (format tag 1), 16-bit, mono, 8000 or
16000 Hz, with a complete data chunk. Everything else gets an `AudioFormatError` naming the file and
every problem found, so one fix-and-retry cycle is enough.

Pure Python (no pjsua2), so the daemon can validate configuration without a SIP worker.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from dialer.errors import TelephonyError

SUPPORTED_SAMPLE_RATES_HZ = (8000, 16000)
"""Rates pjmedia's conference bridge resamples cleanly to the 8 kHz G.711 call clock."""

_FORMAT_PCM = 1
_FORMAT_NAMES = {
    0x0003: "IEEE float",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MP3",
    0xFFFE: "WAVE_FORMAT_EXTENSIBLE",
}
_RIFF_HEADER = struct.Struct("<4sI4s")
_CHUNK_HEADER = struct.Struct("<4sI")
_FMT_PCM = struct.Struct("<HHIIHH")


class AudioFormatError(TelephonyError):
    """An audio file or frame cannot be used as is: wrong container, encoding, layout or length.

    `path` is the offending file (None for in-memory audio); `problems` lists what is wrong, each as a
    short phrase such as "stereo, expected mono".
    """

    def __init__(self, path: Path | None, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        where = str(path) if path is not None else "audio"
        super().__init__(f"{where}: " + "; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class WavInfo:
    """What a valid playback WAV holds."""

    path: Path
    sample_rate_hz: int
    channels: int
    bits_per_sample: int
    sample_count: int  # per channel
    data_offset: int  # byte offset of the PCM data in the file
    data_bytes: int

    @property
    def duration_s(self) -> float:
        """Playing time in seconds."""
        return self.sample_count / self.sample_rate_hz


def _format_name(tag: int) -> str:
    name = _FORMAT_NAMES.get(tag)
    return f"format {tag} ({name})" if name else f"format {tag}"


def _read_bytes(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise AudioFormatError(file, ["file not found"]) from None
    except IsADirectoryError:
        raise AudioFormatError(file, ["is a directory, expected a WAV file"]) from None
    except OSError as exc:
        raise AudioFormatError(file, [f"cannot read: {exc.strerror or exc}"]) from None


def read_wav_info(path: str | Path) -> WavInfo:
    """Parse and validate the header of the WAV file at `path`.

    Raises `AudioFormatError` listing every problem: not a RIFF/WAVE file, missing or short `fmt `
    or `data` chunk, compressed or float encoding, not 16-bit, not mono, unsupported rate, data chunk
    truncated (the header promises more bytes than the file has), or no samples at all.
    """
    file = Path(path)
    blob = _read_bytes(file)
    return parse_wav(blob, file)


def parse_wav(blob: bytes, path: Path) -> WavInfo:
    """Validate WAV bytes already in memory; `path` is used in messages and kept in the result."""
    if len(blob) < _RIFF_HEADER.size:
        raise AudioFormatError(path, [f"not a WAV file ({len(blob)} bytes, too short for a RIFF header)"])
    riff, _riff_size, wave_id = _RIFF_HEADER.unpack_from(blob, 0)
    if riff == b"RIFX":
        raise AudioFormatError(path, ["big-endian RIFX file, expected little-endian RIFF/WAVE"])
    if riff != b"RIFF" or wave_id != b"WAVE":
        raise AudioFormatError(path, ["not a WAV file (no RIFF/WAVE header)"])

    fmt: bytes | None = None
    data_offset: int | None = None
    data_bytes = 0
    truncated_by = 0
    offset = _RIFF_HEADER.size
    while offset + _CHUNK_HEADER.size <= len(blob):
        chunk_id, size = _CHUNK_HEADER.unpack_from(blob, offset)
        body = offset + _CHUNK_HEADER.size
        if chunk_id == b"fmt ":
            fmt = blob[body : body + size]
        elif chunk_id == b"data":
            data_offset = body
            available = len(blob) - body
            data_bytes = min(size, available)
            truncated_by = size - data_bytes
            break
        offset = body + size + (size & 1)  # chunks are word-aligned

    problems: list[str] = []
    if fmt is None:
        raise AudioFormatError(path, ["no 'fmt ' chunk before the data, cannot tell the encoding"])
    if len(fmt) < _FMT_PCM.size:
        raise AudioFormatError(path, [f"'fmt ' chunk is {len(fmt)} bytes, expected at least {_FMT_PCM.size}"])
    tag, channels, rate, _byte_rate, block_align, bits = _FMT_PCM.unpack_from(fmt, 0)
    if tag != _FORMAT_PCM:
        problems.append(f"{_format_name(tag)}, expected 16-bit PCM (format 1)")
    elif bits != 16:
        problems.append(f"{bits}-bit, expected 16-bit PCM")
    if channels != 1:
        layout = {2: "stereo"}.get(channels, f"{channels} channels")
        problems.append(f"{layout}, expected mono")
    if rate not in SUPPORTED_SAMPLE_RATES_HZ:
        expected = " or ".join(str(r) for r in SUPPORTED_SAMPLE_RATES_HZ)
        problems.append(f"{rate} Hz, expected {expected} Hz")
    if data_offset is None:
        problems.append("no 'data' chunk")
    elif truncated_by > 0:
        declared = data_bytes + truncated_by
        problems.append(f"truncated: data chunk declares {declared} bytes but only {data_bytes} are present")
    elif data_bytes == 0:
        problems.append("no samples (empty data chunk)")
    if not problems and block_align != channels * bits // 8:
        problems.append(f"block align {block_align}, expected {channels * bits // 8} for 16-bit mono")
    if not problems and data_bytes % 2:
        problems.append(f"data chunk holds {data_bytes} bytes, not a whole number of 16-bit samples")
    if problems:
        raise AudioFormatError(path, problems)
    assert data_offset is not None  # for mypy: a missing chunk was reported above
    return WavInfo(
        path=path,
        sample_rate_hz=rate,
        channels=channels,
        bits_per_sample=bits,
        sample_count=data_bytes // 2,
        data_offset=data_offset,
        data_bytes=data_bytes,
    )


def read_wav_pcm(path: str | Path) -> tuple[WavInfo, bytes]:
    """Validate the WAV at `path` and return its header facts and its little-endian 16-bit samples."""
    file = Path(path)
    blob = _read_bytes(file)
    info = parse_wav(blob, file)
    return info, blob[info.data_offset : info.data_offset + info.data_bytes]


def wav_duration_s(path: str | Path) -> float:
    """Playing time of a valid playback WAV, in seconds (raises `AudioFormatError` if invalid)."""
    return read_wav_info(path).duration_s
