"""What the gate needs to know about a phone number: country, state/province, candidate time zones.

Pure logic over `phonenumbers`. Parsing with `phonenumbers` costs ~15 us a number, too slow for a
gate that must clear 100,000 numbers a second, so NANP numbers are classified once per NPA-NXX
(`+1NPANXX`): `phonenumbers`' NANP validity patterns, time-zone map (prefixes of at most 7 digits
including the country code) and geocoding never look past the exchange, so every number of an
exchange shares one classification. Other numbers are parsed each time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, NamedTuple

import phonenumbers
from phonenumbers import geocoder, timezone

from dialer.errors import ComplianceError


class NumberError(ComplianceError):
    """A number is not a valid, dialable E.164 number."""


UNKNOWN_ZONE: Final = "Etc/Unknown"
"""What `phonenumbers` answers when it knows no time zone for a number."""

US_STATES: Final = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "District of Columbia": "DC",
    "Washington D.C.": "DC", "Florida": "FL", "Georgia": "GA", "Hawaii": "HI", "Idaho": "ID",
    "Illinois": "IL", "Indiana": "IN", "Iowa": "IA", "Kansas": "KS", "Kentucky": "KY",
    "Louisiana": "LA", "Maine": "ME", "Maryland": "MD", "Massachusetts": "MA", "Michigan": "MI",
    "Minnesota": "MN", "Mississippi": "MS", "Missouri": "MO", "Montana": "MT", "Nebraska": "NE",
    "Nevada": "NV", "New Hampshire": "NH", "New Jersey": "NJ", "New Mexico": "NM", "New York": "NY",
    "North Carolina": "NC", "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK", "Oregon": "OR",
    "Pennsylvania": "PA", "Rhode Island": "RI", "South Carolina": "SC", "South Dakota": "SD",
    "Tennessee": "TN", "Texas": "TX", "Utah": "UT", "Vermont": "VT", "Virginia": "VA",
    "Washington": "WA", "West Virginia": "WV", "Wisconsin": "WI", "Wyoming": "WY",
}  # fmt: skip
"""US state names as `phonenumbers`' geocoder spells them, to two-letter postal codes."""

CA_PROVINCES: Final = {
    "Alberta": "AB", "British Columbia": "BC", "Manitoba": "MB", "New Brunswick": "NB",
    "Newfoundland and Labrador": "NL", "Nova Scotia": "NS", "Ontario": "ON",
    "Prince Edward Island": "PE", "Quebec": "QC", "Saskatchewan": "SK", "Northwest Territories": "NT",
    "Nunavut": "NU", "Yukon": "YT",
}  # fmt: skip

_NANP = re.compile(r"^\+1[2-9]\d{2}[2-9]\d{6}$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SUBDIVISION_SUFFIX = re.compile(r", ([A-Z]{2})$")
_CACHE_LIMIT: Final = 1_000_000
"""Exchanges remembered (the NANP has ~700,000 in use): ~100 bytes each, as classifications are shared."""


class NumberInfo(NamedTuple):
    """A classified E.164 number (a named tuple: built for every number the gate checks, so cheap).

    `region` is the ISO country code (`US`, `CA`, `GB`, `GG`, ...); `subdivision` the state or
    province postal code when known; `zones` every IANA zone the number may be in (empty when
    unknown); `npa`/`local` split a NANP number into area code and 7-digit local number.
    """

    e164: str
    region: str
    subdivision: str | None
    zones: tuple[str, ...]
    npa: int | None = None
    local: int | None = None

    @property
    def place(self) -> str:
        """`US-FL` style key of the callee's place (`GB` when no subdivision is known)."""
        return f"{self.region}-{self.subdivision}" if self.subdivision else self.region


@dataclass(frozen=True, slots=True)
class _Exchange:
    region: str
    subdivision: str | None
    zones: tuple[str, ...]


_exchanges: dict[str, _Exchange | None] = {}
_shared: dict[_Exchange, _Exchange] = {}
"""Interned classifications: thousands of exchanges share one (region, state, zones)."""


def _subdivision(region: str, description: str) -> str | None:
    """State/province code from a geocoder description such as 'Florida' or 'Miami, FL'."""
    if region not in ("US", "CA"):
        return None
    m = _SUBDIVISION_SUFFIX.search(description)
    if m:
        return m.group(1)
    table = US_STATES if region == "US" else CA_PROVINCES
    return table.get(description)


def _zones(parsed: phonenumbers.PhoneNumber) -> tuple[str, ...]:
    zones = tuple(z for z in timezone.time_zones_for_number(parsed) if z != UNKNOWN_ZONE)
    return tuple(sorted(set(zones)))


def _parse(number: str) -> phonenumbers.PhoneNumber:
    if not _E164.match(number):
        raise NumberError(f"not an E.164 number ('+' and 7 to 15 digits): {len(number)} characters")
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as exc:
        raise NumberError(f"unparseable number: {exc}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise NumberError("not a valid number for its country (unassigned prefix or wrong length)")
    return parsed


def _classify_exchange(number: str) -> _Exchange | None:
    try:
        parsed = _parse(number)
    except NumberError:
        return None
    region = phonenumbers.region_code_for_number(parsed) or ""
    desc = geocoder.description_for_number(parsed, "en")
    ex = _Exchange(region, _subdivision(region, desc), _zones(parsed))
    return _shared.setdefault(ex, ex)


def classify(number: str) -> NumberInfo:
    """Classify an E.164 number; raise `NumberError` when it is not a valid dialable number."""
    if _NANP.match(number):
        key = number[:8]
        if key in _exchanges:
            ex = _exchanges[key]
        else:
            ex = _classify_exchange(number)
            if len(_exchanges) >= _CACHE_LIMIT:
                _exchanges.clear()
            _exchanges[key] = ex
        if ex is None:
            raise NumberError("not a valid number for its country (unassigned prefix or wrong length)")
        return NumberInfo(number, ex.region, ex.subdivision, ex.zones, int(number[2:5]), int(number[5:]))
    if number.startswith("+1"):
        raise NumberError("not a NANP number: +1 needs a 3-digit area code and 7-digit number, "
                          "neither starting with 0 or 1")
    parsed = _parse(number)
    region = phonenumbers.region_code_for_number(parsed) or ""
    desc = geocoder.description_for_number(parsed, "en")
    return NumberInfo(number, region, _subdivision(region, desc), _zones(parsed))


def normalise(text: str, default_region: str = "US") -> str:
    """Turn operator input ('+44 20 7123 4567', '(212) 555-0123') into E.164, or raise `NumberError`."""
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise NumberError(f"unparseable number {text!r}: {exc}") from None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    classify(e164)
    return e164
