"""Do-not-call data on Redis: national/state registries, internal and campaign lists, opt-outs.

Registry layout (NANP: `us-national`, `ca-dncl`, `state-XX`)
    One Redis string per registry and area code, `{p}dnc:reg:{registry}:{npa}`, used as a bitmap of
    10^7 bits (1.25 MB) indexed by the 7-digit local number NXX-XXXX. Exchanges 000-199 never carry a
    dialable number (an NXX starts with 2-9), so the first 2,000,000 bits are free for a header:
    bit 0 is a sentinel, always 1 in a loaded copy, and bits 32-63 hold the copy's as-of date (days
    since 1970-01-01, u32). A missing key reads as all zeros in Redis, so "sentinel 0" means "no copy"
    and the gate blocks; one `BITFIELD_RO key GET u1 0 GET u32 32 GET u1 <local>` reads presence,
    freshness and the number's bit atomically. The whole US+Canadian plan (~360 NPAs) fits in ~0.45 GB
    whatever the number of registered numbers.

    Per registry and area code a hash `{p}dnc:meta:{registry}:{npa}` records as-of date, SHA-256 of
    the source files, distinct numbers and source lines; the set `{p}dnc:npas:{registry}` lists the
    covered area codes (state registries apply only to the area codes they cover).

Non-NANP registries (`uk-tps`, `uk-ctps`): compact per-prefix layout
    E.164 digits split into a prefix (all but the last 5 digits) and a 5-digit suffix; one bitmap per
    prefix, `{p}dnc:intl:{registry}:{prefix}`, with the same header (sentinel bit 0, as-of at bits
    32-63) and the suffix at bit 64 + suffix (12.5 kB per block of 100,000 numbers). Blocks without any
    registered number are not stored: the catalogue set `{p}dnc:blocks:{registry}` names the stored
    blocks so a deleted block is told apart from an empty one, and `{p}dnc:meta:{registry}:all`
    carries the registry's as-of date.

Loads never show a partial list: every bitmap is built in memory (numpy, vectorised per file), written
to a staged key, and all staged keys of one load are swapped in with RENAME inside one MULTI/EXEC
together with their metadata. Any malformed line refuses the whole load, reporting every bad line.

Internal (company) and per-campaign lists are Redis sets of E.164 numbers: `{p}dnc:internal`,
`{p}dnc:campaign:{name}`; every change is appended to the audit stream `{p}dnc:audit`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import struct
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
import structlog

from dialer.compliance.numbers import NumberError, classify
from dialer.errors import ComplianceError
from dialer.logging import mask_number

log = structlog.get_logger(__name__)

BITMAP_BITS: Final = 10_000_000
BITMAP_BYTES: Final = BITMAP_BITS // 8
SENTINEL_BIT: Final = 0
AS_OF_BIT: Final = 32
"""Bits 32-63 of every registry bitmap hold its as-of date as an unsigned 32-bit day number."""
FIRST_LOCAL: Final = 2_000_000
"""Lowest 7-digit local number that can be dialled (NXX 200); everything below is header space."""
INTL_SUFFIX_DIGITS: Final = 5
INTL_HEADER_BITS: Final = 64
INTL_BLOCK_BYTES: Final = (INTL_HEADER_BITS + 10**INTL_SUFFIX_DIGITS + 7) // 8
STAGE_TTL_S: Final = 3600
"""Staged keys of a crashed loader expire instead of lingering (RENAME carries the TTL: we PERSIST)."""
MAX_REPORTED_LINES: Final = 50
"""Malformed lines listed one by one in a load error; all of them are counted."""

NANP_REGISTRIES: Final = ("us-national", "ca-dncl")
INTL_REGISTRIES: Final = {"uk-tps": "44", "uk-ctps": "44"}
"""Non-NANP registries and the country code their national-format lines belong to."""

_STATE = re.compile(r"^state-[A-Z]{2}$")
_CAMPAIGN = re.compile(r"^[A-Za-z0-9_.-]+$")  # as `CampaignConfig.name`
_NL = ord("\n")
_CR = ord("\r")
_COMMA = ord(",")
_ZERO = ord("0")


class RegistryKind(StrEnum):
    """How a registry is stored and consulted."""

    NATIONAL = "national"  # NANP bitmaps; every number of the country needs its area code loaded
    STATE = "state"  # NANP bitmaps; consulted for the area codes the state list covers
    INTL = "intl"  # compact per-prefix blocks (UK TPS/CTPS)


class RegistryLoadError(ComplianceError):
    """A registry load was refused; `problems` lists every reason (malformed lines with their numbers)."""

    def __init__(self, summary: str, problems: Sequence[str] = (), malformed: int = 0) -> None:
        self.summary = summary
        self.problems = list(problems)
        self.malformed = malformed
        lines = [summary, *self.problems]
        super().__init__("\n  ".join(lines))


def registry_kind(name: str) -> RegistryKind:
    """Kind of the registry called `name`; `ComplianceError` for a name we do not know."""
    if name in NANP_REGISTRIES:
        return RegistryKind.NATIONAL
    if _STATE.match(name):
        return RegistryKind.STATE
    if name in INTL_REGISTRIES:
        return RegistryKind.INTL
    raise ComplianceError(
        f"unknown registry {name!r}: expected us-national, ca-dncl, state-XX (two capital letters), "
        f"{', '.join(sorted(INTL_REGISTRIES))}"
    )


@dataclass(frozen=True, slots=True)
class DncKeys:
    """Redis key names, under a common prefix."""

    prefix: str = "dialer:"

    def __post_init__(self) -> None:
        # The gate's lookup script receives keys inside tab/newline-separated arguments.
        if any(ch.isspace() for ch in self.prefix):
            raise ComplianceError(f"key prefix {self.prefix!r} must not contain white space")

    def registry(self, registry: str, npa: int) -> str:
        return f"{self.prefix}dnc:reg:{registry}:{npa}"

    def meta(self, registry: str, npa: int | str) -> str:
        return f"{self.prefix}dnc:meta:{registry}:{npa}"

    def npas(self, registry: str) -> str:
        return f"{self.prefix}dnc:npas:{registry}"

    def block(self, registry: str, prefix: str) -> str:
        return f"{self.prefix}dnc:intl:{registry}:{prefix}"

    def blocks(self, registry: str) -> str:
        return f"{self.prefix}dnc:blocks:{registry}"

    def stage(self, token: str, live_key: str) -> str:
        return f"{self.prefix}dnc:stage:{token}:{live_key}"

    def lock(self, registry: str) -> str:
        return f"{self.prefix}dnc:lock:{registry}"

    @property
    def internal(self) -> str:
        return f"{self.prefix}dnc:internal"

    def campaign(self, name: str) -> str:
        return f"{self.prefix}dnc:campaign:{name}"

    @property
    def audit(self) -> str:
        return f"{self.prefix}dnc:audit"

    def protect(self, number: str) -> str:
        return f"{self.prefix}abandon:protect:{number}"


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes; typing allows str)."""
    return value.decode() if isinstance(value, bytes) else value


