"""One worker process driven directly over its socket: handshake, refusals, exit paths."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from dialer.lab import stop_process
from sip import protocol as p

pytestmark = pytest.mark.integration


class _Worker:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.sock = ours
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sip.worker", "--fd", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        theirs.close()
        self.sock.settimeout(10.0)
        self.reader = self.sock.makefile("rb")

    def send(self, msg: p._Msg) -> None:
        self.sock.sendall(p.encode(msg))

    def receive(self) -> p.Event:
        line = self.reader.readline()
        assert line, "worker closed its socket"
        return p.decode_event(line)

    def results(self) -> Iterator[p.Result]:
        while True:
            event = self.receive()
            if isinstance(event, p.Result):
                yield event


def _configure(seq: int = 1) -> p.Configure:
    return p.Configure(
        seq=seq, worker_index=0, sip_port=0, rtp_port=random.randrange(20000, 32000, 100), rtp_port_range=20,
        attempts_per_s=20.0, account_uri="sip:dialer@127.0.0.1", bind_address="127.0.0.1",
        response_timeout_s=4.0, agent_answer_timeout_s=20.0, amd_max_s=4.0, poll_ms=10, log_level=0,
    )


@pytest.fixture
def worker() -> Iterator[_Worker]:
    w = _Worker()
    try:
        yield w
    finally:
        w.sock.close()
        stop_process(w.proc, 5.0, sig=None)  # closing its socket ends the worker


def test_handshake_commands_and_clean_exit_when_the_pool_goes_away(worker: _Worker) -> None:
    worker.send(_configure())
    ready = worker.receive()
    assert isinstance(ready, p.Ready) and ready.pid == worker.proc.pid and ready.sip_port > 0
    assert next(worker.results()) == p.Result(seq=1, ok=True)

    worker.send(p.Ping(seq=2))
    assert next(worker.results()) == p.Result(seq=2, ok=True)
    worker.send(p.Configure(**{**_configure().model_dump(), "seq": 3}))
    assert next(worker.results()) == p.Result(seq=3, ok=False, error="already configured")
    worker.send(p.Hangup(seq=4, call_id="nobody"))  # a call already over: harmless
    assert next(worker.results()) == p.Result(seq=4, ok=True)
    worker.send(p.Play(seq=5, call_id="nobody", path="/dev/null"))
    assert next(worker.results()) == p.Result(seq=5, ok=False, error="no call nobody")
    bad_uri = p.Dial(seq=6, call_id="c1", uri="sip:", from_uri="sip:a@b", ring_timeout_s=20.0)
    worker.send(bad_uri)
    assert next(worker.results()) == p.Result(seq=6, ok=False, error="malformed SIP URI 'sip:'")

    worker.sock.shutdown(socket.SHUT_WR)  # the pool died: EOF
    assert worker.proc.wait(timeout=5) == 0


def test_garbage_from_the_pool_makes_the_worker_report_and_exit(worker: _Worker) -> None:
    worker.send(_configure())
    assert isinstance(worker.receive(), p.Ready)
    worker.sock.sendall(b'{"v":1,"type":"dial","seq":2}\n')
    event = next(e for e in iter(worker.receive, None) if isinstance(e, p.Log))
    assert event.event == "worker_protocol_error"
    assert "invalid command: dial.call_id: Field required" in event.detail
    assert worker.proc.wait(timeout=5) == 2


def test_a_command_before_configure_is_a_protocol_error(worker: _Worker) -> None:
    worker.send(p.Ping(seq=1))
    event = worker.receive()
    assert isinstance(event, p.Log) and event.detail == "ping before configure"
    assert worker.proc.wait(timeout=5) == 2


def test_a_sip_port_already_taken_is_reported_before_exit(worker: _Worker) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        worker.send(p.Configure(**{**_configure().model_dump(), "sip_port": taken.getsockname()[1]}))
        result = next(worker.results())
    assert not result.ok and result.error.startswith("pjsua: ")
    assert "Address already in use" in result.error
    assert worker.proc.wait(timeout=5) == 2
