"""The settings that cannot work together, or would leave a ZStack account open to anyone: the
checks that keep a gateway holding ZStack credentials from becoming an open door.

It reads settings through :class:`PolicySettings` (a :class:`~zstack_gateway.settings.config.Config`
is one) and the secrets already read (:class:`~zstack_gateway.settings.secrets.Secrets`), so it
imports neither the configuration module nor files of its own.
"""

from __future__ import annotations

import ipaddress
import ssl
from typing import Protocol
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from zstack_gateway.settings.errors import ConfigError
from zstack_gateway.settings.secrets import Secrets

PASSTHROUGH = "passthrough"
ACCOUNT = "account"
ACCESS_KEY = "access-key"
AUTH_MODES = (PASSTHROUGH, ACCOUNT, ACCESS_KEY)


class PolicySettings(Protocol):
    """The settings the checks read (a :class:`~zstack_gateway.settings.config.Config`)."""

    @property
    def auth_mode(self) -> str: ...
    @property
    def listen(self) -> str: ...
    @property
    def listen_host(self) -> str: ...
    @property
    def demo(self) -> bool: ...
    @property
    def zstack_url(self) -> str: ...
    @property
    def zstack_tz(self) -> str: ...
    @property
    def zstack_account(self) -> str: ...
    @property
    def zstack_password_file(self) -> str: ...
    @property
    def zstack_access_key_id(self) -> str: ...
    @property
    def zstack_access_key_secret_file(self) -> str: ...
    @property
    def access_key_date_zone(self) -> str: ...
    @property
    def tls_cert(self) -> str: ...
    @property
    def tls_key(self) -> str: ...
    @property
    def tls_client_ca(self) -> str: ...
    @property
    def allow_anonymous_callers(self) -> bool: ...
    @property
    def zstack_ca_file(self) -> str: ...
    @property
    def zstack_insecure_skip_verify(self) -> bool: ...


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); a wildcard or any other
    name is not loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def date_zone_name(config: PolicySettings) -> str:
    """The zone AccessKey ``Date`` headers are written in: --access-key-date-zone, else the MN's."""
    return config.access_key_date_zone or config.zstack_tz


def check(config: PolicySettings, secrets: Secrets) -> None:
    """Raise ConfigError when the credential or TLS settings cannot work or would leave a ZStack
    account open to anyone who can reach the listener."""
    mode = config.auth_mode
    if mode not in AUTH_MODES:
        raise ConfigError(f"--auth-mode must be one of {', '.join(AUTH_MODES)}; got {mode!r}")
    _check_mode_settings(config, secrets)
    tokens = secrets.caller_tokens
    if tokens and mode == PASSTHROUGH:
        raise ConfigError(
            "caller tokens (--caller-tokens-file, GATEWAY_CALLER_TOKENS) need --auth-mode account or "
            "access-key: in pass-through mode the caller's 'authorization' metadata carries its own ZStack "
            "session (use --tls-client-ca to restrict who may connect)"
        )
    _check_listener_tls(config)
    _check_zstack_tls(config)
    if mode != PASSTHROUGH and not (
        tokens or config.tls_client_ca or config.allow_anonymous_callers or is_loopback(config.listen_host)
    ):
        who = (
            f"ZStack account {config.zstack_account!r}"
            if mode == ACCOUNT
            else f"the owner of AccessKey {config.zstack_access_key_id!r}"
        )
        raise ConfigError(
            f"refusing to start: with --auth-mode {mode} the gateway calls ZStack as {who}, so anyone who "
            f"can reach --listen {config.listen} would act as that account. Authenticate callers "
            "(--tls-client-ca for mutual TLS, or --caller-tokens-file), listen on a loopback address "
            "only (e.g. --listen 127.0.0.1:50051), or accept the risk with --allow-anonymous-callers"
        )


def _check_mode_settings(config: PolicySettings, secrets: Secrets) -> None:
    mode = config.auth_mode
    account_given = [
        name
        for name, given in (
            ("--zstack-account", bool(config.zstack_account)),
            ("ZSTACK_PASSWORD", bool(secrets.password) and not config.zstack_password_file),
            ("--password-file", bool(config.zstack_password_file)),
        )
        if given
    ]
    key_given = [
        name
        for name, given in (
            ("--zstack-access-key-id", bool(config.zstack_access_key_id)),
            (
                "ZSTACK_ACCESS_KEY_SECRET",
                bool(secrets.access_key_secret) and not config.zstack_access_key_secret_file,
            ),
            ("--access-key-secret-file", bool(config.zstack_access_key_secret_file)),
        )
        if given
    ]
    # Exactly one mode is active: settings of another mode are a mistake, not something to ignore.
    for other, given in ((ACCOUNT, account_given), (ACCESS_KEY, key_given)):
        if given and mode != other:
            raise ConfigError(
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --auth-mode {other}, "
                f"but --auth-mode is {mode}"
            )
    if mode == ACCOUNT:
        if not config.zstack_account:
            raise ConfigError("--auth-mode account needs --zstack-account (ZSTACK_ACCOUNT)")
        if not secrets.password:
            raise ConfigError(
                "--auth-mode account needs the account's password: set ZSTACK_PASSWORD or "
                "--password-file (there is no password flag: command lines are visible to every user)"
            )
    if mode == ACCESS_KEY:
        if not config.zstack_access_key_id:
            raise ConfigError("--auth-mode access-key needs --zstack-access-key-id (ZSTACK_ACCESS_KEY_ID)")
        if ":" in config.zstack_access_key_id or not config.zstack_access_key_id.isprintable():
            raise ConfigError("--zstack-access-key-id must not contain ':' or control characters")
        if not secrets.access_key_secret:
            raise ConfigError(
                "--auth-mode access-key needs the AccessKey secret: set ZSTACK_ACCESS_KEY_SECRET or "
                "--access-key-secret-file"
            )
        zone = date_zone_name(config)
        if zone.upper() not in ("GMT", "UTC"):
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(f"--access-key-date-zone: unknown time zone {zone!r}") from None


def _check_listener_tls(config: PolicySettings) -> None:
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    if config.tls_client_ca and not config.tls_cert:
        raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if not config.tls_cert:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except FileNotFoundError as exc:
        raise ConfigError(f"--tls-cert/--tls-key: no such file {exc.filename!r}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"--tls-cert/--tls-key: cannot use {config.tls_cert!r} with {config.tls_key!r} "
            f"(a PEM certificate chain and its unencrypted PEM private key): {_ssl_reason(exc)}"
        ) from None
    if config.tls_client_ca:
        _check_ca_file(config.tls_client_ca, "--tls-client-ca")


def _check_zstack_tls(config: PolicySettings) -> None:
    if config.zstack_ca_file and config.zstack_insecure_skip_verify:
        raise ConfigError("--zstack-ca-file and --zstack-insecure-skip-verify exclude each other")
    if not config.demo and urlsplit(config.zstack_url).scheme != "https":
        for flag, given in (
            ("--zstack-ca-file", bool(config.zstack_ca_file)),
            ("--zstack-insecure-skip-verify", config.zstack_insecure_skip_verify),
        ):
            if given:
                raise ConfigError(f"{flag} is for an https:// --zstack-url; it is {config.zstack_url!r}")
    if config.zstack_ca_file:
        _check_ca_file(config.zstack_ca_file, "--zstack-ca-file")


def _check_ca_file(path: str, flag: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise ConfigError(f"{flag}: no such file {path!r}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{flag}: {path!r} is not a PEM CA bundle: {_ssl_reason(exc)}") from None


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
