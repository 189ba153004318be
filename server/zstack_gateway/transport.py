"""The one table that turns the HTTP client's (aiohttp's) failures into the gateway's errors.

Used by every request to ZStack: the ZStack client's and the account login's. Each failure keeps
its cause (``raise ... from exc``) for debugging, and says whether repeating the request can do harm:
only failures where nothing of the request can have reached ZStack's logic are ``retryable``.
Timeouts are the callers' business (a call's deadline and a login's own budget differ).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

import aiohttp
from yarl import URL

from zstack_gateway import errors


def _version() -> str:
    try:
        return metadata.version("zstack-grpc-gateway")
    except metadata.PackageNotFoundError:  # run from a checkout that was not installed
        return "0"


#: The User-Agent of every request the gateway sends to ZStack.
USER_AGENT = f"zstack-grpc-gateway/{_version()}"


# aiohttp's failures, most specific first: what the message says, and whether a retry can do harm
# (only when nothing of the request can have reached ZStack's logic).
_FAILURES: tuple[tuple[type[aiohttp.ClientError], Callable[[Any, URL], str], bool], ...] = (
    (
        aiohttp.ClientConnectorCertificateError,  # retrying cannot fix a certificate
        lambda exc, url: (
            f"TLS verification of {url.host}:{url.port} failed ({exc.certificate_error}); "
            "check --zstack-ca-file"
        ),
        False,
    ),
    (
        aiohttp.ClientConnectorError,
        lambda exc, url: (
            f"cannot connect to {url.host}:{url.port}: {exc.os_error.strerror or type(exc.os_error).__name__}"
        ),
        True,
    ),
    (
        # Nothing of an answer arrived: ZStack (or an idle pooled connection) closed first.
        aiohttp.ServerDisconnectedError,
        lambda exc, url: "ZStack closed the connection before answering",
        True,
    ),
    (aiohttp.ClientPayloadError, lambda exc, url: "the connection broke while reading the answer", False),
    (
        aiohttp.ClientResponseError,
        lambda exc, url: f"ZStack sent a malformed HTTP answer ({exc.message})",
        False,
    ),
    (
        aiohttp.ClientOSError,
        lambda exc, url: f"the connection failed: {exc.strerror or type(exc).__name__}",
        False,
    ),
)


@contextlib.contextmanager
def mapped_errors(url: URL, what: str = "") -> Iterator[None]:
    """Run an HTTP exchange with ``url``; its aiohttp failures leave as GatewayErrors whose message
    starts with ``what`` (when given), raised from the original failure."""
    prefix = f"{what}: " if what else ""
    try:
        yield
    except aiohttp.ClientError as exc:
        for kind, text, retryable in _FAILURES:
            if isinstance(exc, kind):
                raise errors.unavailable(prefix + text(exc, url), retryable=retryable) from exc
        raise errors.unavailable(f"{prefix}HTTP failure ({type(exc).__name__})", retryable=False) from exc
