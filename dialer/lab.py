"""Local servers for labs, demos, tests and benchmarks: on 127.0.0.1, on a free port, in a directory of
our own, always stopped by whoever started them."""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import time
import wave
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0,
                 sig: int | None = signal.SIGTERM) -> int:
    """Send `sig` to `proc` if it still runs (None: just wait for it), SIGKILL it after `timeout_s`.

    Returns its exit code.
    """
    if proc.poll() is None:
        if sig is not None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that is free right now (TCP by default, UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A real redis-server on loopback. `stop()`/`start()` restart it on the same port and dir."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed: `make run`/`make test` install it as root")
        self.exe = exe
        # Absolute: redis-server changes into --dir before opening --logfile, so a relative path
        # (the demo's default run/demo/redis) would name a log file that cannot be created.
        self.dir = directory.resolve()
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        args = [
            self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--logfile", str(self.dir / "redis.log"), "--protected-mode", "yes",
        ]
        # A session of its own: Ctrl-C in a terminal signals the whole foreground process group, and
        # the server must outlive the demo's drain and CDR export; whoever started it stops it.
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"redis-server exited with {code}; see {self.dir}/redis.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING in time")

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self.proc is not None:
            stop_process(self.proc, 10.0)
        self.proc = None


# --- A SIP lab on loopback: a sipp "carrier", auto-answering agent phones, and the audio they play ---

LAB_SCENARIOS = Path(__file__).resolve().parent.parent / "config" / "lab"
"""sipp scenarios of the lab carrier and agent phones (config/lab/)."""
AUDIO_DIR = Path(__file__).resolve().parent.parent / "config" / "audio"