def connect(url: str, *, timeout_s: float = 2.0) -> aioredis.Redis:
    """A Redis client for DNC data: binary values, bounded connect and socket timeouts."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=False
    )
    return client


def day_number(d: date) -> int:
    """Days since 1970-01-01 (the as-of encoding in bitmap headers)."""
    return d.toordinal() - date(1970, 1, 1).toordinal()


def day_date(day: int) -> date:
    """Inverse of `day_number`."""
    return date.fromordinal(day + date(1970, 1, 1).toordinal())


# Parsing -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ParsedNanp:
    """Valid records of one source: area codes, local numbers and (change lists) add/delete flags."""

    npa: npt.NDArray[np.int64]
    local: npt.NDArray[np.int64]
    add: npt.NDArray[np.bool_] | None
    lines: int
    malformed: int
    problems: list[str] = field(default_factory=list)


def _line_bounds(buf: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Start and end (exclusive, without '\\n' or '\\r\\n') of every line of `buf`."""
    ends = np.flatnonzero(buf == _NL).astype(np.int64)
    if buf.size and buf[-1] != _NL:
        ends = np.append(ends, np.int64(buf.size))
    starts = np.empty_like(ends)
    if ends.size:
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    last = np.maximum(ends - 1, 0)
    has_cr = (ends > starts) & (buf[last] == _CR) if buf.size else np.zeros(0, bool)
    return starts, ends - has_cr.astype(np.int64)


