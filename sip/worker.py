"""One SIP worker process: one pjsua2 Endpoint (at most 4 legs), driven over the message protocol.

Run as `python -m sip.worker --fd N`: fd N is this end of a socketpair to the pool. The first message
is `Configure`; the worker answers `Ready` once its Endpoint is up, then serves commands until
`Shutdown`, SIGTERM, or the pool's end of the socket closes.

Threading (see PJSUA2_NOTES.md): pjsua2 runs with `threadCnt=0` and `mainThreadOnly=True`; this
process's main thread created the library and is the only one that calls into it, polling
`libHandleEvents`. SIP callbacks therefore run in the main thread. Media callbacks (received audio
frames, end of playback) run in pjmedia's clock thread: they only copy plain data into a queue that
the main thread drains. Every callback body is guarded: an exception inside one would be swallowed
by SWIG and could keep a Call alive until `libDestroy` aborts the process.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import queue
import select
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Literal

import pjsua2 as pj

from dialer.outcomes import AnswerKind, Outcome
from dialer.telephony import MIN_RING_TIMEOUT_S
from sip import protocol as p
from sip.amd import AmdDetector
from sip.sdp import offer_telephone_event_as_101
from sip.status import failure_outcome, q850_cause

RETRY_SLOT_S = 0.05
"""After a DISCONNECTED pjsua frees the slot a little later: retry a dial this often..."""
RETRY_SLOT_MAX_S = 3.0
"""...for at most this long, then report the call failed."""
HANGUP_GRACE_S = 5.0
"""A leg we hung up that has not reached DISCONNECTED after this long gets its terminal event anyway."""
BEEP_WAIT_MAX_S = 8.0
"""A message for a machine waits for the beep at most this long, then plays anyway."""
SHUTDOWN_WAIT_S = 3.0

_frames: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
"""Media-thread → main-thread hand-off: ("frame", key, bytes) and ("eof", key)."""


@dataclass
class Leg:
    """One pjsua call (a customer leg or an agent leg) and what the worker knows about it.

    `key` is the engine's call id for customer legs and `<call id>#agent` for agent legs.
    """

    key: str
    call_id: str
    is_agent: bool
    call: Any = None  # _Call; Any because pjsua2 is untyped
    dial: p.Dial | None = None
    agent_id: str = ""
    started_at: float = 0.0
    ring_deadline: float = 0.0
    response_deadline: float = 0.0
    peer_responded: bool = False
    ringing_sent: bool = False
    ring_timed_out: bool = False
    confirmed: bool = False
    answered_at: float = 0.0
    answered_mono: float = 0.0
    answer_sent: bool = False
    kind: AnswerKind = AnswerKind.UNKNOWN
    terminal_sent: bool = False
    hangup_at: float = 0.0
    hangup_local: bool = False
    media_ready: bool = False
    detector: AmdDetector | None = None
    heard_audio: bool = False
    port: Any = None
    player: Any = None
    pending_play: str | None = None
    pending_play_since: float = 0.0
    agent_leg: Leg | None = None
    bridged: bool = False
    transferring: bool = False
    agent_deadline: float = 0.0
    q850: int | None = None


class _Call(pj.Call):  # type: ignore[misc]  # pjsua2 is untyped
    """A pjsua2 Call forwarding every callback, guarded, to the worker."""

    def __init__(self, worker: Worker, account: Any, leg: Leg) -> None:
        super().__init__(account)
        self._worker = worker
        self._leg = leg

    def onCallState(self, prm: Any) -> None:
        self._worker.guard("on_call_state", self._worker.on_call_state, self._leg, prm)

    def onCallTsxState(self, prm: Any) -> None:
        self._worker.guard("on_call_tsx_state", self._worker.on_call_tsx_state, self._leg, prm)

    def onCallMediaState(self, prm: Any) -> None:
        self._worker.guard("on_call_media_state", self._worker.on_call_media_state, self._leg)

    def onDtmfDigit(self, prm: Any) -> None:
        self._worker.guard("on_dtmf_digit", self._worker.on_dtmf, self._leg, prm.digit)

    def onCallTransferStatus(self, prm: Any) -> None:
        self._worker.guard("on_call_transfer_status", self._worker.on_transfer_status, self._leg, prm)

    def onCallSdpCreated(self, prm: Any) -> None:
        self._worker.guard("on_call_sdp_created", _rewrite_offer, prm)


def _beep_over(detector: AmdDetector) -> bool:
    beep = detector.beep
    return beep is not None and beep.end_ms is not None


def _rewrite_offer(prm: Any) -> None:
    # Only our own offers: in an answer the payload type must mirror the peer's offer.
    if prm.remSdp.wholeSdp:
        return
    new = offer_telephone_event_as_101(prm.sdp.wholeSdp)
    if new != prm.sdp.wholeSdp:
        prm.sdp.wholeSdp = new


class _FramePort(pj.AudioMediaPort):  # type: ignore[misc]
    """Receives the callee's audio (20 ms, 8 kHz, 16-bit) in pjmedia's clock thread."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self._key = key

    def onFrameReceived(self, frame: Any) -> None:
        try:
            if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO:
                _frames.put(("frame", (self._key, bytes(frame.buf))))
        except Exception:  # must never raise into pjmedia
            _frames.put(("error", (self._key, traceback.format_exc(limit=3))))


