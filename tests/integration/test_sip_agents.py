"""Putting answered calls through to agents against real sipp peers: bridge and REFER."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dialer.lab import write_rtp_pcap
from dialer.outcomes import AnswerKind
from dialer.telephony import (
    AgentConnected,
    AgentConnectFailed,
    AgentTarget,
    CallAnswered,
    CallEnded,
    DtmfReceived,
    PlaybackFinished,
    TransferMode,
)
from sip.pool import SipPool
from tests.integration.sip_helpers import dial, loopback_settings, request
from tests.support.audio import human_answer, tone, write_wav
from tests.support.sipp import EventRecorder, running_sipp

pytestmark = pytest.mark.integration


async def test_bridge_calls_the_auto_answering_agent_from_the_same_worker(tmp_path: Path) -> None:
    write_rtp_pcap(tmp_path / "answer.pcap", human_answer(seed=3, duration_s=3.0).pcm)
    events = EventRecorder()
    with (
        running_sipp("uas_answer_audio.xml", tmp_path) as customer,
        running_sipp("uas_agent.xml", tmp_path, rtp_echo=True) as agent,
    ):
        async with SipPool(loopback_settings(customer.host)) as pool:
            pool.start(events)
            # One worker, two slots per customer call: the agent leg's slot is booked up front.
            assert pool.capacity() == 2
            await dial(pool, request("b1", detect_machine=False))
            assert pool.capacity() == 1
            await events.wait_for("b1", CallAnswered)
            alice = AgentTarget("alice", f"sip:alice@{agent.host}")
            await pool.connect_agent("b1", alice, TransferMode.BRIDGE)
            connected = await events.wait_for("b1", AgentConnected)
            await pool.hangup("b1")
            assert await events.wait_terminal("b1") == CallEnded("b1", hangup_by="local")
            # Hanging up the customer hangs up the agent leg; both peers saw their scenario through
            # (the agent's includes the auto-answer header check).
            assert await customer.finished() == 0, customer.errors()
            assert await agent.finished() == 0, agent.errors()
            assert pool.capacity() == 2
    assert connected == AgentConnected("b1", "alice")


async def test_bridge_to_an_agent_that_rejects_reports_failure_and_keeps_the_customer(tmp_path: Path) -> None:
    write_rtp_pcap(tmp_path / "answer.pcap", human_answer(seed=4, duration_s=3.0).pcm)
    events = EventRecorder()
    with (
        running_sipp("uas_answer_audio.xml", tmp_path) as customer,
        running_sipp("uas_reject_486.xml", tmp_path, keys={"cause": "0"}) as agent,
    ):
        async with SipPool(loopback_settings(customer.host)) as pool:
            pool.start(events)
            await dial(pool, request("b2", detect_machine=False))
            await events.wait_for("b2", CallAnswered)
            await pool.connect_agent("b2", AgentTarget("bob", f"sip:bob@{agent.host}"), TransferMode.BRIDGE)
            failed = await events.wait_for("b2", AgentConnectFailed)
            # The customer leg is still up: the engine may try another agent or play a message.
            assert pool.calls_in_progress == 1
            await pool.hangup("b2")
            assert await events.wait_terminal("b2") == CallEnded("b2", hangup_by="local")
            assert await customer.finished() == 0, customer.errors()
            assert await agent.finished() == 0, agent.errors()
    assert failed == AgentConnectFailed("b2", "bob", "agent_sip_486")


async def test_refer_transfers_blind_and_hangs_up_our_leg_after_the_final_2xx(tmp_path: Path) -> None:
    events = EventRecorder()
    with running_sipp("uas_refer.xml", tmp_path) as peer:
        async with SipPool(loopback_settings(peer.host, reserve_agent_slot=False)) as pool:
            pool.start(events)
            assert pool.capacity() == 4
            await dial(pool, request("x1", detect_machine=False))
            answered = await events.wait_for("x1", CallAnswered)
            assert answered.kind is AnswerKind.UNKNOWN
            queue = AgentTarget("queue", "sip:sales@10.0.0.5:5060")
            await pool.connect_agent("x1", queue, TransferMode.REFER)
            assert await events.wait_for("x1", AgentConnected) == AgentConnected("x1", "queue")
            assert await events.wait_terminal("x1") == CallEnded("x1", hangup_by="local")
            assert await peer.finished() == 0, peer.errors()
    assert peer.logged("refer_to") == ["sip:sales@10.0.0.5:5060"]


async def test_refused_refer_reports_failure_and_keeps_the_call(tmp_path: Path) -> None:
    events = EventRecorder()
    with running_sipp("uas_refer_reject.xml", tmp_path) as peer:
        async with SipPool(loopback_settings(peer.host, reserve_agent_slot=False)) as pool:
            pool.start(events)
            await dial(pool, request("x2", detect_machine=False))
            await events.wait_for("x2", CallAnswered)
            await pool.connect_agent("x2", AgentTarget("queue", "sip:sales@10.0.0.5"), TransferMode.REFER)
            failed = await events.wait_for("x2", AgentConnectFailed)
            assert pool.calls_in_progress == 1
            await pool.hangup("x2")
            assert await events.wait_terminal("x2") == CallEnded("x2", hangup_by="local")
            assert await peer.finished() == 0, peer.errors()
    assert failed == AgentConnectFailed("x2", "queue", "refer_603")


async def test_robocall_key_1_during_the_message_bridges_the_listener_to_an_agent(tmp_path: Path) -> None:
    message = write_wav(tmp_path / "message.wav", (tone(300.0, 6.0) * 4000).astype(np.int16))
    events = EventRecorder()
    with (
        running_sipp("uas_dtmf.xml", tmp_path) as listener,
        running_sipp("uas_agent.xml", tmp_path, rtp_echo=True) as agent,
    ):
        async with SipPool(loopback_settings(listener.host)) as pool:
            pool.start(events)
            await dial(pool, request("rc1", detect_machine=False))
            await events.wait_for("rc1", CallAnswered)
            await pool.play("rc1", str(message))
            key = await events.wait_for("rc1", DtmfReceived)
            assert key.digit == "1"
            alice = AgentTarget("alice", f"sip:alice@{agent.host}")
            await pool.connect_agent("rc1", alice, TransferMode.BRIDGE)
            assert await events.wait_for("rc1", AgentConnected) == AgentConnected("rc1", "alice")
            await events.wait_count("rc1", DtmfReceived, 3)  # the listener's later keys still arrive
            await pool.hangup("rc1")
            assert await events.wait_terminal("rc1") == CallEnded("rc1", hangup_by="local")
            assert await listener.finished() == 0, listener.errors()
            assert await agent.finished() == 0, agent.errors()
    # The message stopped when the bridge took over: it never reached its end.
    assert not any(isinstance(e, PlaybackFinished) for e in events.of("rc1"))
