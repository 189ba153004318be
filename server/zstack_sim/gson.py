"""Gson-compatible JSON encoding and timestamps, as the ZStack management node writes them.

ZStack serializes REST bodies with Gson 2.8.9 on Java 8 (contract §3.3, §3.4):

* compact output, ``null`` fields omitted (the caller builds dicts without ``None`` values;
  :func:`dumps` drops any ``None`` it still finds in a dict), keys in Java declaration order
  (dicts keep insertion order, so the caller inserts them in that order);
* HTML escaping on: ``<``, ``>``, ``&``, ``=`` and ``'`` inside strings become ``\\u003c``, ``\\u003e``,
  ``\\u0026``, ``\\u003d``, ``\\u0027``; U+2028 and U+2029 are always escaped; other non-ASCII text is
  written as raw UTF-8;
* integers without a decimal point;
* ``java.util.Date``/``Timestamp`` in the Java 8 ``DateFormat.DEFAULT`` pattern for ``Locale.US``,
  ``MMM d, yyyy h:mm:ss a`` (``Jul 22, 2022 11:54:07 AM``), in the management node's local time zone,
  seconds precision, no zone designator.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

__all__ = ["dumps", "format_date", "is_gson_date", "parse_date", "to_gson_date"]

# Characters that only ever occur inside JSON strings, so a translation over the whole document is safe.
_GSON_ESCAPES = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "=": "\\u003d",
        "'": "\\u0027",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_GSON_DATE_RE = re.compile(
    r"^(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (\d{1,2}), (\d{4}),? (\d{1,2}):(\d{2}):(\d{2})"
    r"[ \u202f](AM|PM)$"
)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def dumps(value: Any) -> bytes:
    """Encode ``value`` the way ZStack's REST layer does; returns UTF-8 bytes."""
    text = json.dumps(_drop_nulls(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.translate(_GSON_ESCAPES).encode("utf-8", "replace")


# Java's zone tables start here; before it Java writes every time in the zone's raw offset.
_JAVA_ZONES_START = datetime(1901, 12, 13, 20, 45, 52, tzinfo=UTC)


def _java_raw_offset(tz: tzinfo) -> timedelta:
    probe = datetime(2000, 1, 1)
    return (tz.utcoffset(probe) or timedelta(0)) - (tz.dst(probe) or timedelta(0))


def format_date(moment: datetime, tz: tzinfo) -> str:
    """Format an aware ``datetime`` as Gson on Java 8 does, in the management node's zone ``tz``
    (before 1901-12-13, in the zone's raw offset, as Java does, not in local mean time)."""
    if moment < _JAVA_ZONES_START:
        local = moment.astimezone(timezone(_java_raw_offset(tz)))
    else:
        local = moment.astimezone(tz)
    hour12 = local.hour % 12 or 12
    ampm = "AM" if local.hour < 12 else "PM"
    return (
        f"{_MONTHS[local.month - 1]} {local.day}, {local.year} "
        f"{hour12}:{local.minute:02d}:{local.second:02d} {ampm}"
    )


def is_gson_date(text: str) -> bool:
    return _GSON_DATE_RE.match(text) is not None


def parse_date(text: str, tz: tzinfo) -> datetime:
    """Parse a date as the data files may hold it: ISO-8601 (with or without offset) or a Gson string.

    A value without an offset (naive ISO, or any Gson string) is taken as local time in ``tz``.
    The Java 9+ forms (comma after the year, narrow no-break space before AM/PM) are accepted too.
    """
    match = _GSON_DATE_RE.match(text)
    if match:
        mon, day, year, hour, minute, second, ampm = match.groups()
        h = int(hour) % 12 + (12 if ampm == "PM" else 0)
        return _as_java_reads(
            datetime(int(year), _MONTHS.index(mon) + 1, int(day), h, int(minute), int(second)), tz
        )
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = _as_java_reads(moment, tz)
    return moment


def _as_java_reads(naive: datetime, tz: tzinfo) -> datetime:
    """A wall-clock time in ``tz`` as Java reads it: in standard time when it occurs twice or never,
    and in the zone's raw offset before 1901-12-13."""
    if naive.replace(tzinfo=UTC) < _JAVA_ZONES_START + timedelta(days=1):
        return naive.replace(tzinfo=timezone(_java_raw_offset(tz)))
    fold0, fold1 = naive.replace(tzinfo=tz), naive.replace(tzinfo=tz, fold=1)
    standard_later = (fold1.dst() or timedelta(0)) <= (fold0.dst() or timedelta(0))
    return fold1 if fold0.utcoffset() != fold1.utcoffset() and standard_later else fold0


def to_gson_date(value: str, tz: tzinfo) -> str:
    """Render a data-file date as the management node would send it.

    Gson strings are passed through unchanged (they are already MN-local); ISO-8601 values are
    converted to ``tz``.
    """
    if is_gson_date(value):
        return value
    return format_date(parse_date(value, tz), tz)
