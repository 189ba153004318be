"""The ``Authorization`` header: OAuth sessions and ZStack AccessKeys (contract §2.3).

REST-layer checks, in the server's order (``RestServer.handleApi`` and ``checkTime``):

1. no header -> 400 ``missing header 'Authorization'``; the value is trimmed;
2. ``OAuth...`` (case-sensitive prefix): the rest, trimmed, is the session uuid. Nothing else is
   checked here; an unknown session fails later with 503 ID.1001;
3. ``ZStack...``: ``Date`` missing -> 400; unparsable with ``EEE, dd MMM yyyy HH:mm:ss z`` (English,
   case-insensitive) -> 400; more than 15 minutes off -> 403 ``requestTimeTooSkewed``; then the rest
   must split on ``:`` into exactly two parts (Java ``split``, trailing empties dropped) -> else 400;
4. anything else -> 400 ``Authorization type must be 'OAuth'``.

Skew: with ``rest.checkTimeZone=false`` (ZStack's default, ``check_time_zone=False`` here) the server
compares the *wall-clock* fields of ``Date`` with its own local wall clock and ignores the zone, so a
client must write the MN's local time (a correct GMT ``Date`` sent to an Asia/Shanghai MN is 8 h
"skewed"). With ``check_time_zone=True`` the instants are compared.

The signature check itself is closed source. [INF] We verify what the three SDKs sign:
``base64(HMAC-SHA1(secret, METHOD + "\\n" + Date + "\\n" + "/v1/<path>"))`` with the URL-decoded path
without ``/zstack`` and without the query (the server hands ``getDecodedUrl`` to the backend).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from zstack_sim.params import java_split, java_trim, rest_error

__all__ = [
    "AccessKeyCredentials",
    "Credentials",
    "OAuthCredentials",
    "parse_authorization",
    "parse_http_date",
    "sign",
]

REQUEST_DURATION = timedelta(minutes=15)

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DATE_RE = re.compile(
    r"([A-Za-z]{3}), ([0-9]{2}) ([A-Za-z]{3}) ([0-9]{4,9}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) (\S+)"
)
_OFFSET_RE = re.compile(r"(?:GMT|UTC|UT)?([+-])([0-9]{1,2})(?::?([0-9]{2}))?", re.IGNORECASE)
# [INF] Zone abbreviations we accept; Java's zone-text parser knows many more. CST is read as China
# Standard Time (ZStack's usual zone); it only matters when check_time_zone is on.
_ABBREVIATIONS: dict[str, float] = {
    "CST": 8,
    "HKT": 8,
    "SGT": 8,
    "JST": 9,
    "KST": 9,
    "IST": 5.5,
    "EST": -5,
    "EDT": -4,
    "CDT": -5,
    "MST": -7,
    "MDT": -6,
    "PST": -8,
    "PDT": -7,
    "WET": 0,
    "WEST": 1,
    "BST": 1,
    "CET": 1,
    "CEST": 2,
    "EET": 2,
    "EEST": 3,
    "AEST": 10,
    "AEDT": 11,
}

_DATE_FORMAT_ERROR = "'Date' format error, correct format is 'EEE, dd MMM yyyy HH:mm:ss z'"


@dataclass(frozen=True, slots=True)
class OAuthCredentials:
    session_uuid: str


@dataclass(frozen=True, slots=True)
class AccessKeyCredentials:
    key_id: str
    signature: str
    date: str


Credentials = OAuthCredentials | AccessKeyCredentials


def _parse_zone(text: str) -> tzinfo | None:
    upper = text.upper()
    if upper in ("Z", "GMT", "UTC", "UT"):
        return UTC
    match = _OFFSET_RE.fullmatch(text)
    if match:
        sign, hours, minutes = match.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
        if delta > timedelta(hours=18):
            return None
        return timezone(-delta if sign == "-" else delta)
    if upper in _ABBREVIATIONS:
        return timezone(timedelta(hours=_ABBREVIATIONS[upper]))
    if "/" in text:
        try:
            return ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError):
            return None
    return None


def parse_http_date(text: str) -> datetime | None:
    """Parse ``Date`` as the server's formatter does; ``None`` where it would throw.

    The result carries the zone written in the header (its wall-clock fields are as written).
    """
    match = _DATE_RE.fullmatch(text)
    if not match:
        return None
    dow, day, mon, year, hour, minute, second, zone_text = match.groups()
    if dow.lower() not in _DAYS or mon.lower() not in _MONTHS:
        return None
    zone = _parse_zone(zone_text)
    if zone is None:
        return None
    try:
        moment = datetime(
            int(year),
            _MONTHS.index(mon.lower()) + 1,
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=zone,
        )
    except ValueError:
        return None
    # The SMART resolver cross-checks the day of week against the date.
    if _DAYS[moment.weekday()] != dow.lower():
        return None
    return moment


def _check_time(date_header: str | None, now: datetime, check_time_zone: bool) -> None:
    if date_header is None:
        raise rest_error(400, "'Date' must be incuded in request header")
    date = parse_http_date(date_header)
    if date is None:
        raise rest_error(400, _DATE_FORMAT_ERROR)
    # Off by default (rest.checkTimeZone=false): compare wall clocks, ignoring the zones.
    skew = abs(date - now) if check_time_zone else abs(date.replace(tzinfo=None) - now.replace(tzinfo=None))
    if skew > REQUEST_DURATION:
        raise rest_error(403, "requestTimeTooSkewed")


def parse_authorization(
    authorization: str | None, date_header: str | None, *, now: datetime, check_time_zone: bool
) -> Credentials:
    """Run the REST layer's Authorization checks; raises RestError with the plain-text reply.

    ``now`` is the MN's current time, aware, in the MN's zone.
    """
    if authorization is None:
        raise rest_error(400, "missing header 'Authorization'")
    auth = java_trim(authorization)
    if auth.startswith("OAuth"):
        return OAuthCredentials(java_trim(auth[len("OAuth") :]))
    if auth.startswith("ZStack"):
        _check_time(date_header, now, check_time_zone)
        value = java_trim(auth[len("ZStack") :])
        parts = java_split(value, ":")
        if len(parts) != 2:
            raise rest_error(400, "accessKey format is 'ZStack AccessKeyId:Signature'")
        return AccessKeyCredentials(parts[0], parts[1], date_header or "")
    raise rest_error(400, "Authorization type must be 'OAuth'")


def sign(secret: str, method: str, date: str, path: str) -> str:
    """The AccessKey signature the SDKs send; ``path`` starts with ``/v1/``."""
    to_sign = f"{method}\n{date}\n{path}".encode()
    digest = hmac.new(secret.encode("utf-8"), to_sign, hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_matches(secret: str, creds: AccessKeyCredentials, method: str, path: str) -> bool:
    return hmac.compare_digest(sign(secret, method, creds.date, path), creds.signature)
