"""The lab's sipp peers, started for real on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.sipp import Sipp

pytestmark = pytest.mark.integration


def test_sipp_starts_on_other_media_ports_when_one_was_taken_meanwhile(tmp_path: Path) -> None:
    # The ports were free when the peer was made; a pjsua2 worker opening its RTP ports can take one
    # before sipp binds it (seen in a full run: "Unable to bind audio RTP socket", errno 98).
    sipp = Sipp("uas_agent.xml", tmp_path, calls=0)
    taken = sipp.media_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", taken))
        try:
            sipp.start()
            assert sipp.proc is not None and sipp.proc.poll() is None
            assert sipp.media_port != taken
        finally:
            sipp.stop()
