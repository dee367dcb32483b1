"""Registry file parsing (numpy, vectorised) and number classification."""

from __future__ import annotations

import random

import numpy as np
import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialer.compliance.dnc import (
    DncKeys,
    _BitmapBuilder,
    _header,
    bitmap_records,
    day_date,
    day_number,
    parse_intl,
    parse_nanp,
    registry_kind,
)
from dialer.compliance.numbers import NumberError, classify, normalise
from dialer.errors import ComplianceError


def test_both_flat_formats_crlf_and_blank_lines() -> None:
    data = b"2125550123\r\n212,5550124\n\n3055550100"
    p = parse_nanp(data, "f.txt")
    assert p.malformed == 0 and p.problems == []
    assert p.lines == 3
    assert p.npa.tolist() == [212, 212, 305]
    assert p.local.tolist() == [5550123, 5550124, 5550100]
    assert p.add is None


def test_empty_file() -> None:
    p = parse_nanp(b"", "empty.txt")
    assert (p.lines, p.malformed) == (0, 0)


def test_malformed_lines_are_counted_and_reported_with_line_numbers() -> None:
    data = (b"2125550123\n212555012\n21255501234\n212,555012x\n1125550123\n2121550123\nNPA,NUMBER\n"
            b"2125550199\n")
    p = parse_nanp(data, "bad.txt")
    assert p.malformed == 6
    assert p.lines == 2  # only the valid ones are returned; the loader refuses the file anyway
    lines = [msg.split(":")[1] for msg in p.problems]
    assert lines == ["2", "3", "4", "5", "6", "7"]
    assert p.problems[0] == ("bad.txt:2: expected NPANXXXXXX or NPA,NXXXXXX (area code and exchange 2-9), "
                             "got '212555012'")
    assert "'1125550123'" in p.problems[3]  # area code starting with 1
    assert "'2121550123'" in p.problems[4]  # exchange starting with 1


def test_change_list_flags() -> None:
    data = b"2125550123,A\n212,5550124,d\n2125550125\n2125550126,X\n"
    p = parse_nanp(data, "chg.txt", changes=True)
    assert p.malformed == 2
    assert [m.split(":")[1] for m in p.problems] == ["3", "4"]
    assert "followed by ,A or ,D" in p.problems[0]
    assert p.add is not None and p.add.tolist() == [True, False]
    assert p.local.tolist() == [5550123, 5550124]


def test_vectorised_parse_agrees_with_a_plain_loop() -> None:
    rng = random.Random(7)
    lines = []
    for _ in range(2000):
        npa, local = rng.randint(200, 999), rng.randint(2_000_000, 9_999_999)
        lines.append(f"{npa},{local:07d}" if rng.random() < 0.5 else f"{npa}{local:07d}")
    p = parse_nanp("\n".join(lines).encode(), "r.txt")
    expected = [int(x.replace(",", "")) for x in lines]
    assert (p.npa * 10_000_000 + p.local).tolist() == expected


