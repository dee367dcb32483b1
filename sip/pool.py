"""The SIP pool: `dialer.telephony.Telephony` on top of supervised pjsua2 worker processes.

Each worker is one process with one pjsua2 Endpoint and at most 4 legs (the wheel's compile-time
cap). The pool spawns `SipSettings.worker_count` of them, places every call on the worker with the
most free slots, and, when agent legs are bridged, books two slots per customer call so the agent leg
always lands in the customer's worker. It paces INVITEs to the trunk's calls-per-second limit.

Supervision: a worker whose socket closes (crash, SIGKILL, SIGABRT from pjlib) or that stops
answering its heartbeat is killed and replaced after a bounded, growing backoff. Its calls are
reported as `CallFailed(outcome=FAILED, reason="worker_lost")` exactly once and never redialled here.

All events reach the handler on the event loop's thread, in order per call, with exactly one terminal
event (`CallFailed` or `CallEnded`) per originated call.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import structlog

from dialer.compliance.gate import Clearance
from dialer.errors import TelephonyError
from dialer.logging import mask_number
from dialer.outcomes import Outcome
from dialer.telephony import (
    MIN_RING_TIMEOUT_S,
    AgentConnected,
    AgentConnectFailed,
    AgentTarget,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallFailed,
    CallRinging,
    DialRequest,
    DtmfReceived,
    EventHandler,
    PlaybackFinished,
    TransferMode,
)
from sip import protocol as p
from sip.settings import CALLS_PER_ENDPOINT, SipSettings, check_headers, is_sip_uri
from sip.wav import read_wav_info

log = structlog.get_logger("sip.pool")

_E164 = re.compile(r"^\+?[1-9][0-9]{1,14}$")
_CALLER_ID = re.compile(r"^\+?[0-9A-Za-z._-]{1,64}$")
SPAWN_CONCURRENCY = 4
"""Workers starting at once: each start costs ~0.3 s of CPU (imports, pjlib init); 50 at once on
2 cores would starve each other past `worker_start_timeout_s`."""
STABLE_AFTER_S = 30.0
"""A worker that lived this long resets the restart backoff."""
EXIT_WAIT_S = 5.0


class _Pacer:
    """Spaces events at least `1/rate` seconds apart (a calls-per-second limit), waiting as needed."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_at = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        at = max(self.next_at, now)
        self.next_at = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


@dataclass(eq=False)
class _Worker:
    """The pool's view of one worker process."""

    index: int
    generation: int
    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    started_at: float
    ready: bool = False
    lost: bool = False
    pid: int = 0
    sip_port: int = 0
    legs: int = 0
    calls: set[str] = field(default_factory=set)
    seq: int = 0
    results: dict[int, asyncio.Future[p.Result]] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return CALLS_PER_ENDPOINT - self.legs