def parse_nanp(data: bytes, source: str, *, changes: bool = False) -> ParsedNanp:
    """Parse a NANP registry file, vectorised with numpy.

    Accepted lines: `NPANXXXXXX` (10 digits) or `NPA,NXXXXXX`; in change lists each is followed by
    `,A` (addition) or `,D` (deletion). Both NPA and NXX must start with 2-9. Empty lines carry no
    record and are skipped; anything else is malformed and reported as `source:line: ...`.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    starts, ends = _line_bounds(buf)
    lengths = ends - starts
    n = starts.size
    size = buf.size

    def at(pos: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
        return buf[np.minimum(pos, size - 1)] if size else np.zeros(pos.size, np.uint8)

    comma_fmt = (lengths >= 11) & (at(starts + 3) == _COMMA)
    shift = comma_fmt.astype(np.int64)
    record_len = 10 + shift
    ok = np.ones(n, dtype=bool)
    value = np.zeros(n, dtype=np.int64)
    for k in range(10):
        pos = starts + k + (shift if k >= 3 else 0)
        digit = at(pos).astype(np.int16) - _ZERO
        ok &= (digit >= 0) & (digit <= 9)
        value = value * 10 + np.clip(digit, 0, 9)
    add: npt.NDArray[np.bool_] | None = None
    if changes:
        sep = at(starts + record_len)
        flag = at(starts + record_len + 1) | 0x20  # lower-case
        ok &= (lengths == record_len + 2) & (sep == _COMMA) & ((flag == ord("a")) | (flag == ord("d")))
        add = flag == ord("a")
    else:
        ok &= lengths == record_len
    npa = value // 10_000_000
    local = value % 10_000_000
    ok &= (npa >= 200) & (local >= FIRST_LOCAL)
    blank = lengths == 0
    bad = ~ok & ~blank
    bad_idx = np.flatnonzero(bad)
    problems = []
    expected = "NPANXXXXXX or NPA,NXXXXXX followed by ,A or ,D" if changes else "NPANXXXXXX or NPA,NXXXXXX"
    for i in bad_idx[:MAX_REPORTED_LINES]:
        text = bytes(data[int(starts[i]) : int(min(ends[i], starts[i] + 40))]).decode("ascii", "replace")
        problems.append(f"{source}:{int(i) + 1}: expected {expected} (area code and exchange 2-9), "
                        f"got {text!r}")
    keep = ok & ~blank
    return ParsedNanp(
        npa=npa[keep], local=local[keep], add=add[keep] if add is not None else None,
        lines=int(keep.sum()), malformed=int(bad_idx.size), problems=problems,
    )


@dataclass(slots=True)
class ParsedIntl:
    """Valid records of a non-NANP source, as E.164 digit strings (without '+')."""

    numbers: list[str]
    lines: int
    malformed: int
    problems: list[str] = field(default_factory=list)


_INTL_LINE = re.compile(r"^\+?(\d{8,15})$")


def parse_intl(data: bytes, source: str, country_code: str) -> ParsedIntl:
    """Parse a non-NANP list: one number a line, E.164 (`+447...`, `447...`) or national (`07...`)."""
    numbers: list[str] = []
    problems: list[str] = []
    malformed = 0
    for i, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.strip().replace(b" ", b"").decode("ascii", "replace")
        if not line:
            continue
        m = _INTL_LINE.match(line)
        digits = m.group(1) if m else ""
        if digits.startswith("0") and not line.startswith("+"):
            digits = country_code + digits[1:]
        if not digits.startswith(country_code) or not (10 <= len(digits) <= 15):
            malformed += 1
            if len(problems) < MAX_REPORTED_LINES:
                problems.append(f"{source}:{i}: expected a +{country_code} number (E.164 or national with "
                                f"leading 0), got {line[:40]!r}")
            continue
        numbers.append(digits)
    return ParsedIntl(numbers, len(numbers), malformed, problems)


@dataclass(frozen=True, slots=True)
class Source:
    """One parseable unit: a plain file, or one member of a zip archive."""

    label: str
    data: bytes
    file: Path


def iter_sources(paths: Iterable[Path]) -> Iterator[Source]:
    """Each file's content, or each member of a zip archive's; reading errors are `RegistryLoadError`."""
    for path in paths:
        try:
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    for info in zf.infolist():
                        if not info.is_dir():
                            yield Source(f"{path.name}:{info.filename}", zf.read(info), path)
            else:
                yield Source(path.name, path.read_bytes(), path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise RegistryLoadError(f"cannot read {path}: {exc}") from None


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def default_as_of(paths: Iterable[Path]) -> date:
    """The registries' files carry no date inside: use the oldest zip entry date or file mtime (UTC)."""
    dates: list[date] = []
    for path in paths:
        try:
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    dates.extend(date(*i.date_time[:3]) for i in zf.infolist() if not i.is_dir())
                    continue
            dates.append(datetime.fromtimestamp(path.stat().st_mtime, UTC).date())
        except (OSError, zipfile.BadZipFile) as exc:
            raise RegistryLoadError(f"cannot read {path}: {exc}") from None
    if not dates:
        raise RegistryLoadError("no input files")
    return min(dates)


