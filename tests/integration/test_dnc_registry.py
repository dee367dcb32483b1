"""Registry loads into a real redis-server: formats, zips, metadata, change lists, refusals, the CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from dialer.cli import main
from dialer.compliance.cli import redis_url
from dialer.compliance.dnc import (
    AS_OF_BIT,
    BITMAP_BYTES,
    DncKeys,
    RegistryLoader,
    RegistryLoadError,
    as_text,
    connect,
    day_number,
    registry_status,
)
from tests.integration.compliance_support import NOW, campaign, days_ago, write_lines
from tests.support.servers import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
K = DncKeys()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = connect(redis_url)
    yield c
    await c.aclose()


async def bit(client: aioredis.Redis, registry: str, npa: int, local: int) -> int:
    return int(await client.getbit(K.registry(registry, npa), local))


async def test_full_load_plain_comma_and_zipped_with_metadata(client: aioredis.Redis, tmp_path: Path) -> None:
    plain = write_lines(tmp_path / "a.txt", "2125550123", "2125550124")
    comma = write_lines(tmp_path / "b.txt", "212,5550125", "310,5550100")
    zipped = tmp_path / "c.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("415.txt", "4155550100\r\n4155550101\r\n")
    report = await RegistryLoader(client).load("us-national", [plain, comma, zipped], as_of=days_ago(1),
                                               now=NOW)
    assert report.lines == 6
    assert report.units == {"212": 3, "310": 1, "415": 2}
    for npa, local in ((212, 5550123), (212, 5550125), (310, 5550100), (415, 5550101)):
        assert await bit(client, "us-national", npa, local) == 1
    assert await bit(client, "us-national", 212, 5550126) == 0
    raw = await client.get(K.registry("us-national", 212))
    assert isinstance(raw, bytes) and len(raw) == BITMAP_BYTES
    assert await client.getbit(K.registry("us-national", 212), 0) == 1  # sentinel
    as_of = int.from_bytes(raw[AS_OF_BIT // 8 : AS_OF_BIT // 8 + 4], "big")
    assert as_of == day_number(days_ago(1))
    assert await client.ttl(K.registry("us-national", 212)) == -1  # staged TTL removed on swap
    meta = await client.hgetall(K.meta("us-national", 212))
    assert meta[b"as_of"] == days_ago(1).isoformat().encode()
    assert meta[b"records"] == b"3"
    shas = set(as_text(meta[b"sha256"]).split(","))
    assert shas == {hashlib.sha256(p.read_bytes()).hexdigest() for p in (plain, comma)}
    status = await registry_status(client, "us-national")
    assert [(s.unit, s.records) for s in status] == [("212", 3), ("310", 1), ("415", 2)]
    assert await client.keys(f"{K.prefix}dnc:stage:*") == []


async def test_malformed_file_refuses_the_whole_load_and_keeps_the_old_copy(
        client: aioredis.Redis, tmp_path: Path) -> None:
    good = write_lines(tmp_path / "good.txt", "2125550123")
    loader = RegistryLoader(client)
    await loader.load("us-national", [good], as_of=days_ago(5), now=NOW)
    before = await client.get(K.registry("us-national", 212))
    new_ok = write_lines(tmp_path / "new.txt", "2125550999", "3105550100")
    bad = write_lines(tmp_path / "bad.txt", "2125550124", "21255501", "2125550125", "hello")
    with pytest.raises(RegistryLoadError) as err:
        await loader.load("us-national", [new_ok, bad], as_of=days_ago(1), now=NOW)
    assert err.value.malformed == 2
    assert err.value.summary == "us-national: refused: 2 malformed line(s); nothing was loaded"
    assert [p.split(": expected")[0] for p in err.value.problems] == ["bad.txt:2", "bad.txt:4"]
    assert await client.get(K.registry("us-national", 212)) == before
    assert await client.exists(K.registry("us-national", 310)) == 0
    assert (await client.hgetall(K.meta("us-national", 212)))[b"as_of"] == days_ago(5).isoformat().encode()
    assert await client.keys(f"{K.prefix}dnc:stage:*") == []


async def test_change_list_adds_and_deletes_and_refreshes_every_covered_area_code(
        client: aioredis.Redis, tmp_path: Path) -> None:
    loader = RegistryLoader(client)
    base = write_lines(tmp_path / "base.txt", "2125550123", "2125550124", "3105550100")
    await loader.load("us-national", [base], as_of=days_ago(20), now=NOW)
    changes = write_lines(tmp_path / "chg.txt", "2125550123,D", "212,5550200,A", "2125550300,A",
                          "2125550300,D")
    report = await loader.load("us-national", [changes], as_of=days_ago(1), changes=True, now=NOW)
    assert report.units == {"212": 2, "310": 1}
    assert await bit(client, "us-national", 212, 5550123) == 0
    assert await bit(client, "us-national", 212, 5550124) == 1
    assert await bit(client, "us-national", 212, 5550200) == 1
    assert await bit(client, "us-national", 212, 5550300) == 0  # the last line about a number wins
    assert await bit(client, "us-national", 310, 5550100) == 1
    for npa in (212, 310):
        meta = await client.hgetall(K.meta("us-national", npa))
        assert meta[b"as_of"] == days_ago(1).isoformat().encode() and meta[b"mode"] == b"changes"


async def test_change_list_for_an_area_code_without_a_copy_is_refused(client: aioredis.Redis,
                                                                     tmp_path: Path) -> None:
    loader = RegistryLoader(client)
    await loader.load("us-national", [write_lines(tmp_path / "b.txt", "2125550123")], as_of=days_ago(3),
                      now=NOW)
    chg = write_lines(tmp_path / "c.txt", "4155550100,A")
    with pytest.raises(RegistryLoadError, match=r"area codes without a loaded copy \(415\); load a full"):
        await loader.load("us-national", [chg], as_of=days_ago(1), changes=True, now=NOW)
    await client.delete(K.registry("us-national", 212))
    with pytest.raises(RegistryLoadError, match="copy of area code 212 is missing or damaged"):
        await loader.load("us-national", [write_lines(tmp_path / "d.txt", "2125550100,A")],
                          as_of=days_ago(1), changes=True, now=NOW)


async def test_refusals_with_precise_messages(client: aioredis.Redis, tmp_path: Path) -> None:
    loader = RegistryLoader(client)
    f = write_lines(tmp_path / "a.txt", "2125550123")
    with pytest.raises(RegistryLoadError, match="as-of date 2026-12-25 is in the future"):
        await loader.load("us-national", [f], as_of=datetime(2026, 12, 25).date(), now=NOW)
    with pytest.raises(RegistryLoadError, match="the files hold no record"):
        await loader.load("us-national", [write_lines(tmp_path / "e.txt")], as_of=days_ago(1), now=NOW)
    await client.set(K.lock("us-national"), "someone-else")
    with pytest.raises(RegistryLoadError, match="another load of us-national is running"):
        await loader.load("us-national", [f], as_of=days_ago(1), now=NOW)
    assert await client.get(K.lock("us-national")) == b"someone-else"


async def test_uk_tps_compact_blocks_replace_the_previous_copy(client: aioredis.Redis,
                                                               tmp_path: Path) -> None:
    loader = RegistryLoader(client)
    v1 = write_lines(tmp_path / "v1.txt", "+447911000001", "07911000002", "02071234567")
    report = await loader.load("uk-tps", [v1], as_of=days_ago(2), now=NOW)
    assert report.units == {"4479110": 2, "4420712": 1}
    assert await client.strlen(K.block("uk-tps", "4479110")) == 12508
    v2 = write_lines(tmp_path / "v2.txt", "+447911000003")
    await loader.load("uk-tps", [v2], as_of=days_ago(1), now=NOW)
    assert await client.exists(K.block("uk-tps", "4420712")) == 0
    assert await client.smembers(K.blocks("uk-tps")) == {b"4479110"}
    assert await client.getbit(K.block("uk-tps", "4479110"), 64 + 3) == 1
    assert await client.getbit(K.block("uk-tps", "4479110"), 64 + 1) == 0


# The command line ---------------------------------------------------------------------------------


def dialer(*args: str, redis_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DIALER_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dialer", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=60, check=False)


def test_cli_load_add_check_remove(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    f = write_lines(tmp_path / "212.txt", "2125550123")
    campaigns = tmp_path / "config" / "campaigns"
    campaigns.mkdir(parents=True)
    # The campaign allows all day: only the legal window (08:00-21:00) applies.
    (campaigns / "late.toml").write_text('[pacing]\npolicy = "progressive"\n\n'
                                         '[hours.overrides.US]\nstart = 00:00:00\nend = 23:59:59\n')
    check = ("dnc", "check", "--campaign", "late", "--at", "2026-11-25T17:00:00")  # noon in New York
    # The interface outside checks use: `python -m dialer`, Redis from DIALER_REDIS_URL.
    r = dialer("dnc", "load", "--registry", "us-national", str(f), redis_url=redis_url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "us-national: loaded 1 records as of" in r.stdout
    r = dialer(*check, "+12125550124", redis_url=redis_url, cwd=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, "dialable: +12125550124 for campaign late")
    r = dialer(*check, "+12125550123", redis_url=redis_url, cwd=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (1, "blocked: dnc_national: on the us-national registry")
    # The rest in-process: same entry point, faster.
    monkeypatch.setenv("DIALER_REDIS_URL", redis_url)
    monkeypatch.chdir(tmp_path)
    assert run_cli("dnc", "add", "(212) 555-0124") == 0
    assert capsys.readouterr().out == "+12125550124 added to the internal do-not-call list\n"
    assert run_cli(*check, "+12125550124") == 1
    assert capsys.readouterr().out == "blocked: dnc_internal: on the internal do-not-call list\n"
    assert run_cli("dnc", "remove", "+12125550124") == 0
    assert capsys.readouterr().out == "+12125550124 removed from the internal do-not-call list\n"
    assert run_cli("dnc", "add", "+12125550124", "--campaign", "late") == 0
    assert run_cli(*check, "+12125550124") == 1
    assert "blocked: dnc_campaign" in capsys.readouterr().out
    assert run_cli("dnc", "check", "+12125550125", "--at", "2026-11-25T11:00:00") == 1
    assert capsys.readouterr().out.startswith("blocked: outside_hours: 06:00 in America/New_York")
    assert run_cli("dnc", "check", "12125") == 1
    assert capsys.readouterr().out.startswith("blocked: unparseable_number")


def run_cli(*args: str) -> int:
    """The `dialer` command in-process (the subprocess test above covers `python -m dialer`)."""
    return main(list(args))


def test_cli_usage_errors_exit_2(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DIALER_REDIS_URL", redis_url)
    monkeypatch.chdir(tmp_path)
    assert run_cli("dnc", "check", "+12125550124", "--campaign", "missing") == 2
    assert "missing.toml: no such campaign file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_cli("dnc", "check")
    assert exc.value.code == 2
    assert "the following arguments are required: number" in capsys.readouterr().err
    assert run_cli("dnc", "load", "--registry", "state-pa", "x.txt") == 2
    assert "unknown registry 'state-pa'" in capsys.readouterr().err
    assert run_cli("dnc", "load", "--registry", "state-PA", "x.txt") == 2
    assert "x.txt: no such file" in capsys.readouterr().err
    assert run_cli("dnc", "add", "hello") == 2
    assert "unparseable number 'hello'" in capsys.readouterr().err


def test_cli_malformed_load_exits_1_with_line_numbers(redis_url: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_lines(tmp_path / "bad.txt", "2125550123", "oops")
    assert run_cli("dnc", "load", "--redis-url", redis_url, "--registry", "us-national", "--as-of",
                   "2026-01-01", str(bad)) == 1
    err = capsys.readouterr().err
    assert "refused: 1 malformed line(s); nothing was loaded" in err
    assert "bad.txt:2: expected NPANXXXXXX or NPA,NXXXXXX" in err


def test_cli_status(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("dnc", "status", "--redis-url", redis_url, "--registry", "ca-dncl") == 1
    assert capsys.readouterr().out == "ca-dncl: no loaded copy\n"
    f = write_lines(tmp_path / "416.txt", "4165550100", "4165550101")
    assert run_cli("dnc", "load", "--redis-url", redis_url, "--registry", "ca-dncl", str(f)) == 0
    capsys.readouterr()
    assert run_cli("dnc", "status", "--redis-url", redis_url, "--registry", "ca-dncl") == 0
    assert capsys.readouterr().out.startswith("ca-dncl 416: as of ")


def test_cli_redis_down_blocks(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DIALER_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert run_cli("dnc", "check", "+12125550124", "--at", "2026-11-25T17:00:00") == 1
    assert capsys.readouterr().out.startswith("blocked: store_unavailable: redis: ConnectionError")


def test_redis_url_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "dialer.toml"
    cfg.write_text('[redis]\nurl = "redis://config:6379/0"\n')
    monkeypatch.delenv("DIALER_REDIS_URL", raising=False)
    assert redis_url(None, cfg) == "redis://config:6379/0"
    assert redis_url(None, tmp_path / "absent.toml") == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("DIALER_REDIS_URL", "redis://env:6379/1")
    assert redis_url(None, cfg) == "redis://env:6379/1"
    assert redis_url("redis://flag:6379/2", cfg) == "redis://flag:6379/2"


def test_campaign_helper_is_valid() -> None:
    assert campaign().dnc.max_age_days == 31
