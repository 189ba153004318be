"""Time-zone lookup for the simulated management node's local time."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["resolve_tz"]


def resolve_tz(tz: tzinfo | str) -> tzinfo:
    """An IANA name (``Asia/Shanghai``), ``UTC``, a fixed offset (``+08:00``) or a tzinfo."""
    if not isinstance(tz, str):
        return tz
    name = tz.strip()
    if name.upper() in ("UTC", "GMT", "Z"):
        return UTC
    if name[:1] in "+-" and len(name) >= 3:
        sign = -1 if name[0] == "-" else 1
        hours, _, minutes = name[1:].partition(":")
        if not minutes and len(hours) == 4:
            hours, minutes = hours[:2], hours[2:]
        try:
            delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
        except ValueError as exc:
            raise ValueError(f"unknown time zone {tz!r}") from exc
        return timezone(sign * delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r}") from exc