def _header(bitmap: npt.NDArray[np.uint8], as_of_day: int) -> None:
    """Write sentinel and as-of date into a bitmap's header bits (Redis bit 0 = MSB of byte 0)."""
    bitmap[0] |= 0x80
    bitmap[AS_OF_BIT // 8 : AS_OF_BIT // 8 + 4] = np.frombuffer(struct.pack(">I", as_of_day), np.uint8)


def bitmap_records(bitmap: npt.NDArray[np.uint8]) -> int:
    """Distinct numbers in a NANP bitmap (header bits excluded)."""
    return int(np.bitwise_count(bitmap[FIRST_LOCAL // 8 :]).sum())


class _BitmapBuilder:
    """Accumulates local numbers into packed per-NPA bitmaps (Redis bit order)."""

    def __init__(self) -> None:
        self.bitmaps: dict[int, npt.NDArray[np.uint8]] = {}
        self.lines: dict[int, int] = {}
        self._scratch = np.zeros(BITMAP_BITS, dtype=bool)

    def add(self, npa: npt.NDArray[np.int64], local: npt.NDArray[np.int64]) -> None:
        if npa.size == 0:
            return
        order = np.argsort(npa, kind="stable")
        npa_sorted = npa[order]
        uniq, first = np.unique(npa_sorted, return_index=True)
        bounds = [*first.tolist(), npa_sorted.size]
        for j, code in enumerate(uniq.tolist()):
            locs = local[order[bounds[j] : bounds[j + 1]]]
            self._scratch[locs] = True
            packed = np.packbits(self._scratch)
            self._scratch[locs] = False
            if code in self.bitmaps:
                self.bitmaps[code] |= packed
            else:
                self.bitmaps[code] = packed
            self.lines[code] = self.lines.get(code, 0) + int(locs.size)


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a successful load did."""

    registry: str
    as_of: date
    lines: int  # records read from the files
    units: dict[str, int]  # area code (or block prefix) -> distinct numbers now in the copy
    seconds: float
    files: tuple[str, ...]


# Loading ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _ParsedFiles:
    """Every file of one NANP load, parsed and accumulated into bitmaps (additions and deletions)."""

    builder: _BitmapBuilder
    deletions: _BitmapBuilder
    lines: int
    shas: dict[int, set[str]]
    malformed: int
    problems: list[str]
    file_sha: dict[Path, str]


def _parse_nanp_files(paths: Sequence[Path], changes: bool) -> _ParsedFiles:
    """Parse every file (each zip member) of a NANP load; keeps going after a bad line to report all."""
    out = _ParsedFiles(_BitmapBuilder(), _BitmapBuilder(), 0, {}, 0, [],
                       {p: sha256_file(p) for p in paths})
    for src in iter_sources(paths):
        parsed = parse_nanp(src.data, src.label, changes=changes)
        out.malformed += parsed.malformed
        out.problems.extend(parsed.problems[: max(MAX_REPORTED_LINES - len(out.problems), 0)])
        if out.malformed:
            continue  # keep parsing to report every bad line, but build nothing more
        out.lines += parsed.lines
        if parsed.add is not None:
            # Within one change list the last line about a number wins.
            key = parsed.npa * 10_000_000 + parsed.local
            _, idx = np.unique(key[::-1], return_index=True)
            last = parsed.npa.size - 1 - idx
            adds = parsed.add[last]
            out.builder.add(parsed.npa[last][adds], parsed.local[last][adds])
            out.deletions.add(parsed.npa[last][~adds], parsed.local[last][~adds])
        else:
            out.builder.add(parsed.npa, parsed.local)
        for code in np.unique(parsed.npa).tolist():
            out.shas.setdefault(code, set()).add(out.file_sha[src.file])
    return out


_Blocks = dict[str, npt.NDArray[np.uint8]]


def _build_intl(registry: str, paths: Sequence[Path], as_of: date) -> tuple[list[str], _Blocks]:
    """Parse a non-NANP load and build its blocks; `RegistryLoadError` listing every bad line."""
    cc = INTL_REGISTRIES[registry]
    problems: list[str] = []
    malformed = 0
    numbers: list[str] = []
    for src in iter_sources(paths):
        parsed = parse_intl(src.data, src.label, cc)
        malformed += parsed.malformed
        problems.extend(parsed.problems[: max(MAX_REPORTED_LINES - len(problems), 0)])
        if not malformed:
            numbers.extend(parsed.numbers)
    if malformed:
        if malformed > len(problems):
            problems.append(f"... and {malformed - len(problems)} more malformed lines")
        raise RegistryLoadError(
            f"{registry}: refused: {malformed} malformed line(s); nothing was loaded", problems, malformed
        )
    if not numbers:
        raise RegistryLoadError(f"{registry}: the files hold no record; nothing was loaded")
    as_of_day = day_number(as_of)
    blocks: dict[str, npt.NDArray[np.uint8]] = {}
    for digits in numbers:
        prefix, suffix = digits[:-INTL_SUFFIX_DIGITS], int(digits[-INTL_SUFFIX_DIGITS:])
        bm = blocks.get(prefix)
        if bm is None:
            bm = blocks[prefix] = np.zeros(INTL_BLOCK_BYTES, dtype=np.uint8)
            _header(bm, as_of_day)
        bit = INTL_HEADER_BITS + suffix
        bm[bit >> 3] |= 0x80 >> (bit & 7)
    return numbers, blocks


class RegistryLoader:
    """Loads registry files into Redis with an atomic swap; see the module docstring for the layout."""

    def __init__(self, redis: aioredis.Redis, keys: DncKeys | None = None, *, write_batch: int = 16) -> None:
        self.redis = redis
        self.keys = keys or DncKeys()
        self.write_batch = write_batch

    async def load(self, registry: str, paths: Sequence[Path], *, as_of: date | None = None,
                   changes: bool = False, now: float | None = None) -> LoadReport:
        """Load `paths` as the registry's copy (full: replaces the area codes they contain; change
        list: applies additions/deletions to the loaded copy). Raises `RegistryLoadError`, leaving
        the live copy untouched, on any malformed line or missing prerequisite."""
        kind = registry_kind(registry)
        if not paths:
            raise RegistryLoadError("no input files")
        as_of = as_of or default_as_of(paths)
        now = time.time() if now is None else now
        if as_of > datetime.fromtimestamp(now, UTC).date():
            raise RegistryLoadError(f"as-of date {as_of.isoformat()} is in the future")
        if changes and kind is RegistryKind.INTL:
            raise RegistryLoadError(f"{registry}: change lists are supported for NANP registries only")
        started = time.perf_counter()
        token = secrets.token_hex(8)
        lock = self.keys.lock(registry)
        if not await self.redis.set(lock, token, nx=True, ex=STAGE_TTL_S):
            raise RegistryLoadError(f"another load of {registry} is running (lock {lock})")
        try:
            if kind is RegistryKind.INTL:
                lines, units = await self._load_intl(registry, paths, as_of, token, now)
            else:
                lines, units = await self._load_nanp(registry, paths, as_of, token, now, changes)
        finally:
            # Release only our own lock (a crashed run's lock expires by itself).
            if await self.redis.get(lock) == token.encode():
                await self.redis.delete(lock)
        seconds = time.perf_counter() - started
        log.info("dnc_registry_loaded", registry=registry, as_of=as_of.isoformat(), lines=lines,
                 units=len(units), seconds=round(seconds, 3), mode="changes" if changes else "full")
        return LoadReport(registry, as_of, lines, units, seconds, tuple(p.name for p in paths))

    async def _load_nanp(self, registry: str, paths: Sequence[Path], as_of: date, token: str,
                         now: float, changes: bool) -> tuple[int, dict[str, int]]:
        # Reading, hashing and parsing take seconds to a minute: off the event loop.
        parsed = await asyncio.to_thread(_parse_nanp_files, paths, changes)
        builder, deletions, lines, shas = parsed.builder, parsed.deletions, parsed.lines, parsed.shas
        malformed, problems, file_sha = parsed.malformed, parsed.problems, parsed.file_sha
        if malformed:
            more = malformed - len(problems)
            if more > 0:
                problems.append(f"... and {more} more malformed lines")
            raise RegistryLoadError(
                f"{registry}: refused: {malformed} malformed line(s); nothing was loaded", problems, malformed
            )
        as_of_day = day_number(as_of)
        if changes:
            bitmaps = await self._apply_changes(registry, builder, deletions)
            for code in bitmaps:
                shas.setdefault(code, set()).update(file_sha.values())
        else:
            bitmaps = builder.bitmaps
        if not bitmaps:
            raise RegistryLoadError(f"{registry}: the files hold no record; nothing was loaded")
        for bm in bitmaps.values():
            _header(bm, as_of_day)
        units = {str(code): bitmap_records(bm) for code, bm in bitmaps.items()}
        live = {code: self.keys.registry(registry, code) for code in bitmaps}
        staged = {code: self.keys.stage(token, live[code]) for code in bitmaps}
        try:
            codes = sorted(bitmaps)
            for i in range(0, len(codes), self.write_batch):
                pipe = self.redis.pipeline(transaction=False)
                for code in codes[i : i + self.write_batch]:
                    pipe.set(staged[code], bitmaps[code].tobytes(), ex=STAGE_TTL_S)
                await pipe.execute()
            swap = self.redis.pipeline(transaction=True)
            for code in codes:
                swap.rename(staged[code], live[code])
                swap.persist(live[code])
                meta = self.keys.meta(registry, code)
                swap.delete(meta)
                swap.hset(meta, mapping={
                    "as_of": as_of.isoformat(), "as_of_day": as_of_day,
                    "sha256": ",".join(sorted(shas.get(code, set()))),
                    "records": units[str(code)], "lines": builder.lines.get(code, 0),
                    "loaded_at": now, "mode": "changes" if changes else "full",
                    "files": ",".join(p.name for p in paths),
                })
                swap.sadd(self.keys.npas(registry), code)
            await swap.execute()
        except BaseException:
            await self.redis.delete(*staged.values())
            raise
        return lines, units

    async def _apply_changes(self, registry: str, adds: _BitmapBuilder,
                             dels: _BitmapBuilder) -> dict[int, npt.NDArray[np.uint8]]:
        """Current copies of every covered area code, with the change list applied."""
        covered = {int(c) for c in await self.redis.smembers(self.keys.npas(registry))}
        touched = set(adds.bitmaps) | set(dels.bitmaps)
        uncovered = sorted(touched - covered)
        if uncovered:
            raise RegistryLoadError(
                f"{registry}: refused: the change list names area codes without a loaded copy "
                f"({', '.join(map(str, uncovered))}); load a full copy first"
            )
        if not covered:
            raise RegistryLoadError(f"{registry}: refused: no loaded copy to apply a change list to")
        result = {}
        for code in sorted(covered):
            raw = await self.redis.get(self.keys.registry(registry, code))
            if not isinstance(raw, bytes) or len(raw) != BITMAP_BYTES or not raw[0] & 0x80:
                raise RegistryLoadError(
                    f"{registry}: refused: the loaded copy of area code {code} is missing or damaged; "
                    f"load a full copy first"
                )
            bm = np.frombuffer(raw, dtype=np.uint8).copy()
            if code in dels.bitmaps:
                bm &= ~dels.bitmaps[code]
            if code in adds.bitmaps:
                bm |= adds.bitmaps[code]
            result[code] = bm
        return result

    async def _load_intl(self, registry: str, paths: Sequence[Path], as_of: date, token: str,
                         now: float) -> tuple[int, dict[str, int]]:
        # Parsing and building run off the event loop (pure Python: ~1 s per million numbers).
        numbers, blocks = await asyncio.to_thread(_build_intl, registry, paths, as_of)
        units = {p: int(np.bitwise_count(bm[INTL_HEADER_BITS // 8 :]).sum()) for p, bm in blocks.items()}
        old = {as_text(b) for b in await self.redis.smembers(self.keys.blocks(registry))}
        live = {p: self.keys.block(registry, p) for p in blocks}
        staged = {p: self.keys.stage(token, live[p]) for p in blocks}
        sha = ",".join(sha256_file(p) for p in paths)
        try:
            prefixes = sorted(blocks)
            for i in range(0, len(prefixes), 256):
                pipe = self.redis.pipeline(transaction=False)
                for p in prefixes[i : i + 256]:
                    pipe.set(staged[p], blocks[p].tobytes(), ex=STAGE_TTL_S)
                await pipe.execute()
            swap = self.redis.pipeline(transaction=True)
            for p in prefixes:
                swap.rename(staged[p], live[p])
                swap.persist(live[p])
            gone = sorted(old - set(blocks))
            if gone:
                swap.delete(*(self.keys.block(registry, p) for p in gone))
            swap.delete(self.keys.blocks(registry))
            swap.sadd(self.keys.blocks(registry), *prefixes)
            meta = self.keys.meta(registry, "all")
            swap.delete(meta)
            swap.hset(meta, mapping={
                "as_of": as_of.isoformat(), "as_of_day": day_number(as_of), "sha256": sha,
                "records": sum(units.values()), "lines": len(numbers), "loaded_at": now, "mode": "full",
                "files": ",".join(p.name for p in paths),
            })
            await swap.execute()
        except BaseException:
            await self.redis.delete(*staged.values())
            raise
        return len(numbers), units


@dataclass(frozen=True, slots=True)
class CopyStatus:
    """Metadata of one loaded registry copy (an area code, or `all` for non-NANP registries)."""

    registry: str
    unit: str
    as_of: date
    records: int
    sha256: str


async def registry_status(redis: aioredis.Redis, registry: str,
                          keys: DncKeys | None = None) -> list[CopyStatus]:
    """Every loaded copy of a registry with its metadata."""
    keys = keys or DncKeys()
    kind = registry_kind(registry)
    units = ["all"] if kind is RegistryKind.INTL else sorted(
        (as_text(m) for m in await redis.smembers(keys.npas(registry))), key=int
    )
    out = []
    for unit in units:
        meta = {as_text(k): as_text(v) for k, v in (await redis.hgetall(keys.meta(registry, unit))).items()}
        if meta:
            out.append(CopyStatus(registry, unit, date.fromisoformat(meta["as_of"]), int(meta["records"]),
                                  meta["sha256"]))
    return out


# Internal and campaign lists ------------------------------------------------------------------------


class OptOutSource(StrEnum):
    """Where an opt-out came from (kept in the audit stream)."""

    API = "api"
    DTMF = "dtmf"
    DISPOSITION = "disposition"
    CLI = "cli"


class DncLists:
    """The internal (company-wide) list and per-campaign lists: Redis sets of E.164 numbers."""

    def __init__(self, redis: aioredis.Redis, keys: DncKeys | None = None) -> None:
        self.redis = redis
        self.keys = keys or DncKeys()

    def _key(self, campaign: str | None) -> str:
        if campaign is None:
            return self.keys.internal
        if not _CAMPAIGN.match(campaign):
            raise ComplianceError(f"{campaign!r} is not a campaign name (letters, digits, _ . -)")
        return self.keys.campaign(campaign)

    @staticmethod
    def _validated(number: str) -> str:
        classify(number)  # raises NumberError with a precise message
        return number

    async def add(self, number: str, *, campaign: str | None = None, source: str = OptOutSource.CLI,
                  at: float | None = None) -> bool:
        """Add an E.164 number to the internal list (or a campaign's); True if it was not there yet."""
        number = self._validated(number)
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(self._key(campaign), number)
        pipe.xadd(self.keys.audit, {"op": "add", "number": number, "campaign": campaign or "",
                                    "source": str(source), "at": at if at is not None else time.time()},
                  maxlen=1_000_000, approximate=True)
        added, _ = await pipe.execute()
        return bool(added)

    async def remove(self, number: str, *, campaign: str | None = None, at: float | None = None) -> bool:
        """Remove a number from the internal list (or a campaign's); True if it was there."""
        number = self._validated(number)
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(self._key(campaign), number)
        pipe.xadd(self.keys.audit, {"op": "remove", "number": number, "campaign": campaign or "",
                                    "source": "cli", "at": at if at is not None else time.time()},
                  maxlen=1_000_000, approximate=True)
        removed, _ = await pipe.execute()
        return bool(removed)

    async def contains(self, number: str, *, campaign: str | None = None) -> bool:
        """Whether the number is on the internal list (or the campaign's)."""
        return bool(await self.redis.sismember(self._key(campaign), number))


class OptOutRecorder:
    """Writes an opt-out to the internal DNC list before the call ends (invariant 5).

    The engine awaits `opt_out` before hanging up; it raises (`NumberError`, a Redis error) when the
    opt-out could not be stored, so the caller can retry or alert rather than lose it.
    """

    SOURCES: Final = frozenset({OptOutSource.API, OptOutSource.DTMF, OptOutSource.DISPOSITION})

    def __init__(self, lists: DncLists) -> None:
        self.lists = lists

    async def opt_out(self, number: str, campaign: str, source: str) -> None:
        """Put `number` on the company-wide list: an opt-out binds every campaign of the caller."""
        if source not in self.SOURCES:
            raise ComplianceError(
                f"unknown opt-out source {source!r}: expected one of {sorted(str(s) for s in self.SOURCES)}"
            )
        try:
            await self.lists.add(number, source=source, at=time.time())
        except NumberError:
            log.error("dnc_opt_out_rejected", campaign=campaign, source=source, number=mask_number(number))
            raise
        log.info("dnc_opt_out", campaign=campaign, source=source, number=mask_number(number))
