"""TlsConfig: how a client reaches a gateway that serves TLS, or mutual TLS.

    from zstack_iso import IsoClient, TlsConfig

    tls = TlsConfig.from_files(cacert="ca.pem")                       # TLS, the gateway's CA
    tls = TlsConfig.from_files(cacert="ca.pem", cert="client.pem", key="client.key")  # mutual TLS
    with IsoClient("gw.example:50051", tls=tls, token=token) as client:
        ...

``tls=True`` is TLS verified against gRPC's default roots (its bundled set, or the file named by
``$GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["TlsConfig"]


@dataclass(frozen=True, repr=False)
class TlsConfig:
    """TLS settings of a channel to the gateway, all PEM.

    Attributes:
        root_certificates: the CA certificates that verify the gateway's certificate; None: gRPC's
            default roots.
        certificate_chain: mutual TLS: the client's certificate chain (with ``private_key``).
        private_key: mutual TLS: the client's private key, unencrypted (gRPC reads no passphrase).
        server_name: the name the gateway's certificate must carry, when it is not the target's
            host (e.g. the target is an IP address and the certificate names a DNS name).

    The constructor checks the shapes (PEM text, a chain and a key together); :meth:`from_files`
    also parses the files and checks that the certificate and key belong together, so that a wrong
    file fails at once with a message naming it rather than at the first call's handshake.
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        for name in ("root_certificates", "certificate_chain", "private_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bytes):
                raise TypeError(f"{name} must be PEM bytes or None, not {type(value).__name__}")
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mutual TLS needs both certificate_chain and private_key (or neither)")
        for name, marker in (
            ("root_certificates", b"-----BEGIN CERTIFICATE-----"),
            ("certificate_chain", b"-----BEGIN CERTIFICATE-----"),
            ("private_key", b"PRIVATE KEY-----"),
        ):
            value = getattr(self, name)
            if value is not None and marker not in value:
                # Never show the content: it may be a key.
                raise ValueError(f"{name} is not PEM: no '{marker.decode()}' in it")
        if self.private_key is not None and b"ENCRYPTED" in self.private_key:
            raise ValueError("private_key is encrypted; gRPC needs an unencrypted key")
        if self.server_name is not None and not self.server_name.strip():
            raise ValueError("server_name must be a host name, not empty")

    @classmethod
    def from_files(
        cls,
        cacert: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        *,
        server_name: str | None = None,
    ) -> TlsConfig:
        """Read and check PEM files: ``cacert`` (CA bundle; None for gRPC's default roots), and for
        mutual TLS ``cert`` and ``key``. Raises ValueError naming the file that cannot be used."""
        if (cert is None) != (key is None):
            raise ValueError("mutual TLS needs both a certificate and its key (or neither)")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        roots = None
        if cacert is not None:
            roots = _read(cacert, "CA certificates")
            try:
                context.load_verify_locations(cadata=roots.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(f"{cacert}: holds no readable PEM certificate ({_reason(exc)})") from None
        chain = private = None
        if cert is not None and key is not None:
            chain = _read(cert, "certificate")
            private = _read(key, "private key")
            try:
                context.load_verify_locations(cadata=chain.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(f"{cert}: holds no readable PEM certificate ({_reason(exc)})") from None
            try:
                context.load_cert_chain(str(cert), str(key), password=_no_passphrase)
            except _Encrypted:
                raise ValueError(f"{key}: the key is encrypted; gRPC needs an unencrypted key") from None
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(
                    f"{key}: not a PEM private key of the certificate in {cert} ({_reason(exc)})"
                ) from None
        return cls(roots, chain, private, server_name)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]

    def __repr__(self) -> str:
        # Sizes only: the key is a secret, and certificates are long.
        def size(value: bytes | None) -> str:
            return "None" if value is None else f"<{len(value)} bytes>"

        key = "None" if self.private_key is None else "<hidden>"
        return (
            f"TlsConfig(root_certificates={size(self.root_certificates)}, "
            f"certificate_chain={size(self.certificate_chain)}, private_key={key}, "
            f"server_name={self.server_name!r})"
        )


class _Encrypted(Exception):
    """The key file asked for a passphrase."""


def _no_passphrase() -> str:
    raise _Encrypted


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc).split(" (_ssl.c", 1)[0]