class _Player(pj.AudioMediaPlayer):  # type: ignore[misc]
    """A WAV player that reports its end of file through the queue (pjmedia thread)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self._key = key

    def onEof2(self) -> None:
        try:
            _frames.put(("eof", (self._key, None)))
        except Exception:
            pass


class _StderrLog(pj.LogWriter):  # type: ignore[misc]
    """pjlib log lines go to stderr: stdout is never ours to write on."""

    def write(self, entry: Any) -> None:
        try:
            sys.stderr.write(entry.msg if entry.msg.endswith("\n") else entry.msg + "\n")
        except Exception:
            pass


class Worker:
    """The Endpoint, its calls and the command loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.cfg: p.Configure | None = None
        self.ep: Any = None
        self.account: Any = None
        self.log_writer: Any = None
        self.legs: dict[str, Leg] = {}
        self.dead: list[Leg] = []
        self.pending: collections.deque[tuple[p.Dial, float]] = collections.deque()
        self.next_attempt = 0.0
        self.stopping = False
        self.port_seq = 0
        self.eof = False

    # -- plumbing --------------------------------------------------------------------------------

    def send(self, msg: p._Msg) -> None:
        """Write one message to the pool (main thread only); once the pool is gone, drop it.

        A dead pool must not make a callback or the shutdown sequence raise: that could leave a
        Call alive at libDestroy, which aborts.
        """
        if self.eof:
            return
        try:
            self.sock.sendall(p.encode(msg))
        except OSError:
            self.eof = True  # the main loop sees it and shuts down

    def log(self, level: Literal["debug", "info", "warning", "error"], event: str, detail: str = "") -> None:
        self.send(p.Log(level=level, event=event, detail=detail[-2000:]))

    def guard(self, name: str, fn: Any, *args: Any) -> None:
        """Run a callback body; report, never propagate, an exception."""
        try:
            fn(*args)
        except Exception:  # SWIG would swallow it and may keep the Call alive
            self.log("error", "worker_callback_failed", f"{name}: {traceback.format_exc(limit=5)}")

    def read_commands(self, timeout: float) -> list[bytes]:
        """Lines available on the socket within `timeout` seconds."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return []
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
            return []
        self.buf += chunk
        lines = self.buf.split(b"\n")
        self.buf = lines.pop()
        if len(self.buf) > p.MAX_LINE_BYTES:
            raise p.ProtocolError("command line too long")
        return [line for line in lines if line.strip()]

    # -- set-up ----------------------------------------------------------------------------------

    def configure(self, cfg: p.Configure) -> None:
        """Create and start the Endpoint as `cfg` says."""
        self.cfg = cfg
        ep = pj.Endpoint()
        ep.libCreate()
        ep_cfg = pj.EpConfig()
        ep_cfg.uaConfig.threadCnt = 0
        ep_cfg.uaConfig.mainThreadOnly = True
        ep_cfg.uaConfig.maxCalls = 4
        ep_cfg.uaConfig.userAgent = "dialer-sip-worker"
        self.log_writer = _StderrLog()
        ep_cfg.logConfig.writer = self.log_writer
        ep_cfg.logConfig.level = cfg.log_level
        ep_cfg.logConfig.consoleLevel = cfg.log_level
        ep_cfg.medConfig.clockRate = 8000
        ep_cfg.medConfig.sndClockRate = 8000
        ep_cfg.medConfig.channelCount = 1
        ep_cfg.medConfig.ecTailLen = 0
        ep_cfg.medConfig.noVad = True
        # The media endpoint shares the SIP ioqueue; a media worker thread would poll it too and run
        # SIP and RTP events concurrently with our thread. With none, only libHandleEvents polls.
        ep_cfg.medConfig.threadCnt = 0
        ep.libInit(ep_cfg)
        tcfg = pj.TransportConfig()
        tcfg.port = cfg.sip_port
        if cfg.bind_address:
            tcfg.boundAddress = cfg.bind_address
            tcfg.publicAddress = cfg.bind_address
        transport = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        sip_port = int(ep.transportGetInfo(transport).localName.rsplit(":", 1)[1])
        ep.libStart()
        ep.audDevManager().setNullDev()
        for codec in ep.codecEnum2():
            ep.codecSetPriority(codec.codecId, 0)
        ep.codecSetPriority("PCMU/8000/1", 255)
        ep.codecSetPriority("PCMA/8000/1", 254)
        acfg = pj.AccountConfig()
        acfg.idUri = cfg.account_uri
        acfg.regConfig.registerOnAdd = False
        if cfg.outbound_proxy:
            acfg.sipConfig.proxies.append(cfg.outbound_proxy)
        if cfg.username is not None and cfg.password is not None:
            cred = pj.AuthCredInfo("digest", cfg.realm, cfg.username, 0, cfg.password)
            acfg.sipConfig.authCreds.append(cred)
        acfg.mediaConfig.transportConfig.port = cfg.rtp_port
        acfg.mediaConfig.transportConfig.portRange = cfg.rtp_port_range
        if cfg.bind_address:
            acfg.mediaConfig.transportConfig.boundAddress = cfg.bind_address
            acfg.mediaConfig.transportConfig.publicAddress = cfg.bind_address
        account = pj.Account()
        account.create(acfg)
        self.ep = ep
        self.account = account
        self.send(p.Ready(pid=os.getpid(), sip_port=sip_port, max_calls=4))

    # -- commands --------------------------------------------------------------------------------

    def handle(self, line: bytes) -> None:
        """Validate and execute one command, answering with a `Result`."""
        cmd = p.decode_command(line)
        if isinstance(cmd, p.Configure):
            if self.cfg is not None:
                self.send(p.Result(seq=cmd.seq, ok=False, error="already configured"))
                return
            try:
                self.configure(cmd)
            except pj.Error as exc:
                # Typically a port already taken. No Call exists yet, so leaving at once is safe.
                self.send(p.Result(seq=cmd.seq, ok=False, error=f"pjsua: {exc.info()}"))
                os._exit(2)
            self.send(p.Result(seq=cmd.seq, ok=True))
            return
        if self.cfg is None:
            raise p.ProtocolError(f"{cmd.type} before configure")
        error = ""
        try:
            match cmd:
                case p.Ping():
                    pass
                case p.Dial():
                    error = self.cmd_dial(cmd)
                case p.Hangup():
                    error = self.cmd_hangup(cmd.call_id)
                case p.Play():
                    error = self.cmd_play(cmd.call_id, cmd.path)
                case p.ConnectAgent():
                    error = self.cmd_connect(cmd)
                case p.Shutdown():
                    self.stopping = True
        except pj.Error as exc:
            error = f"pjsua: {exc.info()}"
        except Exception as exc:
            # A bug in one command must not take the other calls of this worker down with it.
            error = f"internal error: {exc!r}"
            self.log("error", "worker_command_failed", traceback.format_exc(limit=5))
        self.send(p.Result(seq=cmd.seq, ok=not error, error=error))

    def cmd_dial(self, cmd: p.Dial) -> str:
        if cmd.call_id in self.legs or any(d.call_id == cmd.call_id for d, _ in self.pending):
            return f"call {cmd.call_id} already exists"
        if self.stopping:
            return "worker is shutting down"
        if self.ep.utilVerifySipUri(cmd.uri) != 0:
            return f"malformed SIP URI {cmd.uri!r}"
        self.pending.append((cmd, time.monotonic()))
        return ""

    def cmd_hangup(self, call_id: str) -> str:
        for i, (dial, _) in enumerate(self.pending):
            if dial.call_id == call_id:
                del self.pending[i]
                self.send(p.Failed(call_id=call_id, outcome=Outcome.FAILED, reason="cancelled"))
                return ""
        leg = self.legs.get(call_id)
        if leg is None:
            return ""  # already over: hanging up twice is harmless
        self.hangup(leg)
        return ""

    def cmd_play(self, call_id: str, path: str) -> str:
        leg = self.legs.get(call_id)
        if leg is None or leg.terminal_sent:
            return f"no call {call_id}"
        if not leg.confirmed or not leg.media_ready:
            return f"call {call_id} is not answered"
        if leg.bridged:
            return f"call {call_id} is bridged to an agent"
        if leg.kind is AnswerKind.MACHINE and leg.detector is not None and not _beep_over(leg.detector):
            # Message drop: start after the beep so the message is recorded from its start.
            leg.pending_play = path
            leg.pending_play_since = time.monotonic()
            return ""
        self.start_player(leg, path)
        return ""

    def cmd_connect(self, cmd: p.ConnectAgent) -> str:
        leg = self.legs.get(cmd.call_id)
        if leg is None or leg.terminal_sent:
            return f"no call {cmd.call_id}"
        if not leg.confirmed:
            return f"call {cmd.call_id} is not answered"
        if leg.agent_leg is not None or leg.bridged or leg.transferring:
            return f"call {cmd.call_id} is already being put through"
        if self.ep.utilVerifySipUri(cmd.uri) != 0:
            return f"malformed agent URI {cmd.uri!r}"
        assert self.cfg is not None
        leg.agent_id = cmd.agent_id
        leg.agent_deadline = time.monotonic() + self.cfg.agent_answer_timeout_s
        if cmd.mode == "refer":
            leg.transferring = True
            leg.call.xfer(cmd.uri, pj.CallOpParam(True))
            return ""
        agent = Leg(key=f"{cmd.call_id}#agent", call_id=cmd.call_id, is_agent=True, agent_id=cmd.agent_id)
        agent.call = _Call(self, self.account, agent)
        agent.started_at = time.monotonic()
        leg.agent_leg = agent
        self.legs[agent.key] = agent
        assert leg.dial is not None
        op = self.call_op(leg.dial.from_uri, cmd.headers)
        try:
            agent.call.makeCall(cmd.uri, op)
        except pj.Error as exc:
            self.legs.pop(agent.key, None)
            leg.agent_leg = None
            agent.terminal_sent = True
            self.dead.append(agent)
            self.send(p.AgentFailed(call_id=cmd.call_id, agent_id=cmd.agent_id, reason=f"dial: {exc.reason}"))
        self.next_attempt = max(self.next_attempt, time.monotonic()) + 1.0 / self.cfg.attempts_per_s
        return ""

    # -- call control ----------------------------------------------------------------------------

    @staticmethod
    def call_op(from_uri: str, headers: dict[str, str]) -> Any:
        op = pj.CallOpParam(True)
        op.txOption.localUri = from_uri
        for name, value in headers.items():
            header = pj.SipHeader()
            header.hName = name
            header.hValue = value
            op.txOption.headers.append(header)
        return op

    def start_dial(self, cmd: p.Dial, queued_at: float) -> bool:
        """makeCall for a queued dial; False when pjsua has no free slot yet (retry later)."""
        assert self.cfg is not None
        now = time.monotonic()
        leg = Leg(key=cmd.call_id, call_id=cmd.call_id, is_agent=False, dial=cmd)
        leg.call = _Call(self, self.account, leg)
        leg.started_at = now
        leg.ring_deadline = now + cmd.ring_timeout_s
        leg.response_deadline = now + self.cfg.response_timeout_s
        self.legs[leg.key] = leg
        try:
            leg.call.makeCall(cmd.uri, self.call_op(cmd.from_uri, cmd.headers))
        except pj.Error as exc:
            self.legs.pop(leg.key, None)
            leg.terminal_sent = True
            self.dead.append(leg)
            if "ETOOMANY" in exc.info() or "Too many" in exc.info():
                if now - queued_at < RETRY_SLOT_MAX_S:
                    return False
                self.send(p.Failed(call_id=cmd.call_id, outcome=Outcome.FAILED, reason="no_free_slot"))
            else:
                self.send(p.Failed(call_id=cmd.call_id, outcome=Outcome.FAILED, reason=f"dial: {exc.reason}"))
        return True

    def hangup(self, leg: Leg) -> None:
        """Hang up a leg (CANCEL while early, BYE when confirmed); its DISCONNECTED follows."""
        if leg.hangup_at or leg.call is None:
            return
        leg.hangup_at = time.monotonic()
        leg.hangup_local = True
        try:
            op = pj.CallOpParam(True)
            leg.call.hangup(op)
        except pj.Error:
            pass  # already disconnecting

    def terminal(self, leg: Leg, status: int = 0) -> None:
        """Send the customer leg's one terminal event."""
        if leg.terminal_sent or leg.is_agent:
            return
        leg.terminal_sent = True
        if leg.confirmed:
            self.send(p.Ended(call_id=leg.call_id, hangup_by="local" if leg.hangup_local else "remote"))
            return
        if self.stopping and status in (0, 487):
            outcome, reason = Outcome.FAILED, "shutdown"
        else:
            if not leg.peer_responded:
                status = 0  # pjsua's own 487/408/503: nothing came from the network
            outcome, reason = failure_outcome(
                status, q850=leg.q850, ring_timed_out=leg.ring_timed_out, peer_responded=leg.peer_responded
            )
        self.send(p.Failed(call_id=leg.call_id, outcome=outcome, sip_status=status, reason=reason))

    def release(self, leg: Leg) -> None:
        """Drop a disconnected leg's media and schedule its Call for deletion outside its callback."""
        self.stop_media(leg)
        self.legs.pop(leg.key, None)
        self.dead.append(leg)

    def stop_media(self, leg: Leg) -> None:
        leg.port = None
        leg.player = None
        leg.detector = None

    # -- callbacks (main thread) -----------------------------------------------------------------

    def on_call_tsx_state(self, leg: Leg, prm: Any) -> None:
        if not leg.peer_responded and prm.e.body.tsxState.type == pj.PJSIP_EVENT_RX_MSG:
            leg.peer_responded = True

    def on_call_state(self, leg: Leg, prm: Any) -> None:
        info = leg.call.getInfo()
        state = info.state
        if prm.e.type == pj.PJSIP_EVENT_TSX_STATE and prm.e.body.tsxState.type == pj.PJSIP_EVENT_RX_MSG:
            leg.peer_responded = True
            if state == pj.PJSIP_INV_STATE_DISCONNECTED:
                leg.q850 = q850_cause(prm.e.body.tsxState.src.rdata.wholeMsg)
        if state == pj.PJSIP_INV_STATE_EARLY:
            leg.peer_responded = True
            if not leg.is_agent and not leg.ringing_sent and info.lastStatusCode in (180, 183):
                leg.ringing_sent = True
                # The phone rings from here: give it the regulatory minimum even when the network
                # took a while to reach it (the ring timeout counts from the INVITE).
                leg.ring_deadline = max(leg.ring_deadline, time.monotonic() + MIN_RING_TIMEOUT_S)
                self.send(p.Ringing(call_id=leg.call_id))
        elif state == pj.PJSIP_INV_STATE_CONFIRMED:
            leg.peer_responded = True
            leg.confirmed = True
            if not leg.is_agent and not leg.answered_at:
                leg.answered_at = time.time()
                leg.answered_mono = time.monotonic()
                if leg.terminal_sent:
                    self.hangup(leg)  # answered after we gave up on it (glare with CANCEL)
            self.on_call_media_state(leg)
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.on_disconnected(leg, info.lastStatusCode)

    def on_disconnected(self, leg: Leg, status: int) -> None:
        if leg.is_agent:
            customer = self.legs.get(leg.call_id)
            if customer is not None and customer.agent_leg is leg:
                customer.agent_leg = None
                if customer.bridged:
                    self.hangup(customer)  # the agent hung up: the conversation is over
                elif not customer.terminal_sent:
                    reason = "agent_no_answer" if leg.hangup_local else f"agent_sip_{status}"
                    self.send(p.AgentFailed(call_id=leg.call_id, agent_id=leg.agent_id, reason=reason))
        else:
            self.terminal(leg, status)
            if leg.agent_leg is not None:
                self.hangup(leg.agent_leg)
                leg.agent_leg = None
        self.release(leg)

    def on_call_media_state(self, leg: Leg) -> None:
        if leg.media_ready or not leg.confirmed:
            return
        info = leg.call.getInfo()
        if not any(
            m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE for m in info.media
        ):
            return
        leg.media_ready = True
        if leg.is_agent:
            self.bridge(leg)
            return
        assert leg.dial is not None
        if leg.dial.detect_machine:
            self.port_seq += 1
            fmt = pj.MediaFormatAudio()
            fmt.type = pj.PJMEDIA_TYPE_AUDIO
            fmt.init(pj.PJMEDIA_FORMAT_PCM, 8000, 1, 20000, 16)
            port = _FramePort(leg.key)
            port.createPort(f"amd{self.port_seq}", fmt)
            leg.call.getAudioMedia(-1).startTransmit(port)
            leg.port = port
            leg.detector = AmdDetector()
        else:
            self.send_answered(leg, AnswerKind.UNKNOWN, "amd_disabled")

    def send_answered(self, leg: Leg, kind: AnswerKind, reason: str) -> None:
        if leg.answer_sent or leg.terminal_sent:
            return
        leg.answer_sent = True
        leg.kind = kind
        ms = (time.monotonic() - leg.answered_mono) * 1000.0
        msg = p.Answered(
            call_id=leg.call_id, kind=kind, answered_at=leg.answered_at, decided_after_ms=ms, reason=reason
        )
        self.send(msg)
        if kind is not AnswerKind.MACHINE:
            # Keep listening only to machines (beep for message drop); humans need no AMD.
            self.stop_listening(leg)

    def stop_listening(self, leg: Leg) -> None:
        if leg.port is not None:
            try:
                leg.call.getAudioMedia(-1).stopTransmit(leg.port)
            except pj.Error:
                pass
        leg.port = None
        leg.detector = None

    def bridge(self, agent: Leg) -> None:
        customer = self.legs.get(agent.call_id)
        if customer is None or customer.terminal_sent or customer.agent_leg is not agent:
            self.hangup(agent)
            return
        self.stop_listening(customer)
        if customer.player is not None:
            customer.player = None
        c_audio = customer.call.getAudioMedia(-1)
        a_audio = agent.call.getAudioMedia(-1)
        c_audio.startTransmit(a_audio)
        a_audio.startTransmit(c_audio)
        customer.bridged = True
        self.send(p.AgentUp(call_id=customer.call_id, agent_id=customer.agent_id))

    def on_dtmf(self, leg: Leg, digit: str) -> None:
        if not leg.is_agent and not leg.terminal_sent:
            self.send(p.Dtmf(call_id=leg.call_id, digit=digit))

    def on_transfer_status(self, leg: Leg, prm: Any) -> None:
        if not leg.transferring:
            return
        code = int(prm.statusCode)
        if not prm.finalNotify and code < 300:
            return
        leg.transferring = False
        prm.cont = False
        if 200 <= code < 300:
            self.send(p.AgentUp(call_id=leg.call_id, agent_id=leg.agent_id))
            self.hangup(leg)  # pjsua keeps our leg up after a successful REFER
        else:
            self.send(p.AgentFailed(call_id=leg.call_id, agent_id=leg.agent_id, reason=f"refer_{code}"))

    def start_player(self, leg: Leg, path: str) -> None:
        leg.pending_play = None
        self.stop_listening(leg)  # a machine's beep has been waited for: AMD's work is done
        player = _Player(leg.key)
        player.createPlayer(path, pj.PJMEDIA_FILE_NO_LOOP)
        player.startTransmit(leg.call.getAudioMedia(-1))
        leg.player = player  # replaces (and so stops) any earlier player

    # -- media hand-off and timers ---------------------------------------------------------------

    def drain_media(self) -> None:
        while True:
            try:
                kind, (key, data) = _frames.get_nowait()
            except queue.Empty:
                return
            leg = self.legs.get(key)
            if leg is None or leg.terminal_sent:
                continue
            if kind == "frame" and leg.detector is not None:
                if not leg.heard_audio:
                    if not any(data):
                        # pjmedia fills with digital zeros until the first RTP packet arrives: that is
                        # not line audio, and it would make the AMD noise floor start far too low.
                        continue
                    leg.heard_audio = True
                result = leg.detector.feed(data)
                if result is not None and not leg.answer_sent:
                    self.send_answered(leg, result.kind, result.reason)
                if leg.pending_play is not None and leg.detector is not None and _beep_over(leg.detector):
                    self.start_player(leg, leg.pending_play)
            elif kind == "eof":
                leg.player = None
                self.send(p.PlaybackDone(call_id=leg.call_id))
            elif kind == "error":
                self.log("error", "worker_media_callback_failed", str(data))

    def timers(self) -> None:
        assert self.cfg is not None
        now = time.monotonic()
        for leg in list(self.legs.values()):
            if leg.terminal_sent and not leg.hangup_at:
                continue
            if leg.hangup_at and now - leg.hangup_at > HANGUP_GRACE_S and not leg.terminal_sent:
                self.terminal(leg, 0)
                continue
            if leg.is_agent:
                customer = self.legs.get(leg.call_id)
                if not leg.confirmed and customer is not None and now > customer.agent_deadline:
                    self.hangup(leg)
                continue
            if not leg.confirmed:
                if not leg.peer_responded and now > leg.response_deadline:
                    # Nothing came back at all; pjsip cannot CANCEL before a provisional response and
                    # would wait 32 s for timer B. Report now; the leg finishes in the background.
                    self.hangup(leg)
                    self.terminal(leg, 0)
                elif now > leg.ring_deadline and not leg.ring_timed_out:
                    leg.ring_timed_out = True
                    self.hangup(leg)  # CANCEL
                continue
            if leg.detector is not None and not leg.answer_sent:
                if now - leg.answered_mono > self.cfg.amd_max_s:
                    self.send_answered(leg, AnswerKind.UNKNOWN, "amd_timeout")
            if leg.transferring and now > leg.agent_deadline:
                leg.transferring = False
                self.send(p.AgentFailed(call_id=leg.call_id, agent_id=leg.agent_id, reason="refer_timeout"))
            if leg.pending_play is not None and now - leg.pending_play_since > BEEP_WAIT_MAX_S:
                self.start_player(leg, leg.pending_play)

    def start_pending(self) -> None:
        assert self.cfg is not None
        now = time.monotonic()
        while self.pending and now >= self.next_attempt and not self.stopping:
            cmd, queued_at = self.pending[0]
            if not self.start_dial(cmd, queued_at):
                self.next_attempt = now + RETRY_SLOT_S
                return
            self.pending.popleft()
            # Strict spacing, no burst credit: bursts are what exhaust pjlib's 64-handle select().
            self.next_attempt = max(self.next_attempt, now) + 1.0 / self.cfg.attempts_per_s

    def collect_dead(self) -> None:
        """Delete disconnected legs' Call objects now, outside any callback.

        Leg and _Call refer to each other, so without breaking the cycle here the Call would be
        deleted by the cyclic GC at some later moment, when pjsua may have given its call slot to a
        new call: pjsua2's destructor then clears the new call's user data (its callbacks are lost)
        and may even hang it up.
        """
        for leg in self.dead:
            leg.call = None
            leg.agent_leg = None
        self.dead.clear()

    # -- main loop -------------------------------------------------------------------------------

    def run(self) -> None:
        while self.cfg is None:
            lines = self.read_commands(1.0)
            if self.eof:
                os._exit(0)
            for line in lines:
                self.handle(line)
        assert self.cfg is not None
        poll_ms = self.cfg.poll_ms
        while not self.stopping and not self.eof:
            self.ep.libHandleEvents(poll_ms)
            self.collect_dead()
            for line in self.read_commands(0):
                self.handle(line)
            self.drain_media()
            self.timers()
            self.start_pending()
            self.collect_dead()
        self.shutdown()

    def shutdown(self, exit_code: int = 0) -> None:
        """hangupAllCalls → wait for DISCONNECTED → drop references → gc → libDestroy → _exit."""
        self.stopping = True
        for dial, _ in self.pending:
            self.send(p.Failed(call_id=dial.call_id, outcome=Outcome.FAILED, reason="shutdown"))
        self.pending.clear()
        for leg in list(self.legs.values()):
            self.hangup(leg)
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        while self.legs and time.monotonic() < deadline:
            self.ep.libHandleEvents(20)
            self.collect_dead()
        for leg in list(self.legs.values()):
            self.terminal(leg, 0)
            self.release(leg)
        self.collect_dead()
        self.account = None
        gc.collect()
        try:
            self.ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
        except pj.Error:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        os._exit(exit_code)



def main(argv: list[str] | None = None) -> None:
    """Entry point of a worker process."""
    parser = argparse.ArgumentParser(prog="python -m sip.worker")
    parser.add_argument("--fd", type=int, required=True, help="this end of the socketpair to the pool")
    args = parser.parse_args(argv)
    # pjlib writes start-up chatter to C-level stdout before its log config applies, and fd 1 must
    # never carry anything that matters: point it at /dev/null (our log lines go to stderr).
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)
    worker = Worker(sock)

    def _term(signum: int, frame: Any) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the pool, which shuts us down
    try:
        worker.run()
    except (p.ProtocolError, OSError) as exc:
        worker.send(p.Log(level="error", event="worker_protocol_error", detail=str(exc)))
        if worker.ep is not None:
            worker.shutdown(exit_code=2)
        os._exit(2)


if __name__ == "__main__":
    main()
