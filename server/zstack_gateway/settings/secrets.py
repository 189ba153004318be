"""Secrets from their environment variables or files, read once when the settings are checked.

Secrets come from environment variables or files, never from command-line arguments (``ps`` shows
those to every local user). A missing, empty, oversized or non-UTF-8 file is a configuration error,
which never quotes the file's content.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from zstack_gateway.settings.errors import ConfigError
from zstack_gateway.settings.secret import NO_SECRET, Secret

#: Caller tokens shorter than this are refused: a token is a password that never changes hands
#: interactively, so there is no reason for a guessable one.
MIN_TOKEN_CHARS = 16
MAX_SECRET_BYTES = 64 * 1024


class SecretSettings(Protocol):
    """The settings a secret comes from (a :class:`~zstack_gateway.settings.config.Config`)."""

    @property
    def zstack_password(self) -> Secret: ...
    @property
    def zstack_password_file(self) -> str: ...
    @property
    def zstack_access_key_secret(self) -> Secret: ...
    @property
    def zstack_access_key_secret_file(self) -> str: ...
    @property
    def caller_tokens(self) -> Secret: ...
    @property
    def caller_tokens_file(self) -> str: ...


@dataclass(frozen=True)
class Secrets:
    """Every secret of a checked configuration, each read once from its variable or file."""

    password: Secret = NO_SECRET
    access_key_secret: Secret = NO_SECRET
    caller_tokens: tuple[Secret, ...] = ()


def read(settings: SecretSettings) -> Secrets:
    """Read every secret the settings name; ConfigError when one cannot be used."""
    return Secrets(
        password=_one_secret(
            settings.zstack_password,
            settings.zstack_password_file,
            "ZSTACK_PASSWORD",
            "--password-file",
            "the account's password",
        ),
        access_key_secret=_one_secret(
            settings.zstack_access_key_secret,
            settings.zstack_access_key_secret_file,
            "ZSTACK_ACCESS_KEY_SECRET",
            "--access-key-secret-file",
            "the AccessKey secret",
        ),
        caller_tokens=_caller_tokens(settings.caller_tokens, settings.caller_tokens_file),
    )


def read_secret_file(path: str, flag: str) -> Secret:
    """The file's text without its trailing line break(s); ConfigError when it cannot be used.
    The error never quotes the file's content."""
    p = Path(path)
    try:
        raw = p.read_bytes()[: MAX_SECRET_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path!r}: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise ConfigError(f"{flag}: {path!r} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{flag}: {path!r} is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text:
        raise ConfigError(f"{flag}: {path!r} is empty")
    return Secret(text)


def _one_secret(value: Secret, file: str, env: str, flag: str, what: str) -> Secret:
    if value and file:
        raise ConfigError(f"{what}: give either {env} or {flag}, not both")
    if file:
        return read_secret_file(file, flag)
    return value


def _caller_tokens(value: Secret, file: str) -> tuple[Secret, ...]:
    """The caller tokens of GATEWAY_CALLER_TOKENS (separated by commas or white space) and of
    --caller-tokens-file (one per line; blank lines and lines starting with # are skipped)."""
    tokens: list[str] = []
    if value:
        tokens += value.reveal().replace(",", " ").split()
    if file:
        text = read_secret_file(file, "--caller-tokens-file").reveal()
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(line)
        if not tokens:
            raise ConfigError(f"--caller-tokens-file: {file!r} holds no token")
    for i, token in enumerate(tokens, 1):
        # Say which token, never what it is.
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"caller token #{i} is shorter than {MIN_TOKEN_CHARS} characters")
        if not token.isascii() or not token.isprintable() or " " in token:
            raise ConfigError(f"caller token #{i} must be printable ASCII without spaces")
    return tuple(Secret(t) for t in dict.fromkeys(tokens))
