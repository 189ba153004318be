"""Credential and transport-security settings: reading secrets, and the checks that keep a gateway
holding ZStack credentials from becoming an open door to a ZStack account.

Secrets come from environment variables or files, never from command-line arguments (``ps`` shows
those to every local user). Files are read at start-up; a missing or empty file is a configuration
error (exit 2), like every other setting that cannot work.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from zstack_gateway.secret import Secret

if TYPE_CHECKING:
    from zstack_gateway.config import Config

PASSTHROUGH = "passthrough"
ACCOUNT = "account"
ACCESS_KEY = "access-key"
AUTH_MODES = (PASSTHROUGH, ACCOUNT, ACCESS_KEY)

#: Caller tokens shorter than this are refused: a token is a password that never changes hands
#: interactively, so there is no reason for a guessable one.
MIN_TOKEN_CHARS = 16
MAX_SECRET_BYTES = 64 * 1024


def _config_error(message: str) -> Exception:
    from zstack_gateway.config import ConfigError

    return ConfigError(message)


def read_secret_file(path: str, flag: str) -> Secret:
    """The file's text without its trailing line break(s); ConfigError when it cannot be used.
    The error never quotes the file's content."""
    p = Path(path)
    try:
        raw = p.read_bytes()[: MAX_SECRET_BYTES + 1]
    except OSError as exc:
        raise _config_error(f"{flag}: cannot read {path!r}: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise _config_error(f"{flag}: {path!r} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _config_error(f"{flag}: {path!r} is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text:
        raise _config_error(f"{flag}: {path!r} is empty")
    return Secret(text)


def _one_secret(value: Secret, file: str, env: str, flag: str, what: str) -> Secret:
    if value and file:
        raise _config_error(f"{what}: give either {env} or {flag}, not both")
    if file:
        return read_secret_file(file, flag)
    return value


def password(config: Config) -> Secret:
    """Account mode's password, from ZSTACK_PASSWORD or --password-file (empty when neither)."""
    return _one_secret(
        config.zstack_password,
        config.zstack_password_file,
        "ZSTACK_PASSWORD",
        "--password-file",
        "the account's password",
    )


def access_key_secret(config: Config) -> Secret:
    """AccessKey mode's secret, from ZSTACK_ACCESS_KEY_SECRET or --access-key-secret-file."""
    return _one_secret(
        config.zstack_access_key_secret,
        config.zstack_access_key_secret_file,
        "ZSTACK_ACCESS_KEY_SECRET",
        "--access-key-secret-file",
        "the AccessKey secret",
    )


def caller_tokens(config: Config) -> tuple[Secret, ...]:
    """The caller tokens of GATEWAY_CALLER_TOKENS (separated by commas or white space) and of
    --caller-tokens-file (one per line; blank lines and lines starting with # are skipped)."""
    tokens: list[str] = []
    if config.caller_tokens:
        tokens += config.caller_tokens.reveal().replace(",", " ").split()
    if config.caller_tokens_file:
        text = read_secret_file(config.caller_tokens_file, "--caller-tokens-file").reveal()
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(line)
        if not tokens:
            raise _config_error(f"--caller-tokens-file: {config.caller_tokens_file!r} holds no token")
    for i, token in enumerate(tokens, 1):
        # Say which token, never what it is.
        if len(token) < MIN_TOKEN_CHARS:
            raise _config_error(f"caller token #{i} is shorter than {MIN_TOKEN_CHARS} characters")
        if not token.isascii() or not token.isprintable() or " " in token:
            raise _config_error(f"caller token #{i} must be printable ASCII without spaces")
    return tuple(Secret(t) for t in dict.fromkeys(tokens))


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); a wildcard or any other
    name is not loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def date_zone_name(config: Config) -> str:
    """The zone AccessKey ``Date`` headers are written in: --access-key-date-zone, else the MN's."""
    return config.access_key_date_zone or config.zstack_tz


def check(config: Config) -> None:
    """Raise ConfigError when the credential or TLS settings cannot work or would leave a ZStack
    account open to anyone who can reach the listener."""
    mode = config.auth_mode
    if mode not in AUTH_MODES:
        raise _config_error(f"--auth-mode must be one of {', '.join(AUTH_MODES)}; got {mode!r}")
    _check_mode_settings(config)
    tokens = caller_tokens(config)
    if tokens and mode == PASSTHROUGH:
        raise _config_error(
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
        raise _config_error(
            f"refusing to start: with --auth-mode {mode} the gateway calls ZStack as {who}, so anyone who "
            f"can reach --listen {config.listen} would act as that account. Authenticate callers "
            "(--tls-client-ca for mutual TLS, or --caller-tokens-file), listen on a loopback address "
            "only (e.g. --listen 127.0.0.1:50051), or accept the risk with --allow-anonymous-callers"
        )


def _check_mode_settings(config: Config) -> None:
    mode = config.auth_mode
    account_given = [
        name
        for name, given in (
            ("--zstack-account", bool(config.zstack_account)),
            ("ZSTACK_PASSWORD", bool(config.zstack_password)),
            ("--password-file", bool(config.zstack_password_file)),
        )
        if given
    ]
    key_given = [
        name
        for name, given in (
            ("--zstack-access-key-id", bool(config.zstack_access_key_id)),
            ("ZSTACK_ACCESS_KEY_SECRET", bool(config.zstack_access_key_secret)),
            ("--access-key-secret-file", bool(config.zstack_access_key_secret_file)),
        )
        if given
    ]
    # Exactly one mode is active: settings of another mode are a mistake, not something to ignore.
    for other, given in ((ACCOUNT, account_given), (ACCESS_KEY, key_given)):
        if given and mode != other:
            raise _config_error(
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --auth-mode {other}, "
                f"but --auth-mode is {mode}"
            )
    if mode == ACCOUNT:
        if not config.zstack_account:
            raise _config_error("--auth-mode account needs --zstack-account (ZSTACK_ACCOUNT)")
        if not password(config):
            raise _config_error(
                "--auth-mode account needs the account's password: set ZSTACK_PASSWORD or "
                "--password-file (there is no password flag: command lines are visible to every user)"
            )
    if mode == ACCESS_KEY:
        if not config.zstack_access_key_id:
            raise _config_error("--auth-mode access-key needs --zstack-access-key-id (ZSTACK_ACCESS_KEY_ID)")
        if ":" in config.zstack_access_key_id or not config.zstack_access_key_id.isprintable():
            raise _config_error("--zstack-access-key-id must not contain ':' or control characters")
        if not access_key_secret(config):
            raise _config_error(
                "--auth-mode access-key needs the AccessKey secret: set ZSTACK_ACCESS_KEY_SECRET or "
                "--access-key-secret-file"
            )
        zone = date_zone_name(config)
        if zone.upper() not in ("GMT", "UTC"):
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise _config_error(f"--access-key-date-zone: unknown time zone {zone!r}") from None


def _check_listener_tls(config: Config) -> None:
    if bool(config.tls_cert) != bool(config.tls_key):
        raise _config_error("--tls-cert and --tls-key go together: give both or neither")
    if config.tls_client_ca and not config.tls_cert:
        raise _config_error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if not config.tls_cert:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except FileNotFoundError as exc:
        raise _config_error(f"--tls-cert/--tls-key: no such file {exc.filename!r}") from None
    except (ssl.SSLError, OSError) as exc:
        raise _config_error(
            f"--tls-cert/--tls-key: cannot use {config.tls_cert!r} with {config.tls_key!r} "
            f"(a PEM certificate chain and its unencrypted PEM private key): {_ssl_reason(exc)}"
        ) from None
    if config.tls_client_ca:
        _check_ca_file(config.tls_client_ca, "--tls-client-ca")


def _check_zstack_tls(config: Config) -> None:
    if config.zstack_ca_file and config.zstack_insecure_skip_verify:
        raise _config_error("--zstack-ca-file and --zstack-insecure-skip-verify exclude each other")
    if not config.demo and urlsplit(config.zstack_url).scheme != "https":
        for flag, given in (
            ("--zstack-ca-file", bool(config.zstack_ca_file)),
            ("--zstack-insecure-skip-verify", config.zstack_insecure_skip_verify),
        ):
            if given:
                raise _config_error(f"{flag} is for an https:// --zstack-url; it is {config.zstack_url!r}")
    if config.zstack_ca_file:
        _check_ca_file(config.zstack_ca_file, "--zstack-ca-file")


def _check_ca_file(path: str, flag: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise _config_error(f"{flag}: no such file {path!r}") from None
    except (ssl.SSLError, OSError) as exc:
        raise _config_error(f"{flag}: {path!r} is not a PEM CA bundle: {_ssl_reason(exc)}") from None


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


#: Extra spellings of some flags (the issue's names): ``--password-file`` is ``--zstack-password-file``.
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "zstack_password_file": ("--password-file",),
    "zstack_access_key_secret_file": ("--access-key-secret-file",),
}
