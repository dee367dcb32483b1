"""SDP rewriting the worker needs. Pure text processing, tested without pjsua2."""

from __future__ import annotations

import re

TELEPHONE_EVENT_PT = 101
"""The payload type nearly every peer (sipp's pcaps, most gateways) sends RFC 2833 events with."""

_RTPMAP_TE = re.compile(r"^a=rtpmap:(\d+) telephone-event/(\d+)\s*$", re.IGNORECASE)


def offer_telephone_event_as_101(sdp: str) -> str:
    """Rewrite our SDP offer so telephone-event uses payload type 101 at 8 kHz.

    pjsua offers telephone-event at dynamic types 120/121; peers that answer with (or blindly send)
    101 get their digits dropped as "Bad RTP pt 101". The 8 kHz entry is renumbered to 101 and any
    other telephone-event clock rate is removed from the offer. The m= line, rtpmap and fmtp lines
    are kept consistent. An SDP that already uses 101, or has no 8 kHz telephone-event, is returned
    unchanged.
    """
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    te: dict[str, str] = {}
    for line in lines:
        match = _RTPMAP_TE.match(line)
        if match:
            te[match.group(1)] = match.group(2)
    keep = next((pt for pt, rate in te.items() if rate == "8000"), None)
    if keep is None or keep == str(TELEPHONE_EVENT_PT):
        return sdp
    drop = {pt for pt in te if pt != keep}
    used = {p for line in lines if line.startswith("m=audio") for p in line.split()[3:]}
    if str(TELEPHONE_EVENT_PT) in used:
        return sdp  # 101 is taken by another codec: renumbering would collide
    new = str(TELEPHONE_EVENT_PT)
    out: list[str] = []
    for line in lines:
        if line.startswith("m=audio"):
            parts = line.split()
            fmts = [new if p == keep else p for p in parts[3:] if p not in drop]
            out.append(" ".join(parts[:3] + fmts))
            continue
        attr = re.match(r"^a=(rtpmap|fmtp):(\d+)( .*)?$", line)
        if attr:
            if attr.group(2) in drop:
                continue
            if attr.group(2) == keep:
                out.append(f"a={attr.group(1)}:{new}{attr.group(3) or ''}")
                continue
        out.append(line)
    return eol.join(out)
