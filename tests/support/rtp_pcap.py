"""Build RTP/G.711 pcap files from PCM so a sipp peer can play our generated audio.

sipp's `play_pcap_audio` replays the RTP payloads of a pcap (Ethernet link type) to the media
address it learnt from SDP, paced by the capture timestamps. Only the RTP header and payload matter
to it; addresses and checksums in the capture are placeholders.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

PCMU_PT = 0
_SAMPLES_PER_PACKET = 160  # 20 ms at 8 kHz
_BIAS = 0x84
_CLIP = 32635


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """G.711 mu-law encoding of 16-bit linear PCM (ITU-T G.711, the usual segment algorithm)."""
    x = pcm.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0x00)
    mag = np.minimum(np.abs(x), _CLIP) + _BIAS
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return bytes(code.astype(np.uint8).tobytes())


def write_rtp_pcap(path: Path, pcm: npt.NDArray[np.int16], *, ssrc: int = 0x1234ABCD) -> Path:
    """Write 8 kHz PCM as a pcap of 20 ms PCMU RTP packets; a trailing partial packet is dropped."""
    payload = ulaw_encode(pcm)
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i in range(len(payload) // _SAMPLES_PER_PACKET):
        chunk = payload[i * _SAMPLES_PER_PACKET : (i + 1) * _SAMPLES_PER_PACKET]
        rtp = struct.pack("!BBHII", 0x80, PCMU_PT, i & 0xFFFF, i * _SAMPLES_PER_PACKET, ssrc) + chunk
        udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = (
            struct.pack(
                "!BBHHHBBH4s4s",
                0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]),
            )
            + udp
        )
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        t_us = i * 20_000
        out += struct.pack("<IIII", t_us // 1_000_000, t_us % 1_000_000, len(frame), len(frame)) + frame
    path.write_bytes(bytes(out))
    return path