def test_bitmap_layout_matches_redis_bit_order() -> None:
    b = _BitmapBuilder()
    b.add(np.array([212, 212, 305]), np.array([5550123, 2000000, 9999999]))
    bm = b.bitmaps[212]
    _header(bm, day_number(day_date(20000)))
    # Redis: bit offset n is byte n // 8, mask 0x80 >> (n % 8).
    for off in (5550123, 2000000):
        assert bm[off // 8] & (0x80 >> (off % 8))
    assert bm[0] == 0x80  # sentinel
    assert int.from_bytes(bm[4:8].tobytes(), "big") == 20000  # as-of u32 at bit 32
    assert bitmap_records(bm) == 2
    assert b.lines == {212: 2, 305: 1}


def test_intl_parse_accepts_e164_and_national_forms() -> None:
    data = b"+447911123456\n447911123457\n07911123458\n02071234567\n\n+33123456789\n0791\n"
    p = parse_intl(data, "tps.txt", "44")
    assert p.numbers == ["447911123456", "447911123457", "447911123458", "442071234567"]
    assert p.malformed == 2
    assert p.problems[0] == ("tps.txt:6: expected a +44 number (E.164 or national with leading 0), "
                             "got '+33123456789'")


def test_registry_names() -> None:
    assert registry_kind("us-national").value == "national"
    assert registry_kind("state-PA").value == "state"
    assert registry_kind("uk-tps").value == "intl"
    with pytest.raises(ComplianceError, match="unknown registry 'state-pa'"):
        registry_kind("state-pa")


def test_classify_nanp_and_errors() -> None:
    info = classify("+13055550123")
    assert (info.region, info.subdivision, info.npa, info.local) == ("US", "FL", 305, 5550123)
    assert classify("+14165550123").place == "CA-ON"
    assert classify("+442071234567").place == "GB"
    with pytest.raises(NumberError, match=r"not an E\.164 number"):
        classify("2125550123")
    with pytest.raises(NumberError, match="not a NANP number"):
        classify("+1212555012")
    with pytest.raises(NumberError, match="not a valid number for its country"):
        classify("+15555550123")  # 555 is not an assigned area code
    with pytest.raises(NumberError, match="not a valid number for its country"):
        classify("+4420712")


def test_exchange_cache_agrees_with_phonenumbers() -> None:
    # The NANP fast path classifies once per NPA-NXX; every number must get what phonenumbers says.
    rng = random.Random(11)
    for _ in range(3000):
        n = f"+1{rng.randint(200, 999)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        valid = phonenumbers.is_valid_number(phonenumbers.parse(n))
        try:
            classify(n)
            assert valid, n
        except NumberError:
            assert not valid, n


def test_normalise_operator_input() -> None:
    assert normalise("(212) 555-0123") == "+12125550123"
    assert normalise("+44 20 7123 4567") == "+442071234567"
    with pytest.raises(NumberError, match="unparseable number 'abc'"):
        normalise("abc")


def test_key_prefix_without_white_space() -> None:
    assert DncKeys("acme:").registry("us-national", 212) == "acme:dnc:reg:us-national:212"
    with pytest.raises(ComplianceError, match="key prefix 'a b:' must not contain white space"):
        DncKeys("a b:")


def reference_parse(data: bytes, changes: bool) -> tuple[list[int], list[bool], list[int]]:
    """A plain line-by-line reading of the same formats: (numbers, add flags, malformed line numbers)."""
    numbers, flags, bad = [], [], []
    for i, raw in enumerate(data.split(b"\n"), start=1):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        text = line.decode("latin-1")
        flag = True
        if changes:
            if len(text) < 2 or text[-2] != "," or text[-1] not in "AaDd":
                bad.append(i)
                continue
            flag, text = text[-1] in "Aa", text[:-2]
        if len(text) == 11 and text[3] == ",":
            text = text[:3] + text[4:]
        if len(text) != 10 or not text.isascii() or not text.isdigit() or text[0] in "01" or text[3] in "01":
            bad.append(i)
            continue
        numbers.append(int(text))
        flags.append(flag)
    return numbers, flags, bad


line_parts = st.sampled_from(["2125550123", "212,5550123", "9999999999", "2121550123", "1125550123", "212",
                              ",", "A", "D", "a", "x", "\r", "", "0", "5", "21255501234", " "])


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.lists(line_parts, max_size=4).map("".join), max_size=30),
       changes=st.booleans(), final_newline=st.booleans())
def test_vectorised_parser_matches_a_plain_reading(lines: list[str], changes: bool,
                                                   final_newline: bool) -> None:
    data = "\n".join(lines).encode() + (b"\n" if final_newline and lines else b"")
    numbers, flags, bad = reference_parse(data, changes)
    p = parse_nanp(data, "h.txt", changes=changes)
    assert (p.npa * 10_000_000 + p.local).tolist() == numbers
    assert p.malformed == len(bad)
    assert [int(m.split(":")[1]) for m in p.problems] == bad[:50]
    if changes:
        assert p.add is not None and p.add.tolist() == flags
