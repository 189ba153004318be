"""TLS on both sides of the gateway.

* Callers -> gateway: ``--tls-cert``/``--tls-key`` serve gRPC over TLS; ``--tls-client-ca`` adds
  mutual TLS: a caller must present a certificate signed by that CA, or the handshake fails.
* Gateway -> ZStack: an ``https://`` ``--zstack-url`` is verified against the system's CA store, or
  against ``--zstack-ca-file`` when given. ``--zstack-insecure-skip-verify`` turns verification off
  (with a warning at start-up); it is never the default.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from zstack_gateway.settings import Config

log = logging.getLogger("zstack_gateway.tls")


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """The listener's TLS credentials, or None for plaintext."""
    if not config.tls_cert:
        return None
    key = Path(config.tls_key).read_bytes()
    chain = Path(config.tls_cert).read_bytes()
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def add_port(server: grpc.aio.Server, config: Config) -> int:
    """Bind ``config.listen`` with TLS (or mutual TLS) when configured; the bound port (0: failed)."""
    credentials = server_credentials(config)
    if credentials is None:
        return server.add_insecure_port(config.listen)
    log.info(
        "serving gRPC over TLS%s",
        " with client certificates required (mutual TLS)" if config.tls_client_ca else "",
    )
    return server.add_secure_port(config.listen, credentials)


def zstack_ssl_context(config: Config) -> ssl.SSLContext | bool:
    """What the HTTP client uses for an https:// ZStack: an SSLContext, or True (aiohttp's default,
    verifying against the system store) for plain http:// URLs where it is never used."""
    if urlsplit(config.zstack_url).scheme != "https":
        return True
    context = ssl.create_default_context(cafile=config.zstack_ca_file or None)
    if config.zstack_insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        log.warning(
            "--zstack-insecure-skip-verify: the certificate of %s is NOT verified; anyone on the path "
            "can impersonate ZStack and read the credentials the gateway sends. Use --zstack-ca-file.",
            config.zstack_url,
        )
    return context
