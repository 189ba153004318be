"""AccessKey mode: the gateway signs every request as ZStack's SDKs do.

``Authorization: ZStack <keyId>:<base64 HMAC-SHA1(secret, METHOD\\nDate\\n/v1/<path>)>`` and ``Date``.
The secret and the signatures are never logged or put into an error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta, tzinfo
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from zstack_gateway.auth.base import CallerAuth, Metadata, digest, refuse_zstack_credentials
from zstack_gateway.errors import GatewayError
from zstack_gateway.settings import Secret
from zstack_gateway.settings.policy import ACCESS_KEY

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def date_zone(name: str) -> tzinfo:
    """``GMT``/``UTC`` or an IANA zone name."""
    return UTC if name.upper() in ("GMT", "UTC") else ZoneInfo(name)


def http_date(moment: datetime) -> str:
    """``EEE, dd MMM yyyy HH:mm:ss z`` in English, whatever the locale: the zone as ``GMT`` for a zero
    offset, else ``GMT+hh:mm`` (a form Java's parsers read without ambiguity, unlike ``CST``)."""
    offset = moment.utcoffset() or timedelta(0)
    if offset:
        sign = "-" if offset < timedelta(0) else "+"
        minutes = abs(int(offset.total_seconds())) // 60
        zone = f"GMT{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    else:
        zone = "GMT"
    return (
        f"{_DAYS[moment.weekday()]}, {moment.day:02d} {_MONTHS[moment.month - 1]} {moment.year:04d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} {zone}"
    )


def access_key_signature(secret: Secret, method: str, date: str, api_path: str) -> str:
    """What ZStack's SDKs send: base64(HMAC-SHA1(secret, METHOD\\nDate\\n/v1/<decoded path>))."""
    to_sign = f"{method}\n{date}\n{unquote(api_path)}".encode()
    mac = hmac.new(secret.reveal().encode("utf-8"), to_sign, hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


class AccessKeySigner:
    """Signs each upstream request with a ZStack AccessKey.

    ``zone`` is the zone the ``Date`` header is written in. ZStack compares ``Date`` with its own
    clock (±15 minutes). With its default ``rest.checkTimeZone=false`` it compares *wall clocks* and
    ignores the zone written, so the Date must be the management node's local time: the default here
    is the MN's zone (``--zstack-tz``). With ``rest.checkTimeZone=true`` any zone works, GMT included.
    """

    def __init__(self, key_id: str, secret: Secret, *, zone: tzinfo = UTC) -> None:
        self._key_id = key_id
        self._secret = secret
        self._zone = zone
        self._identity = digest("access-key", key_id)

    @property
    def key_id(self) -> str:
        return self._key_id

    def authenticate_caller(self, metadata: Metadata) -> CallerAuth:
        refuse_zstack_credentials(metadata, f"AccessKey {self._key_id!r}", ACCESS_KEY)
        return CallerAuth(identity=self._identity)

    async def headers(self, caller: CallerAuth, method: str, api_path: str) -> dict[str, str]:
        date = http_date(datetime.now(self._zone))
        signature = access_key_signature(self._secret, method, date, api_path)
        return {"Authorization": f"ZStack {self._key_id}:{signature}", "Date": date}

    async def refresh_after_invalid_session(self, caller: CallerAuth, error: GatewayError) -> bool:
        return False  # every request is signed afresh; there is no session to renew

    async def problem(self) -> GatewayError | None:
        return None  # a wrong key shows on the first call (UNAUTHENTICATED, ZStack ID.1000)

    async def close(self) -> None:
        return None
