"""``zstack-gateway``: flags and environment -> one Config -> a running gateway."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from zstack_gateway import app, loops, workers
from zstack_gateway.settings import Config, ConfigError, Secret
from zstack_gateway.telemetry import core_logs, logs

if TYPE_CHECKING:
    import zstack_sim

log = logging.getLogger("zstack_gateway")


#: Extra spellings of some flags: ``--password-file`` is ``--zstack-password-file``.
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "zstack_password_file": ("--password-file",),
    "zstack_access_key_secret_file": ("--access-key-secret-file",),
}


def _settings() -> list[dataclasses.Field[object]]:
    """The Config fields that are settings (one flag and one environment variable each)."""
    return [f for f in dataclasses.fields(Config) if f.init]


def _env_name(flag: str) -> str:
    name = flag.lstrip("-").replace("-", "_").upper()
    return name if name.startswith("ZSTACK_") else f"GATEWAY_{name}"


EXAMPLES = """examples:
  zstack-gateway --demo                                   # the embedded simulator, 127.0.0.1:50051
                                                          # (its data: zstack-sim --print-table)
  zstack-gateway --zstack-url http://mn:8080              # pass-through: callers send their session
  ZSTACK_PASSWORD=... zstack-gateway --zstack-url http://mn:8080 \\
      --auth-mode account --zstack-account admin --caller-tokens-file tokens
"""

_KEY_HINT = "the secret comes from ZSTACK_ACCESS_KEY_SECRET or --access-key-secret-file"
#: Flags people try that do not exist because they would put a secret on the command line.
_SECRET_FLAGS = {
    "--password": "the password comes from ZSTACK_PASSWORD or --password-file, never a flag",
    "--zstack-password": "the password comes from ZSTACK_PASSWORD or --password-file, never a flag",
    "--access-key-secret": _KEY_HINT,
    "--zstack-access-key-secret": _KEY_HINT,
    "--caller-tokens": "caller tokens come from GATEWAY_CALLER_TOKENS or --caller-tokens-file",
}


class _Parser(argparse.ArgumentParser):
    """Says where a secret goes when someone tries to pass it as a flag (and never echoes it)."""

    def error(self, message: str) -> NoReturn:
        for flag, hint in _SECRET_FLAGS.items():
            if (
                f"unrecognized arguments: {flag}" in message
                or f" {flag}=" in message
                or message.endswith(flag)
            ):
                self.exit(
                    2,
                    f"{self.prog}: {flag} does not exist: {hint} (command lines are visible to every user)\n",
                )
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """One flag per Config field, its help and default taken from the field."""
    parser = _Parser(
        prog="zstack-gateway",
        # No abbreviations: "--password SECRET" must fail, not be read as "--password-file SECRET".
        allow_abbrev=False,
        description="gRPC gateway to ZStack's REST API (zstack.v1.VmInstanceService). "
        "Every flag can also be set by the environment variable named in its help. Required: "
        "--zstack-url (or --demo); in account mode --zstack-account and ZSTACK_PASSWORD or "
        "--password-file; in access-key mode --zstack-access-key-id and ZSTACK_ACCESS_KEY_SECRET or "
        "--access-key-secret-file.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for f in _settings():
        if isinstance(f.default, Secret):
            continue  # a secret comes from its environment variable (or a file), never from a flag
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata['help']} [env {_env_name(flag)}]"
        if isinstance(f.default, bool):
            parser.add_argument(flag, help=text, action=argparse.BooleanOptionalAction, default=None)
            continue
        if f.default not in ("", None):
            text = f"{f.metadata['help']} (default {f.default}) [env {_env_name(flag)}]"
        kind = type(f.default) if isinstance(f.default, int | float) else str
        aliases = FLAG_ALIASES.get(f.name, ())
        parser.add_argument(flag, *aliases, help=text, type=kind, metavar=f.metadata["metavar"])
    return parser


def config_from(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Flags win over environment variables, which win over defaults."""
    env = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    values: dict[str, object] = {}
    for f in _settings():
        flag = "--" + f.name.replace("_", "-")
        given = args.get(f.name)
        if given is not None:
            values[f.name] = given
            continue
        raw = env.get(_env_name(flag))
        if raw is None or raw == "":
            continue
        values[f.name] = _from_env(f.name, raw, type(f.default))
    return Config(**values).check()  # type: ignore[arg-type]


def _from_env(name: str, raw: str, kind: object) -> object:
    if kind is Secret:
        return Secret(raw)
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{_env_name('--' + name.replace('_', '-'))}: cannot read {raw!r}") from None
    return raw


def grpcurl_hint(listen: str, config: Config, session: str | None, vm_uuid: str) -> str:
    """A grpcurl command for the active mode, from the repository (grpcurl from the venv).

    ``session`` None: no ZStack session (the gateway holds its own credentials). With caller tokens
    the command reads the first token from where the gateway did (the token is never printed); with
    TLS it verifies the gateway's certificate against --tls-cert (works as printed for a
    self-signed one; give your CA with -cacert otherwise); with mutual TLS it names the client
    certificate and key the caller must bring."""
    local = Path(sys.executable).with_name("grpcurl")
    exe = os.path.relpath(local) if local.exists() else "grpcurl"
    payload = f'{{"vmInstanceUuid": "{vm_uuid}"}}'
    words = [shlex.quote(exe)]
    if config.tls_cert:
        words += ["-cacert", shlex.quote(config.tls_cert)]
        if config.tls_client_ca:
            words += ["-cert", "CLIENT.pem", "-key", "CLIENT.key"]
    else:
        words.append("-plaintext")
    if session is not None:
        words += ["-H", shlex.quote(f"authorization: OAuth {session}")]
    elif config.caller_tokens_file:
        words += ["-H", f'"authorization: Bearer $(head -n1 {shlex.quote(config.caller_tokens_file)})"']
    elif config.caller_tokens:
        words += ["-H", '"authorization: Bearer ${GATEWAY_CALLER_TOKENS%%,*}"']
    words += ["-d", shlex.quote(payload), listen, "zstack.v1.VmInstanceService/GetCandidateIso"]
    return " ".join(words)


