"""The pool under failure: crashed and hung workers, unreachable trunks, bad input, missing clearance."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dialer.compliance.gate import mint_clearance
from dialer.errors import ClearanceError, TelephonyError
from dialer.lab import write_rtp_pcap
from dialer.outcomes import Outcome
from dialer.telephony import AgentTarget, CallAnswered, CallEnded, CallFailed, CallRinging, TransferMode
from sip.pool import SipPool
from sip.wav import AudioFormatError
from tests.integration.sip_helpers import dial, loopback_settings, request
from tests.support.audio import human_answer, write_wav
from tests.support.servers import free_port
from tests.support.sipp import EventRecorder, running_sipp

pytestmark = pytest.mark.integration


async def _replacement(pool: SipPool, index: int, old_pid: int, timeout_s: float = 10.0) -> int:
    async with asyncio.timeout(timeout_s):
        # The pool has no "worker up" event to await (nothing but tests needs one): poll, bounded.
        while pool.worker_pids().get(index, old_pid) == old_pid:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return pool.worker_pids()[index]


async def test_sigkilled_worker_fails_its_calls_once_and_is_replaced(tmp_path: Path) -> None:
    write_rtp_pcap(tmp_path / "answer.pcap", human_answer(seed=5, duration_s=3.0).pcm)
    events = EventRecorder()
    with running_sipp("uas_answer_audio.xml", tmp_path, calls=3) as sipp:
        async with SipPool(loopback_settings(sipp.host, workers=2)) as pool:
            pool.start(events)
            await dial(pool, request("k1", detect_machine=False))
            await dial(pool, request("k2", number="+15551230002", detect_machine=False))
            await events.wait_for("k1", CallAnswered)
            await events.wait_for("k2", CallAnswered)
            assert pool.workers_up() == 2 and pool.starts == 2
            assert pool.slots() == (4, 4)  # each call holds its leg and one kept for its agent
            victim, survivor = pool.worker_of("k1"), pool.worker_of("k2")
            assert victim is not None and survivor is not None and victim != survivor
            old_pid, survivor_pid = pool.worker_pids()[victim], pool.worker_pids()[survivor]

            os.kill(old_pid, signal.SIGKILL)
            lost = await events.wait_terminal("k1")
            new_pid = await _replacement(pool, victim, old_pid)
            await asyncio.sleep(0.3)  # room for a (wrong) second terminal event

            # The replacement takes calls; the other worker's call is untouched and still works.
            await dial(pool, request("k3", number="+15551230003", detect_machine=False))
            await events.wait_for("k3", CallAnswered)
            await pool.hangup("k2")
            await pool.hangup("k3")
            assert await events.wait_terminal("k2") == CallEnded("k2", hangup_by="local")
            assert await events.wait_terminal("k3") == CallEnded("k3", hangup_by="local")
            assert pool.worker_pids()[survivor] == survivor_pid
            assert pool.restarts == 1 and pool.starts == 3
    assert lost == CallFailed("k1", Outcome.FAILED, 0, "worker_lost")
    assert [type(e) for e in events.of("k1")] == [CallRinging, CallAnswered, CallFailed]
    assert new_pid != old_pid
    assert [type(e) for e in events.of("k2")] == [CallRinging, CallAnswered, CallEnded]


async def test_worker_that_stops_answering_is_killed_and_replaced(tmp_path: Path) -> None:
    write_rtp_pcap(tmp_path / "answer.pcap", human_answer(seed=6, duration_s=3.0).pcm)
    events = EventRecorder()
    with running_sipp("uas_answer_audio.xml", tmp_path, calls=2) as sipp:
        settings = loopback_settings(sipp.host, command_timeout_s=1.0, heartbeat_timeout_s=3.0)
        async with SipPool(settings) as pool:
            pool.start(events)
            await dial(pool, request("w1", detect_machine=False))
            await events.wait_for("w1", CallAnswered)
            old_pid = pool.worker_pids()[0]
            os.kill(old_pid, signal.SIGSTOP)  # alive, but silent: the protocol goes unanswered
            with pytest.raises(TelephonyError, match=r"SIP worker 0 did not answer hangup within 1 s"):
                await pool.hangup("w1")
            lost = await events.wait_terminal("w1")
            await _replacement(pool, 0, old_pid)
            await dial(pool, request("w2", detect_machine=False))
            await events.wait_for("w2", CallAnswered)
            await pool.hangup("w2")
            assert await events.wait_terminal("w2") == CallEnded("w2", hangup_by="local")
    assert lost == CallFailed("w1", Outcome.FAILED, 0, "worker_lost")


async def test_unreachable_trunk_fails_the_call_as_unreachable_and_the_pool_keeps_running() -> None:
    silent = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"  # nothing listens there
    events = EventRecorder()
    async with SipPool(loopback_settings(silent, trunk_response_timeout_s=1.0)) as pool:
        pool.start(events)
        full = pool.capacity()
        await dial(pool, request("u1"))
        failed = await events.wait_terminal("u1", 5.0)
        assert pool.capacity() == full
        assert pool.restarts == 0
    assert failed == CallFailed("u1", Outcome.UNREACHABLE, 0, "no_response")


async def test_bad_input_gets_a_clear_error_and_dials_nothing(tmp_path: Path) -> None:
    stereo = np.zeros((800, 2), dtype=np.int16)
    wrong_wav = tmp_path / "stereo_44k.wav"
    write_wav(wrong_wav, stereo.reshape(-1), sample_rate_hz=44100)
    with wrong_wav.open("r+b") as fh:  # patch the header to 2 channels
        fh.seek(22)
        fh.write((2).to_bytes(2, "little"))
    good_wav = write_wav(tmp_path / "ok.wav", np.zeros(800, dtype=np.int16))
    events = EventRecorder()
    with running_sipp("uas_reject_486.xml", tmp_path, keys={"cause": "0"}) as sipp:
        async with SipPool(loopback_settings(sipp.host)) as pool:
            pool.start(events)
            with pytest.raises(TelephonyError, match=r"number '\*+23' is not E\.164"):
                await dial(pool, request("e1", number="555-CALL-123"))
            with pytest.raises(TelephonyError, match=r"ring timeout 10 s is below the 15 s minimum"):
                await dial(pool, request("e2", ring_timeout_s=10.0))
            with pytest.raises(TelephonyError, match=r"caller ID 'me <sip:x>' is not a phone number"):
                await dial(pool, request("e3", caller_id="me <sip:x>"))
            with pytest.raises(TelephonyError, match=r"header 'X-Campaign' has a line break"):
                await dial(pool, request("e4", headers={"X-Campaign": "a\r\nBYE sip:x SIP/2.0"}))
            with pytest.raises(AudioFormatError, match=r"stereo_44k\.wav: .*44100 Hz"):
                await pool.play("nope", str(wrong_wav))
            with pytest.raises(TelephonyError, match=r"no call nope in progress"):
                await pool.play("nope", str(good_wav))
            with pytest.raises(TelephonyError, match=r"agent alice URI 'alice@pbx' is not a sip: URI"):
                await pool.connect_agent("nope", AgentTarget("alice", "alice@pbx"), TransferMode.BRIDGE)
            assert pool.calls_in_progress == 0
            assert events.events == []
    assert "INVITE" not in sipp.messages()


async def test_no_invite_leaves_without_a_valid_fresh_clearance(tmp_path: Path) -> None:
    events = EventRecorder()
    with running_sipp("uas_reject_486.xml", tmp_path, keys={"cause": "0"}) as sipp:
        async with SipPool(loopback_settings(sipp.host, trunk_cps=1.0)) as pool:
            pool.start(events)
            req = request("c1")
            now = time.time()
            with pytest.raises(ClearanceError, match="does not match"):
                await pool.originate(mint_clearance("+15559999999", req.campaign, now), req)
            with pytest.raises(ClearanceError, match="does not match"):
                await pool.originate(mint_clearance(req.number, "other", now), req)
            with pytest.raises(ClearanceError, match="stale"):
                await pool.originate(mint_clearance(req.number, req.campaign, now - 2.0), req)
            # Fresh when asked, stale by the time the trunk's 1 call/s pacing lets it go: refused.
            first, second = request("c2"), request("c3", number="+15551230003")
            await dial(pool, first)
            with pytest.raises(ClearanceError, match="stale"):
                await dial(pool, second)
            assert await events.wait_terminal("c2") == CallFailed("c2", Outcome.BUSY, 486, "sip_486")
    invites = sipp.messages().count("INVITE sip:")
    assert invites == 1


@pytest.mark.parametrize(
    "body",
    [
        "raise SystemExit(3)",  # dies at once
        'os.write(fd, b\'{"v": 1, "type": "ready", "pid": "me"}\\n\'); time.sleep(30)',  # speaks nonsense
        "time.sleep(30)",  # never answers
    ],
    ids=["exits", "garbage", "silent"],
)
async def test_workers_that_cannot_start_give_a_clear_error(tmp_path: Path, body: str) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!{sys.executable}\nimport os, sys, time\nfd = int(sys.argv[sys.argv.index('--fd') + 1])\n{body}\n"
    )
    fake.chmod(0o755)
    settings = loopback_settings("127.0.0.1:9", workers=2, worker_start_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(TelephonyError, match=r"2 of 2 SIP workers did not start within 0\.75 s"):
        async with SipPool(settings, python=str(fake)):
            pass
    assert time.monotonic() - started < 5.0


async def test_close_drains_then_hangs_up_what_is_left_once(tmp_path: Path) -> None:
    write_rtp_pcap(tmp_path / "answer.pcap", human_answer(seed=8, duration_s=3.0).pcm)
    events = EventRecorder()
    with running_sipp("uas_answer_audio.xml", tmp_path) as sipp:
        pool = SipPool(loopback_settings(sipp.host, drain_timeout_s=0.5))
        async with pool:
            pool.start(events)
            await dial(pool, request("z1", detect_machine=False))
            await events.wait_for("z1", CallAnswered)
            started = time.monotonic()
            await asyncio.gather(pool.close(), pool.close())  # concurrent closes share one shutdown
            closed_after = time.monotonic() - started
            with pytest.raises(TelephonyError, match="shutting down"):
                await dial(pool, request("z2"))
            assert pool.capacity() == 0
        await pool.close()  # and a later one is a no-op
        assert await sipp.finished() == 0, sipp.errors()  # it got our BYE
    assert 0.5 <= closed_after < 5.0
    assert [type(e) for e in events.of("z1")] == [CallRinging, CallAnswered, CallEnded]
    assert events.of("z1")[-1] == CallEnded("z1", hangup_by="local")


async def test_a_lab_clock_governs_clearances_and_answer_times(tmp_path: Path) -> None:
    def lab_clock() -> float:
        return time.time() - 3600.0  # a demo running an hour in the past

    events = EventRecorder()
    with running_sipp("uas_ring_answer.xml", tmp_path) as sipp:
        async with SipPool(loopback_settings(sipp.host), clock=lab_clock) as pool:
            pool.start(events)
            req = request("l1", detect_machine=False)
            with pytest.raises(ClearanceError, match="stale"):  # minted on the real clock
                await pool.originate(mint_clearance(req.number, req.campaign, time.time()), req)
            await pool.originate(mint_clearance(req.number, req.campaign, lab_clock()), req)
            answered = await events.wait_for("l1", CallAnswered)
            assert abs(lab_clock() - answered.answered_at) < 1.0
            await pool.hangup("l1")
            await events.wait_terminal("l1")
            assert await sipp.finished() == 0, sipp.errors()
