"""The one table that turns the HTTP client's (aiohttp's) failures into the gateway's errors.

Used by every request to ZStack: the ZStack client's and the account login's. Each failure keeps
its cause (``raise ... from exc``) for debugging, and says whether repeating the request can do harm:
only failures where nothing of the request can have reached ZStack's logic are ``retryable``.
Timeouts are the callers' business (a call's deadline and a login's own budget differ).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import metadata

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


@contextlib.contextmanager
def mapped_errors(url: URL, what: str = "") -> Iterator[None]:
    """Run an HTTP exchange with ``url``; its aiohttp failures leave as GatewayErrors whose message
    starts with ``what`` (when given)."""
    prefix = f"{what}: " if what else ""
    try:
        yield
    except aiohttp.ClientConnectorCertificateError as exc:
        # Retrying cannot fix a certificate: fail at once and say what to check.
        raise errors.unavailable(
            f"{prefix}TLS verification of {url.host}:{url.port} failed ({exc.certificate_error}); "
            "check --zstack-ca-file",
            retryable=False,
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        raise errors.unavailable(
            f"{prefix}cannot connect to {url.host}:{url.port}: {reason}", retryable=True
        ) from exc
    except aiohttp.ServerDisconnectedError as exc:
        # Nothing of an answer arrived: ZStack (or an idle pooled connection) closed first.
        raise errors.unavailable(
            f"{prefix}ZStack closed the connection before answering", retryable=True
        ) from exc
    except aiohttp.ClientPayloadError as exc:
        raise errors.unavailable(
            f"{prefix}the connection broke while reading the answer", retryable=False
        ) from exc
    except aiohttp.ClientResponseError as exc:
        raise errors.unavailable(
            f"{prefix}ZStack sent a malformed HTTP answer ({exc.message})", retryable=False
        ) from exc
    except aiohttp.ClientOSError as exc:
        raise errors.unavailable(
            f"{prefix}the connection failed: {exc.strerror or type(exc).__name__}", retryable=False
        ) from exc
    except aiohttp.ClientError as exc:
        raise errors.unavailable(f"{prefix}HTTP failure ({type(exc).__name__})", retryable=False) from exc