def health_note(gateway: app.Gateway) -> str:
    """What the ready line adds when the first readiness check failed: ZStack's rejection of the
    gateway's account (every call fails until ZStack accepts it), or why health is NOT_SERVING."""
    readiness = gateway.readiness
    if readiness is None or readiness.serving:
        return ""
    rejected = readiness.account_rejected
    if rejected is not None:
        return (
            f", but {logs.clean(rejected.message)}; until ZStack accepts the account, every call fails "
            f"with UNAUTHENTICATED ({rejected.reason}) and health says NOT_SERVING"
        )
    problem = logs.clean(readiness.last_problem or "unknown")
    return f", but health says NOT_SERVING until ZStack is ready: {problem}"


async def _run(config: Config) -> None:
    # Signals first: a Ctrl-C during start-up stops the gateway once it is up, cleanly.
    signals = app.ShutdownSignals(config.shutdown_grace)
    signals.install()
    try:
        await _start_and_serve(config, signals)
    finally:
        signals.remove()


async def _start_and_serve(config: Config, signals: app.ShutdownSignals) -> None:
    simulator = None
    if config.demo:
        import zstack_sim

        simulator = zstack_sim.Simulator(zstack_sim.demo_data(), tz=config.zstack_tz)
        await simulator.start()
        config = config.replace(zstack_url=simulator.url)
    try:
        gateway = await app.start(config)
    except BaseException:
        if simulator is not None:
            await simulator.stop()
        raise
    try:
        if not signals.requested.is_set():  # a signal during start-up: no ready line, just the stop
            _print_ready(config, gateway, simulator)
        await app.serve_until_signal(gateway, signals)
    finally:
        if simulator is not None:
            await simulator.stop()
    log.info("stopped")


def _print_ready(config: Config, gateway: app.Gateway, simulator: zstack_sim.Simulator | None) -> None:
    host = config.listen.rpartition(":")[0]
    address = f"{host}:{gateway.port}"
    upstream = f"{config.zstack_url} (embedded simulator)" if config.demo else config.zstack_url
    worker = f" (worker pid {os.getpid()})" if config.workers > 1 else ""
    ready = f"zstack-gateway ready on {address}{worker}, ZStack at {upstream}{health_note(gateway)}"
    # One write per line: with --workers, several processes print to the same stdout.
    sys.stdout.write(ready + "\n")
    sys.stdout.flush()
    if config.demo:
        import zstack_sim

        session = zstack_sim.DEMO_SESSION_UUID if config.auth_mode == "passthrough" else None
        print("try it:", flush=True)
        print("  " + grpcurl_hint(address, config, session, zstack_sim.DEMO_VM_UUID), flush=True)
        missing = grpcurl_hint(address, config, session, zstack_sim.DEMO_MISSING_VM_UUID)
        print(f"  {missing}   # a NOT_FOUND error", flush=True)
    if simulator is not None:
        from zstack_sim import table

        state = simulator.state
        data_table = table.render(state.data, state.tz, missing_vm=zstack_sim.DEMO_MISSING_VM_UUID)
        print(f"{table.TITLE}\n{data_table}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = config_from(argv)
    except ConfigError as exc:
        print(f"zstack-gateway: {exc}", file=sys.stderr)
        return 2
    trace = logs.unsafe_grpc_trace(os.environ)
    if trace is not None:
        # grpc has read GRPC_TRACE on import already: refusing is the only way to keep callers'
        # credentials out of stderr.
        print(
            f"zstack-gateway: GRPC_TRACE={trace!r} turns on grpc's chttp2_hpack_parser tracer, which "
            "writes every call's metadata, credentials included, to stderr; refusing to start "
            "(leave it out, or add '-chttp2_hpack_parser')",
            file=sys.stderr,
        )
        return 2
    logs.setup(config.log_level, config.log_format)
    pump = None
    if config.log_format == "json":
        # grpc core's own lines (TLS handshake failures, GRPC_TRACE) as JSON too. Started before
        # any grpc thread exists: starting a process forks this one, as --workers does.
        pump = core_logs.start()
    code = workers.run(config, _serve) if config.workers > 1 else _serve(config)
    if pump is not None:
        pump.exit(code)
    return code


def _serve(config: Config) -> int:
    try:
        with asyncio.Runner(loop_factory=loops.loop_factory()) as runner:
            runner.run(_run(config))
    except ConfigError as exc:  # a setting that could not work only at start, e.g. a port in use
        _start_failed(config, str(exc))
        return 2
    except OSError as exc:
        _start_failed(config, str(exc.strerror or exc))
        return 1
    return 0


def _start_failed(config: Config, message: str) -> None:
    """One line on stderr: a log record in JSON format (where every stderr line is JSON), else
    ``zstack-gateway: MESSAGE``."""
    if config.log_format == "json":
        log.error("cannot start: %s", message)
    else:
        print(f"zstack-gateway: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
