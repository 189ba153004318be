"""The gateway's configuration: one frozen object, made once from flags and environment.

Every setting has a command-line flag and an environment variable. Flags named ``--zstack-*`` read
``ZSTACK_*`` (``--zstack-url`` and ``ZSTACK_URL``); every other flag ``--foo-bar`` reads
``GATEWAY_FOO_BAR``. A flag given on the command line wins over its environment variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from zstack_gateway.settings import policy, secrets
from zstack_gateway.settings.errors import ConfigError
from zstack_gateway.settings.secret import NO_SECRET, Secret
from zstack_gateway.settings.secrets import Secrets


def setting(default: Any, help: str, metavar: str | None = None) -> Any:
    """A Config field with its command-line help; the flag and env var names derive from its name."""
    return field(default=default, metadata={"help": help, "metavar": metavar})


@dataclass(frozen=True)
class Config:
    """Everything the gateway needs to run. :meth:`check` returns it checked, its secrets read.

    Each field is one flag (``--field-name``) and one environment variable (see the module doc).
    """

    listen: str = setting("127.0.0.1:50051", "HOST:PORT to serve gRPC on", "HOST:PORT")
    zstack_url: str = setting(
        "",
        "the ZStack management node's base URL, e.g. http://mn:8080; the gateway adds /zstack/v1 "
        "(a path here is kept in front of it, for a reverse-proxy prefix)",
        "URL",
    )
    zstack_tz: str = setting(
        "Asia/Shanghai", "the management node's time zone (ZStack writes dates without one)", "ZONE"
    )
    default_timeout: float = setting(30.0, "upstream budget, in seconds, of a call without a deadline", "S")
    shutdown_grace: float = setting(10.0, "seconds in-flight calls may run on after SIGTERM", "S")
    max_body_bytes: int = setting(
        256 * 1024 * 1024, "largest ZStack response body read; larger ones fail cleanly", "N"
    )
    max_held_bytes: int = setting(
        1024 * 1024 * 1024,
        "bytes of ZStack answers, and of the stream messages built from them, held for callers at "
        "most; a call whose answer would pass it fails with RESOURCE_EXHAUSTED",
        "N",
    )
    upstream_pool_size: int = setting(100, "pooled HTTP connections to ZStack at most", "N")
    max_upstream_calls: int = setting(
        16,
        "ZStack requests in flight at most (ZStack's API mediator runs 5 workers and queues the rest); "
        "further calls wait for a slot",
        "N",
    )
    max_upstream_calls_per_identity: int = setting(
        0,
        "pass-through mode: ZStack requests in flight at most for one ZStack session, so that no "
        "caller can take every upstream slot; 0 means half of --max-upstream-calls rounded up, "
        "--max-upstream-calls itself means no share",
        "N",
    )
    upstream_queue_timeout: float = setting(
        10.0, "seconds a call waits for an upstream slot before RESOURCE_EXHAUSTED", "S"
    )
    upstream_attempts: int = setting(
        3, "tries of an upstream request that failed before reaching ZStack's logic (1: no retry)", "N"
    )
    coalesce: bool = setting(True, "identical calls in flight together share one upstream request", None)
    stream_idle_timeout: float = setting(
        30.0,
        "seconds a stream may wait for a caller that reads nothing before the gateway ends it "
        "(RESOURCE_EXHAUSTED STREAM_IDLE_TIMEOUT); 0: no limit",
        "S",
    )
    max_concurrent_rpcs: int = setting(
        1000, "RPCs served at once; more are refused with RESOURCE_EXHAUSTED", "N"
    )
    max_connection_age: float = setting(
        1800.0,
        "seconds after which a caller's connection is closed gracefully, so load rebalances "
        "across replicas behind a mesh (0: never)",
        "S",
    )
    keepalive_time: float = setting(
        60.0, "seconds between the server's keepalive pings on an idle connection", "S"
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR", "LEVEL")
    log_format: str = setting("json", "json (one object a line) or text", "FORMAT")
    metrics_listen: str = setting(
        "", "HOST:PORT to serve Prometheus metrics on (/metrics); off when empty", "HOST:PORT"
    )
    readiness_interval: float = setting(
        5.0,
        "seconds between checks of ZStack's readiness (GET /zstack/v1/management-nodes/ready), which "
        "drive the health status; 0 turns them off (health then says SERVING while running)",
        "S",
    )
    demo: bool = setting(
        False,
        "start the embedded ZStack simulator with demo data and use it; the ready output lists the "
        "data (sessions, VM uuids and what each answers, the account's password, the AccessKey), "
        "as does 'zstack-sim --print-table'",
    )
    workers: int = setting(
        1,
        "processes serving the same port (SO_REUSEPORT), for hosts with more cores; with metrics on, "
        "worker i serves them on the metrics port + i",
        "N",
    )
    # Credentials and transport security (README "Credentials and security"; checks in policy.py).
    # Secret fields have no flag: they come from their environment variable only (or the *_file
    # setting next to them), since command lines are visible to every local user.
    auth_mode: str = setting(
        "passthrough",
        "how the gateway authenticates to ZStack: passthrough (the caller's 'authorization: OAuth "
        "<session>'), account (logs in as --zstack-account) or access-key (signs with an AccessKey)",
        "MODE",
    )
    zstack_account: str = setting("", "account mode: the ZStack account name to log in as", "NAME")
    zstack_password: Secret = setting(NO_SECRET, "account mode: the account's password (env only)")  # noqa: RUF009
    zstack_password_file: str = setting(
        "", "account mode: a file holding the account's password (or set ZSTACK_PASSWORD)", "FILE"
    )
    zstack_access_key_id: str = setting("", "access-key mode: the AccessKey id", "ID")
    zstack_access_key_secret: Secret = setting(  # noqa: RUF009
        NO_SECRET, "access-key mode: the AccessKey secret (env only)"
    )
    zstack_access_key_secret_file: str = setting(
        "", "access-key mode: a file holding the AccessKey secret (or set ZSTACK_ACCESS_KEY_SECRET)", "FILE"
    )
    access_key_date_zone: str = setting(
        "",
        "access-key mode: the zone of the signed Date header, GMT or a zone name (default: --zstack-tz, "
        "which is what ZStack's default rest.checkTimeZone=false compares against)",
        "ZONE",
    )
    tls_cert: str = setting("", "PEM certificate chain: serve gRPC over TLS (with --tls-key)", "FILE")
    tls_key: str = setting("", "PEM private key of --tls-cert", "FILE")
    tls_client_ca: str = setting(
        "", "PEM CA bundle: require callers to present a certificate it signed (mutual TLS)", "FILE"
    )
    caller_tokens: Secret = setting(NO_SECRET, "caller tokens, comma-separated (env only)")  # noqa: RUF009
    caller_tokens_file: str = setting(
        "",
        "a file of caller tokens, one a line: callers must send 'authorization: Bearer <token>' "
        "(account and access-key modes; or set GATEWAY_CALLER_TOKENS)",
        "FILE",
    )
    allow_anonymous_callers: bool = setting(
        False,
        "let unauthenticated callers use the gateway's ZStack credentials on a non-loopback --listen",
    )
    zstack_ca_file: str = setting("", "PEM CA bundle to verify an https:// --zstack-url with", "FILE")
    zstack_insecure_skip_verify: bool = setting(
        False, "do not verify the certificate of an https:// --zstack-url (unsafe; for tests only)"
    )

    # Set by check(): the secrets, each read once from its environment variable or file.
    _secrets: Secrets | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def secrets(self) -> Secrets:
        """The secrets of a checked configuration (see :meth:`check`)."""
        if self._secrets is None:
            raise ConfigError("the configuration was not checked: use Config(...).check()")
        return self._secrets

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zstack_tz)

    @property
    def listen_host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_host_port(self.listen)[1]

    @property
    def upstream_calls_per_identity(self) -> int:
        """The share of one identity in effect: the setting, or half of the total for 0."""
        if self.max_upstream_calls_per_identity == 0:
            return (self.max_upstream_calls + 1) // 2
        return self.max_upstream_calls_per_identity

    def replace(self, **changes: object) -> Config:
        """A copy with ``changes``, keeping the secrets already read."""
        changed = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        object.__setattr__(changed, "_secrets", self._secrets)
        return changed

    def check(self) -> Config:
        """Return self when every setting can work, else raise ConfigError naming the setting."""
        split_host_port(self.listen)
        if self.metrics_listen:
            split_host_port(self.metrics_listen, "--metrics-listen")
        if self.log_format not in ("json", "text"):
            raise ConfigError("--log-format must be json or text")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("--log-level must be DEBUG, INFO, WARNING or ERROR")
        if self.readiness_interval < 0:
            raise ConfigError("--readiness-interval must not be negative")
        if not self.demo:
            check_zstack_url(self.zstack_url)
        try:
            ZoneInfo(self.zstack_tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"--zstack-tz: unknown time zone {self.zstack_tz!r}") from exc
        if not self.default_timeout > 0:
            raise ConfigError("--default-timeout must be a positive number of seconds")
        if self.shutdown_grace < 0:
            raise ConfigError("--shutdown-grace must not be negative")
        if self.max_body_bytes < 1024:
            raise ConfigError("--max-body-bytes must be at least 1024")
        if self.max_held_bytes < 1024:
            raise ConfigError("--max-held-bytes must be at least 1024")
        if self.workers > 1 and self.listen_port == 0:
            raise ConfigError("--workers above 1 needs a fixed --listen port, not 0")
        for name in (
            "upstream_pool_size",
            "max_upstream_calls",
            "upstream_attempts",
            "max_concurrent_rpcs",
            "workers",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.max_upstream_calls_per_identity <= self.max_upstream_calls:
            raise ConfigError(
                "--max-upstream-calls-per-identity must be between 1 and --max-upstream-calls "
                f"({self.max_upstream_calls}), or 0 for half of it"
            )
        for name in ("upstream_queue_timeout", "max_connection_age", "keepalive_time", "stream_idle_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
        read = secrets.read(self)
        # The rules that refuse an open door run here, not only in the command line's set-up, so
        # that every way of starting a gateway (the CLI, a test, an embedding program) gets them.
        policy.check(self, read)
        checked = dataclasses.replace(self)
        object.__setattr__(checked, "_secrets", read)
        return checked


def split_host_port(value: str, flag: str = "--listen") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) and check both parts; ``flag`` names the
    setting in the error."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{flag}: expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{flag}: port {port} is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    return host, port


def check_zstack_url(url: str) -> None:
    """Refuse a ZStack URL that is not a plain http(s) base URL."""
    if not url:
        raise ConfigError("--zstack-url (ZSTACK_URL) is required unless --demo is given")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"--zstack-url must start with http:// or https://, got {url!r}")
    if not parts.hostname:
        raise ConfigError(f"--zstack-url has no host: {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError("--zstack-url must not carry a query, a fragment or credentials")
    if parts.path.rstrip("/").endswith("/zstack") or "/zstack/v1" in parts.path:
        raise ConfigError(
            "--zstack-url is the management node's base URL (e.g. http://mn:8080); "
            "the gateway adds /zstack/v1 itself"
        )
