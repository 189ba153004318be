"""Who may call the gateway: caller tokens (``authorization: Bearer <token>``).

In account and AccessKey modes the gateway holds ZStack credentials, so anyone who reaches it acts as
that ZStack account. Callers are then authenticated by mutual TLS (see :mod:`zstack_gateway.tls`),
by caller tokens (this module), or not at all when the gateway listens on loopback only or the
operator said ``--allow-anonymous-callers`` (see :func:`zstack_gateway.settings.policy.check`).

The token check applies to the zstack.v1 services only: health and reflection stay open, so load
balancers and probes work without a token (they reveal nothing of ZStack). Each presented token is
compared with every configured token in constant time (SHA-256 of both, then
``hmac.compare_digest``), so neither the tokens' content nor their lengths leak through timing.
A token is never logged or echoed in a status.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence

from zstack_gateway import errors
from zstack_gateway.auth.base import Authorization, Metadata, authorizations
from zstack_gateway.errors import GatewayError
from zstack_gateway.interceptors import CallerCheck
from zstack_gateway.settings import Config, Secret, policy

log = logging.getLogger("zstack_gateway.callers")


class CallerToken:
    """The caller-token check: refuses calls that carry no valid caller token.

    A refused call gets an UNAUTHENTICATED GatewayError; the gateway's interceptor
    (:class:`zstack_gateway.interceptors.GatewayInterceptor`) runs this check inside its status step,
    which turns the error into a status (with its ErrorInfo), and logs and counts it like any other
    failure.
    """

    def __init__(self, tokens: Sequence[Secret]) -> None:
        if not tokens:
            raise ValueError("CallerToken needs at least one token")
        self._digests = [hashlib.sha256(t.reveal().encode()).digest() for t in tokens]

    def check(self, metadata: Metadata) -> GatewayError | None:
        """None when the metadata carries a configured token, else the error to send."""
        bearer = [
            entry.credentials
            for entry in authorizations(metadata)
            if isinstance(entry, Authorization) and entry.scheme == "bearer" and entry.credentials
        ]
        if not bearer:
            return errors.caller_token_refused(
                errors.Reason.CALLER_TOKEN_MISSING,
                "this gateway requires a caller token: send metadata 'authorization: Bearer <token>'",
            )
        if len(bearer) > 1:
            return errors.caller_token_refused(
                errors.Reason.CALLER_TOKEN_INVALID, "send exactly one 'authorization: Bearer' entry"
            )
        digest = hashlib.sha256(bearer[0].encode()).digest()
        matched = False
        for known in self._digests:  # every token, no early exit
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            return errors.caller_token_refused(
                errors.Reason.CALLER_TOKEN_INVALID, "the caller token is not valid for this gateway"
            )
        return None

    __call__ = check


def checks(config: Config) -> list[CallerCheck]:
    """The caller checks ``config`` asks for (none, or the token check)."""
    tokens = config.secrets.caller_tokens
    if not tokens:
        if config.auth_mode != policy.PASSTHROUGH and not config.tls_client_ca:
            if policy.is_loopback(config.listen_host):
                log.info("callers are not authenticated: the gateway listens on loopback only")
            else:
                log.warning(
                    "--allow-anonymous-callers: anyone who can reach %s calls ZStack as the gateway's "
                    "credentials (--auth-mode %s)",
                    config.listen,
                    config.auth_mode,
                )
        return []
    if not config.tls_cert and not policy.is_loopback(config.listen_host):
        log.warning(
            "caller tokens travel in clear text on %s: serve TLS (--tls-cert, --tls-key) so they "
            "cannot be read on the network",
            config.listen,
        )
    log.info("callers must send one of %d caller tokens ('authorization: Bearer ...')", len(tokens))
    return [CallerToken(tokens)]