_RATE_HZ = 8000
_PACKET_SAMPLES = 160  # 20 ms of 8 kHz G.711
_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """G.711 mu-law encoding of 16-bit linear PCM (ITU-T G.711, the usual segment algorithm)."""
    x = pcm.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0x00)
    mag = np.minimum(np.abs(x), _ULAW_CLIP) + _ULAW_BIAS
    exponent = np.clip(np.floor(np.log2(mag)).astype(np.int32) - 7, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return bytes(code.astype(np.uint8).tobytes())


def write_rtp_pcap(path: Path, pcm: npt.NDArray[np.int16], *, ssrc: int = 0x1234ABCD) -> Path:
    """Write 8 kHz PCM as a pcap of 20 ms PCMU RTP packets, which sipp's `play_pcap_audio` replays.

    sipp only reads the RTP header and payload and paces by the capture timestamps: addresses and
    checksums are placeholders. A trailing partial packet is dropped.
    """
    payload = ulaw_encode(pcm)
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i in range(len(payload) // _PACKET_SAMPLES):
        chunk = payload[i * _PACKET_SAMPLES:(i + 1) * _PACKET_SAMPLES]
        rtp = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, i * _PACKET_SAMPLES, ssrc) + chunk
        udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])) + udp
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        t_us = i * 20_000
        out += struct.pack("<IIII", t_us // 1_000_000, t_us % 1_000_000, len(frame), len(frame)) + frame
    path.write_bytes(bytes(out))
    return path


def read_wav_8k(path: Path) -> npt.NDArray[np.int16]:
    """Samples of an 8 kHz mono 16-bit WAV (the shipped campaign audio)."""
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (_RATE_HZ, 1, 2):
            raise ValueError(f"{path}: expected 8000 Hz mono 16-bit PCM, got {w.getframerate()} Hz, "
                             f"{w.getnchannels()} channel(s), {8 * w.getsampwidth()}-bit")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def _silence(seconds: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Line noise at about -65 dBFS: real lines are never digitally silent."""
    return rng.normal(0.0, 18.0, int(seconds * _RATE_HZ))


def _tone(freq_hz: float, seconds: float, amplitude: float) -> npt.NDArray[np.float64]:
    t = np.arange(int(seconds * _RATE_HZ)) / _RATE_HZ
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)
    return amplitude * ramp * np.sin(2 * np.pi * freq_hz * t)


def _speech(wav: Path, start_s: float, seconds: float) -> npt.NDArray[np.float64]:
    pcm = read_wav_8k(wav).astype(np.float64)
    a = int(start_s * _RATE_HZ)
    return 0.5 * pcm[a:a + int(seconds * _RATE_HZ)]


def human_answer_pcm(seed: int = 1) -> npt.NDArray[np.int16]:
    """A person picking up: 0.15 s, a short "hello"-like phrase (0.6 s of speech), then line noise."""
    rng = np.random.default_rng(seed)
    parts = [_silence(0.15, rng), _speech(AUDIO_DIR / "safe_harbor.wav", 0.1, 0.6), _silence(8.0, rng)]
    return np.clip(np.concatenate(parts), -32768, 32767).astype(np.int16)


def machine_greeting_pcm(seed: int = 2) -> npt.NDArray[np.int16]:
    """A voicemail greeting: 5 s of speech, a pause, a 1 kHz beep, then line noise."""
    rng = np.random.default_rng(seed)
    parts = [_silence(0.3, rng), _speech(AUDIO_DIR / "machine_message.wav", 0.0, 5.0), _silence(0.4, rng),
             _tone(1000.0, 0.6, 8000.0), _silence(3.0, rng)]
    return np.clip(np.concatenate(parts), -32768, 32767).astype(np.int16)


def write_lab_audio(directory: Path) -> None:
    """The pcaps the lab carrier plays: human.pcap and machine.pcap (sipp resolves them in its cwd)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_rtp_pcap(directory / "human.pcap", human_answer_pcm())
    write_rtp_pcap(directory / "machine.pcap", machine_greeting_pcm())


def udp_port_taken(port: int) -> bool:
    """True when UDP `port` on 127.0.0.1 is bound by someone."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def free_media_port() -> int:
    """An even UDP port with the next three free too (sipp uses RTP/RTCP pairs from -mp)."""
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM)
        port -= port % 2
        if port > 1024 and not any(udp_port_taken(port + i) for i in range(4)):
            return port
    raise RuntimeError("no free UDP port pair for sipp media")


MEDIA_PORT_ATTEMPTS = 3


class _MediaPortTaken(Exception):
    """sipp could not bind its RTP ports: another process took one since they were chosen."""


class SippPeer:
    """A sipp UAS on 127.0.0.1 playing `scenario` (a file, or the name of a built-in scenario).

    `calls` 0 runs until stopped; otherwise sipp exits after that many calls (or 60 s idle). Every
    message it sends and receives goes to `message_file` (sipp -trace_msg, unless `trace_messages`
    is off for load) and its `<log>` lines to `log_file`, so a test can check the SIP traffic itself.
    `unique_files` puts the port in the trace file names, for several peers of one scenario in one
    directory.
    """

    def __init__(self, scenario: Path | str, workdir: Path, *, rtp_echo: bool = False, calls: int = 0,
                 keys: Mapping[str, str] | None = None, trace_messages: bool = True,
                 unique_files: bool = False) -> None:
        exe = shutil.which("sipp")
        if exe is None:
            raise RuntimeError("sipp is not installed: `make run`/`make test` install it (apt sip-tester)")
        self.exe = exe
        self.scenario = Path(scenario)
        self.builtin = isinstance(scenario, str) and not scenario.endswith(".xml")
        self.workdir = workdir.resolve()  # sipp runs in it: its trace paths must not be relative
        self.rtp_echo = rtp_echo
        self.calls = calls
        self.keys = dict(keys or {})
        self.trace_messages = trace_messages
        self.port = free_port(socket.SOCK_DGRAM)
        self.media_port = free_media_port()
        stem = f"{self.scenario.stem}_{self.port}" if unique_files else self.scenario.stem
        self.message_file = self.workdir / f"{stem}_messages.log"
        self.log_file = self.workdir / f"{stem}_logs.log"
        self.error_file = self.workdir / f"{stem}_errors.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """host:port of this peer, for a trunk or agent URI."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 5.0) -> None:
        """Start sipp and wait until it has bound its SIP port.

        The media ports were free when this peer was made, but another process (a pjsua2 worker
        opening its RTP ports, say) can take one before sipp binds it: then sipp is started again
        on other media ports, up to `MEDIA_PORT_ATTEMPTS` times.
        """
        for attempt in range(1, MEDIA_PORT_ATTEMPTS + 1):
            try:
                self._start(timeout_s)
                return
            except _MediaPortTaken:
                if attempt == MEDIA_PORT_ATTEMPTS:
                    raise RuntimeError(f"sipp {self.scenario.name}: its media ports were taken "
                                       f"{MEDIA_PORT_ATTEMPTS} times: {self.errors()[-2000:]}") from None
                self.error_file.unlink(missing_ok=True)
                self.media_port = free_media_port()

    def _start(self, timeout_s: float) -> None:
        which = ["-sn", self.scenario.name] if self.builtin else ["-sf", str(self.scenario)]
        limits = ["-m", str(self.calls), "-timeout", "60s", "-timeout_error"] if self.calls else []
        args = [self.exe, *which, "-i", "127.0.0.1", "-p", str(self.port), "-mp", str(self.media_port),
                *limits,
                "-trace_logs", "-log_file", str(self.log_file),
                "-trace_err", "-error_file", str(self.error_file),
                *(["-trace_msg", "-message_file", str(self.message_file)] if self.trace_messages else [])]
        for key, value in self.keys.items():
            args += ["-key", key, value]
        if self.rtp_echo:
            args.append("-rtp_echo")
        # Own session, as for redis-server: Ctrl-C must not end the calls under the dialer's drain.
        self.proc = subprocess.Popen(args, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not udp_port_taken(self.port):
            if self.proc.poll() is not None:
                errors = self.errors()[-2000:]
                if "Unable to bind audio RTP socket" in errors or "Unable to bind video RTP socket" in errors:
                    raise _MediaPortTaken
                raise RuntimeError(f"sipp {self.scenario.name} exited with {self.proc.returncode}: {errors}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sipp {self.scenario.name} did not bind its port in time")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop sipp (idempotent); it flushes its traces on SIGTERM."""
        if self.proc is not None:
            stop_process(self.proc, 5.0)

    def errors(self) -> str:
        """What sipp wrote to its error trace (unexpected messages, failed checks)."""
        return self.error_file.read_text(errors="replace") if self.error_file.exists() else ""

    def messages(self) -> str:
        """The message trace so far."""
        return self.message_file.read_text(errors="replace") if self.message_file.exists() else ""


class SipLab:
    """The lab carrier and the agent phones, started together, stopped together."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        write_lab_audio(workdir)
        self.carrier = SippPeer(LAB_SCENARIOS / "carrier.xml", workdir)
        self.agents = SippPeer(LAB_SCENARIOS / "agent.xml", workdir, rtp_echo=True)

    def start(self) -> None:
        """Start both peers (stopping the first if the second fails)."""
        self.carrier.start()
        try:
            self.agents.start()
        except BaseException:
            self.carrier.stop()
            raise

    def stop(self) -> None:
        """Stop both peers (idempotent)."""
        self.agents.stop()
        self.carrier.stop()

    @property
    def trunk_uri(self) -> str:
        """The `[sip] trunk_uri` that sends calls to the lab carrier."""
        return f"sip:{self.carrier.host}"

    def agent_uri(self, agent_id: str) -> str:
        """The SIP URI of an agent's (auto-answering) phone."""
        return f"sip:{agent_id}@{self.agents.host}"