class SipPool:
    """`Telephony` over a supervised pool of pjsua2 worker processes. Use as `async with SipPool(...)`."""

    def __init__(
        self,
        settings: SipSettings,
        *,
        python: str = sys.executable,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` is the epoch clock clearances were minted on and answer times are reported in.

        Production leaves it at `time.time`; a daemon running a lab clock (a moved wall clock, for
        demos on a loopback trunk) passes that clock so clearances and the 2-second rule agree.
        `python` runs the workers (`python -m sip.worker`).
        """
        self.settings = settings
        self._python = python
        self._clock = clock
        self._handler: EventHandler | None = None
        self._workers: dict[int, _Worker] = {}
        self._calls: dict[str, _Worker] = {}
        self._pacer = _Pacer(settings.trunk_cps)
        self._supervisors: list[asyncio.Task[None]] = []
        self._first_ready: dict[int, asyncio.Future[None]] = {}
        self._closing = False
        self._closing_event = asyncio.Event()  # wakes supervisors sleeping off a restart backoff
        self._close_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._spawning = asyncio.Semaphore(SPAWN_CONCURRENCY)
        self._pacing = 0  # originates waiting for the trunk's CPS pacing
        self.restarts = 0
        """Workers replaced after a crash or hang since the pool opened (for metrics and benches)."""
        self.starts = 0
        """Workers that came up since the pool opened, first starts and restarts (for metrics)."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Spawn every worker and wait until all are ready."""
        loop = asyncio.get_running_loop()
        for index in range(self.settings.worker_count):
            self._first_ready[index] = loop.create_future()
            self._supervisors.append(asyncio.create_task(self._supervise(index), name=f"sip-worker-{index}"))
        budget = self.settings.worker_start_timeout_s + 0.5 * self.settings.worker_count / SPAWN_CONCURRENCY
        try:
            async with asyncio.timeout(budget):
                await asyncio.gather(*self._first_ready.values())
        except TimeoutError:
            missing = self.settings.worker_count - len(self._workers)
            await self.close()
            raise TelephonyError(
                f"{missing} of {self.settings.worker_count} SIP workers did not start within {budget:g} s"
            ) from None
        except BaseException:
            await self.close()
            raise
        log.info("sip_pool_ready", workers=len(self._workers), calls=self.capacity())

    async def close(self) -> None:
        """Stop placing calls, let live calls finish for `drain_timeout_s`, then shut every worker down.

        Idempotent; concurrent callers wait for the same shutdown.
        """
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close(), name="sip-pool-close")
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self._closing = True
        self._closing_event.set()
        if self._calls and self.settings.drain_timeout_s > 0:
            log.info("sip_pool_draining", calls=len(self._calls))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.drain_timeout_s):
                    await self._idle.wait()
        # Graceful stop: each worker hangs up what is left, reports it, destroys its Endpoint and
        # exits; its supervisor reads the last events up to EOF and does not restart it.
        for worker in self._workers.values():
            if not worker.lost:
                with contextlib.suppress(OSError, ConnectionError, RuntimeError):
                    worker.writer.write(p.encode(p.Shutdown(seq=self._next_seq(worker))))
        if self._supervisors:
            _, pending = await asyncio.wait(self._supervisors, timeout=EXIT_WAIT_S + 2.0)
            for task in pending:
                task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        log.info("sip_pool_closed", restarts=self.restarts)

    # -- Telephony -------------------------------------------------------------------------------

    def start(self, handler: EventHandler) -> None:
        """Register the event handler. Called once, before any command."""
        self._handler = handler

    def capacity(self) -> int:
        """How many more customer calls fit right now."""
        if self._closing:
            return 0
        per_call = self.settings.legs_per_call
        free = sum(w.free // per_call for w in self._workers.values() if w.ready and not w.lost)
        # Originates still waiting for their CPS turn will take slots too.
        free -= self._pacing
        return max(0, min(free, self.settings.max_concurrent_calls - len(self._calls) - self._pacing))

    async def originate(self, clearance: Clearance, request: DialRequest) -> None:
        """Place a call on a worker with room, paced to the trunk's CPS, only with a valid clearance.

        Raises `ClearanceError` when the clearance does not cover the request at the moment of the
        INVITE, and `TelephonyError` when the request is invalid or no worker has room.
        """
        clearance.verify(request.number, request.campaign, self._clock())
        if self._handler is None:
            raise TelephonyError("start(handler) must be called before originate")
        if self._closing:
            raise TelephonyError("the SIP pool is shutting down")
        if request.ring_timeout_s < MIN_RING_TIMEOUT_S:
            raise TelephonyError(
                f"ring timeout {request.ring_timeout_s:g} s is below the {MIN_RING_TIMEOUT_S:g} s minimum"
            )
        if not _E164.match(request.number):
            raise TelephonyError(f"number {mask_number(request.number)!r} is not E.164 (+ and 2-15 digits)")
        if not _CALLER_ID.match(request.caller_id):
            raise TelephonyError(f"caller ID {request.caller_id!r} is not a phone number or SIP user")
        if request.call_id in self._calls:
            raise TelephonyError(f"call {request.call_id} is already in progress")
        try:
            headers = check_headers({**self.settings.extra_headers, **request.headers})
        except ValueError as exc:
            raise TelephonyError(f"bad SIP header: {exc}") from None
        uri = self.settings.request_uri(request.number)
        from_uri = self.settings.from_uri(request.caller_id)
        if self.settings.p_asserted_identity:
            headers.setdefault("P-Asserted-Identity", f"<{from_uri}>")
        self._pacing += 1
        try:
            await self._pacer.wait()
        finally:
            self._pacing -= 1
        worker = self._pick()
        # Checked again immediately before the INVITE: pacing may have made the clearance stale.
        clearance.verify(request.number, request.campaign, self._clock())
        self._calls[request.call_id] = worker
        worker.calls.add(request.call_id)
        worker.legs += self.settings.legs_per_call
        self._idle.clear()
        cmd = p.Dial(
            seq=self._next_seq(worker),
            call_id=request.call_id,
            uri=uri,
            from_uri=from_uri,
            headers=headers,
            ring_timeout_s=request.ring_timeout_s,
            detect_machine=request.detect_machine,
        )
        log.debug(
            "sip_dial", call_id=request.call_id, worker=worker.index, number=mask_number(request.number)
        )
        try:
            await self._command(worker, cmd)
        except TelephonyError:
            if worker.lost:
                return  # the call is reported through CallFailed(worker_lost)
            self._forget(request.call_id)
            raise

    async def connect_agent(self, call_id: str, agent: AgentTarget, mode: TransferMode) -> None:
        """Bridge (agent leg from the same worker) or REFER; `AgentConnected`/`AgentConnectFailed` follows."""
        if not is_sip_uri(agent.uri):
            raise TelephonyError(f"agent {agent.agent_id} URI {agent.uri!r} is not a sip: URI with a host")
        worker = self._worker_of(call_id)
        headers = dict(self.settings.agent_headers) if mode is TransferMode.BRIDGE else {}
        cmd = p.ConnectAgent(
            seq=self._next_seq(worker),
            call_id=call_id,
            agent_id=agent.agent_id,
            uri=agent.uri,
            mode=mode.value,
            headers=headers,
        )
        await self._command(worker, cmd)

    async def play(self, call_id: str, audio: str) -> None:
        """Play a WAV file (PCM 16-bit mono, 8 or 16 kHz) to the callee; `PlaybackFinished` follows.

        A file in any other format raises `AudioFormatError` naming every problem, before the worker
        is involved.
        """
        path = read_wav_info(audio).path.resolve()
        worker = self._worker_of(call_id)
        await self._command(worker, p.Play(seq=self._next_seq(worker), call_id=call_id, path=str(path)))

    async def hangup(self, call_id: str) -> None:
        """Hang up a call in any state. A call already over is left alone."""
        worker = self._calls.get(call_id)
        if worker is None or worker.lost:
            return
        await self._command(worker, p.Hangup(seq=self._next_seq(worker), call_id=call_id))

    # -- introspection for supervisors, tests and benches ---------------------------------------

    def worker_pids(self) -> dict[int, int]:
        """Process id of each ready worker, by worker index."""
        return {i: w.pid for i, w in self._workers.items() if w.ready and not w.lost}

    def worker_of(self, call_id: str) -> int | None:
        """Index of the worker carrying `call_id`, if the call is in progress."""
        worker = self._calls.get(call_id)
        return None if worker is None else worker.index

    def workers_up(self) -> int:
        """Worker processes running and answering their protocol."""
        return sum(1 for w in self._workers.values() if w.ready and not w.lost)

    def slots(self) -> tuple[int, int]:
        """(used, free) call legs across the workers that are up."""
        up = [w for w in self._workers.values() if w.ready and not w.lost]
        used = sum(w.legs for w in up)
        return used, sum(w.free for w in up)

    @property
    def calls_in_progress(self) -> int:
        """Calls originated that have not had their terminal event yet."""
        return len(self._calls)

    # -- internals -------------------------------------------------------------------------------

    def _pick(self) -> _Worker:
        per_call = self.settings.legs_per_call
        if len(self._calls) >= self.settings.max_concurrent_calls:
            raise TelephonyError(f"{len(self._calls)} calls in progress: at max_concurrent_calls")
        best: _Worker | None = None
        for w in self._workers.values():
            if w.ready and not w.lost and w.free >= per_call and (best is None or w.free > best.free):
                best = w
        if best is None:
            raise TelephonyError("no SIP worker has a free slot")
        return best

    def _worker_of(self, call_id: str) -> _Worker:
        worker = self._calls.get(call_id)
        if worker is None:
            raise TelephonyError(f"no call {call_id} in progress")
        if worker.lost:
            raise TelephonyError(f"call {call_id} was lost with its SIP worker")
        return worker

    @staticmethod
    def _next_seq(worker: _Worker) -> int:
        worker.seq += 1
        return worker.seq

    async def _command(self, worker: _Worker, cmd: p.Dial | p.Hangup | p.Play | p.ConnectAgent) -> None:
        """Send a command and wait for its `Result`; a worker that does not answer in time is killed."""
        if worker.lost:
            raise TelephonyError(f"SIP worker {worker.index} is gone")
        fut: asyncio.Future[p.Result] = asyncio.get_running_loop().create_future()
        worker.results[cmd.seq] = fut
        try:
            worker.writer.write(p.encode(cmd))
            await worker.writer.drain()
            async with asyncio.timeout(self.settings.command_timeout_s):
                result = await fut
        except TimeoutError:  # before OSError, of which it is a subclass
            self._kill(worker, "unresponsive")
            limit = self.settings.command_timeout_s
            raise TelephonyError(
                f"SIP worker {worker.index} did not answer {cmd.type} within {limit:g} s"
            ) from None
        except (OSError, ConnectionError) as exc:
            raise TelephonyError(f"SIP worker {worker.index} is gone: {exc}") from None
        finally:
            worker.results.pop(cmd.seq, None)
        if not result.ok:
            raise TelephonyError(f"SIP worker refused {cmd.type}: {result.error}")

    def _deliver(self, event: CallEvent) -> None:
        if self._handler is None:
            return
        try:
            self._handler(event)
        except Exception:
            log.exception("telephony_handler_failed", event=type(event).__name__, call_id=event.call_id)

    def _forget(self, call_id: str) -> None:
        worker = self._calls.pop(call_id, None)
        if worker is not None:
            worker.calls.discard(call_id)
            worker.legs = max(0, worker.legs - self.settings.legs_per_call)
        if not self._calls:
            self._idle.set()

    def _on_event(self, worker: _Worker, msg: p.Event) -> None:
        match msg:
            case p.Result():
                fut = worker.results.get(msg.seq)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                return
            case p.Ready():
                return
            case p.Log():
                getattr(log, msg.level)(msg.event, worker=worker.index, detail=msg.detail)
                return
        if self._calls.get(msg.call_id) is not worker:
            log.debug("sip_event_for_unknown_call", type=msg.type, call_id=msg.call_id, worker=worker.index)
            return
        match msg:
            case p.Ringing():
                self._deliver(CallRinging(msg.call_id))
            case p.Answered():
                amd_ms = round(msg.decided_after_ms)
                log.info(
                    "call_answered", call_id=msg.call_id, kind=msg.kind.value, amd_ms=amd_ms, amd=msg.reason
                )
                # The worker stamps the 200 OK with the real epoch; report it on our clock.
                answered_at = msg.answered_at + (self._clock() - time.time())
                self._deliver(CallAnswered(msg.call_id, msg.kind, answered_at))
            case p.Dtmf():
                self._deliver(DtmfReceived(msg.call_id, msg.digit))
            case p.PlaybackDone():
                self._deliver(PlaybackFinished(msg.call_id))
            case p.AgentUp():
                self._deliver(AgentConnected(msg.call_id, msg.agent_id))
            case p.AgentFailed():
                self._deliver(AgentConnectFailed(msg.call_id, msg.agent_id, msg.reason))
            case p.Failed():
                self._forget(msg.call_id)
                self._deliver(CallFailed(msg.call_id, msg.outcome, msg.sip_status, msg.reason))
            case p.Ended():
                self._forget(msg.call_id)
                self._deliver(CallEnded(msg.call_id, msg.hangup_by))

    def _kill(self, worker: _Worker, why: str) -> None:
        if worker.proc.returncode is None:
            log.warning("sip_worker_killed", worker=worker.index, pid=worker.proc.pid, why=why)
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGKILL)

    def _lose(self, worker: _Worker) -> None:
        """The worker is gone: fail its calls once and its pending commands."""
        if worker.lost:
            return
        worker.lost = True
        for fut in worker.results.values():
            if not fut.done():
                fut.set_exception(TelephonyError(f"SIP worker {worker.index} was lost"))
        for call_id in sorted(worker.calls):
            self._forget(call_id)
            self._deliver(CallFailed(call_id, Outcome.FAILED, 0, "worker_lost"))
        worker.calls.clear()
        worker.legs = 0

    async def _spawn(self, index: int, generation: int) -> _Worker:
        parent, child = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                "sip.worker",
                "--fd",
                str(child.fileno()),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=2 * p.MAX_LINE_BYTES)
        return _Worker(index, generation, proc, reader, writer, time.monotonic())

    def _configure_msg(self, index: int) -> p.Configure:
        s = self.settings
        return p.Configure(
            seq=0,
            worker_index=index,
            sip_port=s.sip_port_base + index if s.sip_port_base else 0,
            rtp_port=s.rtp_port_base + index * s.rtp_ports_per_worker,
            rtp_port_range=s.rtp_ports_per_worker,
            attempts_per_s=s.worker_attempts_per_s,
            outbound_proxy=s.outbound_proxy,
            username=s.username,
            password=s.password.get_secret_value() if s.password is not None else None,
            realm=s.realm,
            account_uri=s.from_uri("dialer"),
            bind_address=s.bind_address,
            response_timeout_s=s.trunk_response_timeout_s,
            agent_answer_timeout_s=s.agent_answer_timeout_s,
            amd_max_s=s.amd_max_s,
            poll_ms=s.poll_ms,
            log_level=s.log_level,
        )

    async def _handshake(self, worker: _Worker) -> None:
        worker.writer.write(p.encode(self._configure_msg(worker.index)))
        await worker.writer.drain()
        async with asyncio.timeout(self.settings.worker_start_timeout_s):
            while True:
                line = await worker.reader.readline()
                if not line:
                    raise TelephonyError(f"SIP worker {worker.index} exited during start-up")
                msg = p.decode_event(line)
                if isinstance(msg, p.Ready):
                    worker.pid, worker.sip_port = msg.pid, msg.sip_port
                elif isinstance(msg, p.Result):
                    if not msg.ok:
                        raise TelephonyError(f"SIP worker {worker.index} failed to start: {msg.error}")
                    return
                elif isinstance(msg, p.Log):
                    getattr(log, msg.level)(msg.event, worker=worker.index, detail=msg.detail)

    async def _read(self, worker: _Worker) -> None:
        while True:
            try:
                line = await worker.reader.readline()
            except (ValueError, ConnectionError) as exc:  # over-long line or reset
                if not self._closing:
                    log.error("sip_worker_stream_broken", worker=worker.index, error=str(exc))
                return
            if not line:
                return
            try:
                msg = p.decode_event(line)
            except p.ProtocolError as exc:
                log.error("sip_worker_protocol_error", worker=worker.index, error=str(exc))
                return
            self._on_event(worker, msg)

    async def _heartbeat(self, worker: _Worker) -> None:
        interval = self.settings.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            fut: asyncio.Future[p.Result] = asyncio.get_running_loop().create_future()
            seq = self._next_seq(worker)
            worker.results[seq] = fut
            try:
                worker.writer.write(p.encode(p.Ping(seq=seq)))
                async with asyncio.timeout(self.settings.heartbeat_timeout_s):
                    await fut
            except TimeoutError:
                log.error("sip_worker_unresponsive", worker=worker.index, pid=worker.pid)
                return
            except (OSError, ConnectionError, TelephonyError):
                return
            finally:
                worker.results.pop(seq, None)

    async def _run_worker(self, worker: _Worker) -> None:
        """Serve one worker generation until it dies or hangs, then clean up after it."""
        reader = asyncio.create_task(self._read(worker), name=f"sip-read-{worker.index}")
        beat = asyncio.create_task(self._heartbeat(worker), name=f"sip-beat-{worker.index}")
        try:
            await asyncio.wait({reader, beat}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            beat.cancel()
            await asyncio.gather(reader, beat, return_exceptions=True)
            if self._closing:
                await asyncio.shield(self._reap(worker))  # it is exiting on our Shutdown
            self._kill(worker, "lost")
            self._lose(worker)
            with contextlib.suppress(Exception):
                worker.writer.close()
            await asyncio.shield(self._reap(worker))

    async def _reap(self, worker: _Worker) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_WAIT_S):
                await worker.proc.wait()

    async def _supervise(self, index: int) -> None:
        """Keep worker `index` running: spawn, serve, and on loss restart with bounded backoff."""
        backoff = self.settings.restart_backoff_initial_s
        generation = 0
        while not self._closing:
            generation += 1
            worker: _Worker | None = None
            try:
                async with self._spawning:
                    worker = await self._spawn(index, generation)
                    await self._handshake(worker)
            except (OSError, TelephonyError, TimeoutError) as exc:
                log.error("sip_worker_start_failed", worker=index, error=str(exc))
                if worker is not None:
                    self._kill(worker, "start_failed")
                    self._lose(worker)
                    await asyncio.shield(self._reap(worker))
            except asyncio.CancelledError:
                if worker is not None:
                    self._kill(worker, "cancelled")
                    await asyncio.shield(self._reap(worker))
                raise
            else:
                worker.ready = True
                self.starts += 1
                self._workers[index] = worker
                first = self._first_ready[index]
                if not first.done():
                    first.set_result(None)
                log.info("sip_worker_ready", worker=index, pid=worker.pid, sip_port=worker.sip_port)
                if self._closing:  # came up while the pool was closing: it missed the Shutdown
                    worker.writer.write(p.encode(p.Shutdown(seq=self._next_seq(worker))))
                await self._run_worker(worker)
                if self._closing:
                    return
                lived = time.monotonic() - worker.started_at
                log.warning("sip_worker_lost", worker=index, pid=worker.pid, exit=worker.proc.returncode)
                if lived > STABLE_AFTER_S:
                    backoff = self.settings.restart_backoff_initial_s
                self.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing_event.wait(), backoff)
            backoff = min(backoff * 2, self.settings.restart_backoff_max_s)
