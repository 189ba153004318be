"""The ``zstack-iso`` command: the ISO workflow through a gateway, as tables or ZStack-shaped JSON.

    zstack-iso candidates VM_UUID       the ISO images that can be attached to a VM
    zstack-iso vms ISO_UUID             the VMs an ISO image can be attached to
    zstack-iso attach VM_UUID ISO_UUID [--cd-rom UUID] [--request-id ID]
    zstack-iso detach VM_UUID [ISO_UUID] [--request-id ID]

    common options: [--target HOST:PORT] [--session S | --token T | --token-file F]
                    [--tls] [--cacert F] [--cert F --key F] [--tls-server-name NAME]
                    [--timeout S] [--json] [--system-tag TAG ...] [--user-tag TAG ...]

``attach`` and ``detach`` wait for ZStack's job. Each sends a request id (``--request-id``, or a new
random one): when the call fails or its time runs out, the message says how to run the same command
again with that id, which picks up the same job instead of attaching or detaching a second time.

Every setting has an environment variable (the flag wins over it):

    --target HOST:PORT    ZSTACK_ISO_TARGET (or, older, ZSTACK_GATEWAY_TARGET); 127.0.0.1:50051
    --session SESSION     ZSTACK_ISO_SESSION (or, older, ZSTACK_SESSION)
    --token TOKEN         ZSTACK_ISO_TOKEN
    --token-file FILE     ZSTACK_ISO_TOKEN_FILE
    --tls                 ZSTACK_ISO_TLS (1/true/yes/on)
    --cacert FILE         ZSTACK_ISO_CACERT
    --cert FILE           ZSTACK_ISO_CERT
    --key FILE            ZSTACK_ISO_KEY
    --tls-server-name N   ZSTACK_ISO_TLS_SERVER_NAME
    --timeout S           ZSTACK_ISO_TIMEOUT; 30

A call carries a ZStack session (for a pass-through gateway) or a caller token (for an account or
AccessKey gateway that asks for one), or neither; never both, since both travel as the
``authorization`` metadata. A credential given on the command line replaces those of the
environment; from the environment, a session and a token together are a usage error. An empty
variable counts as unset. Secrets on the command line show in ``ps``: prefer the variables or
``--token-file``. No session or token is ever printed.

Exit status: 0 on success; 1 when the call failed (one line on stderr: the gRPC status, and a hint
when the cause is a likely mistake in the settings); 2 for a usage error (bad flags, an unreadable
or unusable file, conflicting credentials), caught before any call is made; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from zstack.v1 import image_pb2, vm_pb2

    from zstack_iso.errors import ZStackError
    from zstack_iso.tls import TlsConfig

__all__ = ["main"]

PROG = "zstack-iso"
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0

TARGET_ENV = "ZSTACK_ISO_TARGET"
SESSION_ENV = "ZSTACK_ISO_SESSION"
TOKEN_ENV = "ZSTACK_ISO_TOKEN"  # noqa: S105 - a variable's name, not a token
TOKEN_FILE_ENV = "ZSTACK_ISO_TOKEN_FILE"  # noqa: S105 - a variable's name
TLS_ENV = "ZSTACK_ISO_TLS"
CACERT_ENV = "ZSTACK_ISO_CACERT"
CERT_ENV = "ZSTACK_ISO_CERT"
KEY_ENV = "ZSTACK_ISO_KEY"
SERVER_NAME_ENV = "ZSTACK_ISO_TLS_SERVER_NAME"
TIMEOUT_ENV = "ZSTACK_ISO_TIMEOUT"
# The first names of two settings, still read after the new ones.
OLD_TARGET_ENV = "ZSTACK_GATEWAY_TARGET"
OLD_SESSION_ENV = "ZSTACK_SESSION"

EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Longest NAME shown in the table, in terminal columns; --json has the full name.
_MAX_NAME_COLUMNS = 48

_EXAMPLES: Final = f"""\
examples, by the gateway's --auth-mode:
  # pass-through (the default): your own ZStack session
  {SESSION_ENV}=<session-uuid> zstack-iso candidates <vm-uuid> --target 127.0.0.1:50051

  # account or access-key, listening on loopback: no credentials at all
  zstack-iso candidates <vm-uuid> --target 127.0.0.1:50051

  # account or access-key with caller tokens, over TLS
  zstack-iso candidates <vm-uuid> --target gw.example:50051 --cacert ca.pem --token-file token

  # mutual TLS (any mode; in pass-through mode add the session)
  zstack-iso candidates <vm-uuid> --target gw.example:50051 \\
      --cacert ca.pem --cert client.pem --key client.key

  # ZStack-shaped JSON (64-bit numbers as numbers, dates in RFC 3339 UTC)
  zstack-iso candidates <vm-uuid> --json

  # the rest of the workflow: candidate VMs of an ISO, attach it, detach it
  zstack-iso vms <iso-uuid>
  zstack-iso attach <vm-uuid> <iso-uuid> --request-id my-attach-1
  zstack-iso detach <vm-uuid> <iso-uuid>

environment (a flag wins over its variable): {TARGET_ENV}, {SESSION_ENV},
  {TOKEN_ENV}, {TOKEN_FILE_ENV}, {TLS_ENV}, {CACERT_ENV}, {CERT_ENV},
  {KEY_ENV}, {SERVER_NAME_ENV}, {TIMEOUT_ENV}
exit status: 0 success, 1 the call failed, 2 usage error, 130 interrupted.
"""


class _UsageError(Exception):
    """A setting that cannot work; the message names where it came from, never a secret's value."""


@dataclass(frozen=True)
class _Settings:
    target: str
    session: str | None
    token: str | None
    # Where the session or token came from, e.g. "--token-file" or "$ZSTACK_ISO_SESSION".
    credential_source: str | None
    tls: TlsConfig | None
    tls_sources: tuple[str, ...]
    timeout: float


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's core logs connection failures on stderr by itself; the command prints each failure as
    # one line of its own. GRPC_VERBOSITY, read once when gRPC loads, still turns its logs back on.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args, os.environ)
        return _run(args, settings)
    except _UsageError as exc:
        _say(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # never a traceback; say what it was
        _say(f"unexpected error: {type(exc).__name__}: {exc}")
        return EXIT_RPC_ERROR


def _run(args: argparse.Namespace, settings: _Settings) -> int:
    from zstack_iso.client import IsoClient
    from zstack_iso.errors import ZStackError

    try:
        client = IsoClient(
            settings.target,
            session=settings.session,
            token=settings.token,
            tls=settings.tls or False,
            timeout=settings.timeout,
        )
    except ValueError as exc:
        # The messages name the problem, never a credential's value.
        raise _UsageError(str(exc)) from None
    request_id: str = getattr(args, "request_id", None) or ""
    if args.command in ("attach", "detach") and not request_id:
        import uuid

        request_id = uuid.uuid4().hex
    tags = {"system_tags": args.system_tags, "user_tags": args.user_tags}
    try:
        with client:
            if args.command == "candidates":
                result: Any = client.list_candidates(args.vm_instance_uuid, **tags)
            elif args.command == "vms":
                result = client.list_candidate_vms(args.iso_uuid, **tags)
            elif args.command == "attach":
                result = client.attach_iso(
                    args.vm_instance_uuid,
                    args.iso_uuid,
                    cd_rom_uuid=args.cd_rom,
                    request_id=request_id,
                    **tags,
                )
            else:
                result = client.detach_iso(
                    args.vm_instance_uuid, args.iso_uuid, request_id=request_id, **tags
                )
    except ZStackError as err:
        hint = _hint(err, settings)
        if request_id and err.code.name not in ("INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED"):
            again = f"the same command with --request-id {request_id} gets this call's job again"
            hint = f"{hint}; {again}" if hint else again
        _print_error(err, hint, as_json=args.json, out=sys.stderr)
        return EXIT_RPC_ERROR
    try:
        if args.command == "candidates":
            _print_json(result, sys.stdout) if args.json else _print_table(result, sys.stdout)
        elif args.command == "vms":
            _print_json(result, sys.stdout) if args.json else _print_vms(result, sys.stdout)
        elif args.json:
            _print_json([result], sys.stdout, one=True)
        else:
            _print_cd_roms(result, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (e.g. `head`) left early. Point stdout at devnull so that the interpreter's
        # final flush does not fail again, and exit 1 as Python itself does on a broken pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return EXIT_OK


def _say(message: str) -> None:
    sys.stderr.write(f"{PROG}: {_printable(message)}\n")


def _parser() -> argparse.ArgumentParser:
    """The command's parser: ``candidates``, ``vms``, ``attach`` and ``detach``, each with the
    common options."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The ZStack ISO workflow through the zstack-grpc-gateway.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    candidates = _command(
        commands,
        "candidates",
        "the ISO images that can be attached to a VM",
        "List the ISO images that can be attached to a VM (GetCandidateIso).",
    )
    candidates.add_argument("vm_instance_uuid", metavar="VM_UUID", help="the VM's UUID (32 hex characters)")
    vms = _command(
        commands,
        "vms",
        "the VMs an ISO image can be attached to",
        "List the VMs an ISO image can be attached to (GetCandidateVm).",
    )
    vms.add_argument("iso_uuid", metavar="ISO_UUID", help="the ISO image's UUID (32 hex characters)")
    attach = _command(
        commands,
        "attach",
        "attach an ISO image to a VM",
        "Attach an ISO image to a CD-ROM of a VM (AttachIso) and wait for ZStack's job; prints the "
        "VM's CD-ROMs.",
    )
    attach.add_argument("vm_instance_uuid", metavar="VM_UUID", help="the VM's UUID")
    attach.add_argument("iso_uuid", metavar="ISO_UUID", help="the ISO image's UUID")
    attach.add_argument(
        "--cd-rom", metavar="UUID", help="the CD-ROM to use (default: ZStack's first empty one)"
    )
    detach = _command(
        commands,
        "detach",
        "detach an ISO image from a VM",
        "Detach an ISO image (or the VM's only one) from a VM (DetachIso) and wait for ZStack's job; "
        "prints the VM's CD-ROMs. Detaching what is not attached succeeds.",
    )
    detach.add_argument("vm_instance_uuid", metavar="VM_UUID", help="the VM's UUID")
    detach.add_argument("iso_uuid", metavar="ISO_UUID", nargs="?", help="the ISO image's UUID (optional)")
    for mutation in (attach, detach):
        mutation.add_argument(
            "--request-id",
            metavar="ID",
            help="names this call's ZStack job: the same command with the same id (and credentials) "
            "gets the first call's job and result instead of a second change (default: a new id)",
        )
    return parser


def _command(commands: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_options(sub)
    return sub


def _common_options(candidates: argparse.ArgumentParser) -> None:
    candidates.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"the gateway's address (env {TARGET_ENV}; default {DEFAULT_TARGET})",
    )
    creds = candidates.add_argument_group(
        "credentials (one at most; which one depends on the gateway's --auth-mode)"
    )
    creds.add_argument(
        "--session",
        metavar="SESSION",
        help=f"pass-through gateways: your ZStack session UUID (env {SESSION_ENV}, safer than the "
        "command line, which other users can see). Account and AccessKey gateways refuse it",
    )
    creds.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"account and AccessKey gateways with caller tokens: the token, sent as 'authorization: "
        f"Bearer TOKEN' (env {TOKEN_ENV}; prefer it or --token-file to the command line)",
    )
    creds.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"a file holding the caller token (env {TOKEN_FILE_ENV}; blank and # lines skipped)",
    )
    tls = candidates.add_argument_group("TLS (any of these turns TLS on)")
    tls.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help=f"TLS, the gateway verified against gRPC's default roots (env {TLS_ENV})",
    )
    tls.add_argument(
        "--cacert", metavar="FILE", help=f"PEM CA certificates that verify the gateway (env {CACERT_ENV})"
    )
    tls.add_argument(
        "--cert", metavar="FILE", help=f"mutual TLS: your PEM certificate chain (env {CERT_ENV})"
    )
    tls.add_argument(
        "--key", metavar="FILE", help=f"mutual TLS: its unencrypted PEM private key (env {KEY_ENV})"
    )
    tls.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help=f"the name the gateway's certificate must hold, if not the target's host "
        f"(env {SERVER_NAME_ENV})",
    )
    candidates.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="S",
        help=f"seconds the whole call may take (env {TIMEOUT_ENV}; default {DEFAULT_TIMEOUT:g})",
    )
    candidates.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON, as ZStack writes it (key names, numbers)",
    )
    candidates.add_argument(
        "--system-tag",
        dest="system_tags",
        action="append",
        default=[],
        metavar="TAG",
        help="a ZStack system tag to send (repeatable)",
    )
    candidates.add_argument(
        "--user-tag",
        dest="user_tags",
        action="append",
        default=[],
        metavar="TAG",
        help="a ZStack user tag to send (repeatable)",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Settings: flags, then environment variables, then defaults


def _settings(args: argparse.Namespace, env: Mapping[str, str]) -> _Settings:
    def var(*names: str) -> tuple[str, str] | None:
        """(``$NAME``, value) of the first of ``names`` set to something other than blanks."""
        for name in names:
            value = env.get(name, "")
            if value.strip():
                return f"${name}", value.strip()
        return None

    # An empty --target is kept, for the client to refuse with a message that says so.
    target_var = var(TARGET_ENV, OLD_TARGET_ENV) or ("", DEFAULT_TARGET)
    target: str = args.target if args.target is not None else target_var[1]

    if args.timeout is not None:
        timeout: float = args.timeout
    elif (timeout_var := var(TIMEOUT_ENV)) is not None:
        try:
            timeout = _positive_seconds(timeout_var[1])
        except argparse.ArgumentTypeError as exc:
            raise _UsageError(f"{timeout_var[0]}: {exc}") from None
    else:
        timeout = DEFAULT_TIMEOUT

    session, token, source = _credentials(args, var)
    tls, tls_sources = _tls(args, var)
    return _Settings(target, session, token, source, tls, tls_sources, timeout)


def _credentials(
    args: argparse.Namespace, var: Callable[..., tuple[str, str] | None]
) -> tuple[str | None, str | None, str | None]:
    """(session, token, where it came from)."""
    given = [
        (flag, value)
        for flag, value in (
            ("--session", args.session),
            ("--token", args.token),
            ("--token-file", args.token_file),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise _UsageError(
            f"{' and '.join(flag for flag, _ in given)} exclude each other: a call carries a ZStack session "
            "(pass-through gateways) or a caller token (account and AccessKey gateways), not both"
        )
    if given:
        flag, value = given[0]
        kind = "session" if flag == "--session" else "token"
    else:
        session_var = var(SESSION_ENV, OLD_SESSION_ENV)
        token_vars = [found for found in (var(TOKEN_ENV), var(TOKEN_FILE_ENV)) if found is not None]
        if len(token_vars) > 1:
            raise _UsageError(f"set ${TOKEN_ENV} or ${TOKEN_FILE_ENV}, not both")
        if session_var is not None and token_vars:
            raise _UsageError(
                f"{session_var[0]} and {token_vars[0][0]} are both set: a call carries a ZStack session "
                "(pass-through gateways) or a caller token (account and AccessKey gateways), not both; "
                "unset one, or give --session, --token or --token-file, which replaces both"
            )
        if session_var is None and not token_vars:
            return None, None, None
        flag, value = session_var if session_var is not None else token_vars[0]
        kind = "session" if session_var is not None else "token"
    if flag in ("--token-file", f"${TOKEN_FILE_ENV}"):
        value = _read_token_file(value, flag)
    if not _is_token(value):
        what = "session" if kind == "session" else "caller token"
        raise _UsageError(f"the {what} from {flag} must be printable ASCII without spaces")
    return (value, None, flag) if kind == "session" else (None, value, flag)


def _read_token_file(path: str, source: str) -> str:
    """The one token in ``path``: blank lines and lines starting with # are skipped, as in the
    gateway's --caller-tokens-file, so a file holding one token serves both."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(64 * 1024)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise _UsageError(f"{source} {path}: cannot read the caller token: {why}") from None
    tokens = [line.strip() for line in text.splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if len(tokens) != 1:
        found = "no token" if not tokens else f"{len(tokens)} lines that look like tokens"
        raise _UsageError(f"{source} {path}: holds {found}; it must hold exactly one caller token")
    return tokens[0]


def _is_token(value: str) -> bool:
    return bool(value) and all("!" <= ch <= "~" for ch in value)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _tls(
    args: argparse.Namespace, var: Callable[..., tuple[str, str] | None]
) -> tuple[TlsConfig | None, tuple[str, ...]]:
    """The TLS settings (None: plain text) and the flags or variables they came from."""

    def pick(flag: str, value: str | None, env_name: str) -> tuple[str, str] | None:
        if value is not None:
            if not value.strip():
                raise _UsageError(f"{flag} needs a value, not an empty string")
            return flag, value
        return var(env_name)

    on = bool(args.tls)
    sources: list[str] = ["--tls"] if on else []
    if not on and (tls_var := var(TLS_ENV)) is not None:
        text = tls_var[1].lower()
        if text not in _TRUE | _FALSE:
            raise _UsageError(f"{tls_var[0]} must be one of 1, true, yes, on, 0, false, no, off")
        on = text in _TRUE
        if on:
            sources.append(tls_var[0])
    cacert = pick("--cacert", args.cacert, CACERT_ENV)
    cert = pick("--cert", args.cert, CERT_ENV)
    key = pick("--key", args.key, KEY_ENV)
    server_name = pick("--tls-server-name", args.tls_server_name, SERVER_NAME_ENV)
    for found in (cacert, cert, key, server_name):
        if found is not None:
            sources.append(found[0])
    if not sources:
        return None, ()
    if (cert is None) != (key is None):
        have, missing = (cert, "--key") if cert is not None else (key, "--cert")
        assert have is not None
        raise _UsageError(f"{have[0]} needs {missing} too: mutual TLS takes a certificate and its key")

    from zstack_iso.tls import TlsConfig

    try:
        config = TlsConfig.from_files(
            cacert[1] if cacert else None,
            cert[1] if cert else None,
            key[1] if key else None,
            server_name=server_name[1] if server_name else None,
        )
    except ValueError as exc:
        # TlsConfig's message names the file; say which variable named it, if one did.
        message = str(exc)
        for found in (cacert, cert, key):
            if found is not None and found[0].startswith("$") and message.startswith(found[1]):
                message += f" (from {found[0]})"
                break
        raise _UsageError(message) from None
    return config, tuple(sources)


# ---------------------------------------------------------------------------------------------
# Hints: what to change when a failure most likely comes from the command's own settings


def _hint(err: ZStackError, settings: _Settings) -> str | None:
    import grpc

    source = settings.credential_source
    reason = err.reason
    if reason == "CALLER_ZSTACK_CREDENTIALS_REFUSED":
        unset = f"; unset {source[1:]}" if source and source.startswith("$") else ""
        return f"this gateway holds its own ZStack credentials: leave out the session from {source}{unset}"
    if reason == "CALLER_TOKEN_MISSING":
        ask = f"pass --token-file FILE, or set ${TOKEN_ENV} or ${TOKEN_FILE_ENV}"
        if settings.session is not None:
            return f"this gateway wants a caller token, not a ZStack session (from {source}): {ask}"
        return ask
    if reason == "CALLER_TOKEN_INVALID":
        return f"the gateway does not know the caller token from {source}"
    if reason == "MISSING_CREDENTIALS":
        if settings.token is not None:
            return (
                "this gateway passes callers' ZStack sessions through and takes no caller token: "
                f"give --session or ${SESSION_ENV} instead of the token from {source}"
            )
        if settings.session is None:
            return (
                f"this gateway passes callers' ZStack sessions through: give --session or set ${SESSION_ENV}"
            )
        return None
    if err.code is not grpc.StatusCode.UNAVAILABLE or reason is not None:
        return None
    message = err.message
    if "Connection refused" in message:
        return f"is a gateway listening on {settings.target}?"
    if "WRONG_VERSION_NUMBER" in message:
        return f"the gateway does not seem to serve TLS: leave out {', '.join(settings.tls_sources)}"
    if "CERTIFICATE_VERIFY_FAILED" in message:
        tls = settings.tls
        trusted = (
            "--cacert" if tls is not None and tls.root_certificates is not None else "gRPC's default roots"
        )
        return f"the gateway's certificate is not signed by a CA of {trusted}"
    if "Hostname Verification" in message or "not in peer certificate" in message:
        if settings.tls is not None and settings.tls.server_name is not None:
            return f"the gateway's certificate does not name {settings.tls.server_name!r} (--tls-server-name)"
        return (
            f"the gateway's certificate does not name the host of {settings.target}; "
            "--tls-server-name NAME checks another name"
        )
    if "Socket closed" in message or "Connection reset" in message:
        tls = settings.tls
        if tls is None:
            return "if the gateway serves TLS, pass --cacert FILE (or --tls)"
        if tls.certificate_chain is None:
            return "if the gateway asks for client certificates (mutual TLS), pass --cert and --key"
        return (
            "the gateway may have refused the client certificate: is it signed by the CA the gateway trusts?"
        )
    return None


# ---------------------------------------------------------------------------------------------
# Output


def _print_json(messages: Sequence[Message], out: TextIO, *, one: bool = False) -> None:
    """A JSON array of the messages (images or VMs), or the one message when ``one``."""
    from zstack_iso.jsonform import message_to_dict

    data: Any = [message_to_dict(message) for message in messages]
    out.write(json.dumps(data[0] if one else data, indent=2, ensure_ascii=False) + "\n")


def _print_rows(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    if rows:
        table = [headers, *rows]
        widths = [max(_width(row[i]) for row in table) for i in range(len(headers))]
        for row in table:
            out.write(
                "  ".join(_pad(cell, w, right=False) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
            out.write("\n")


def _print_vms(vms: Sequence[vm_pb2.VmInstanceInventory], out: TextIO) -> None:
    def text(vm: vm_pb2.VmInstanceInventory, field: Literal["uuid", "name", "state"]) -> str:
        return _printable(getattr(vm, field)) if vm.HasField(field) else "-"

    rows = [
        (
            text(vm, "uuid"),
            _truncate(text(vm, "name"), _MAX_NAME_COLUMNS),
            text(vm, "state"),
            ",".join(_printable(rom.iso_uuid) for rom in vm.vm_cd_roms if rom.HasField("iso_uuid")) or "-",
        )
        for vm in vms
    ]
    _print_rows(("UUID", "NAME", "STATE", "ATTACHED ISOS"), rows, out)
    out.write(f"{len(vms)} VM{'' if len(vms) == 1 else 's'}\n")


def _print_cd_roms(vm: vm_pb2.VmInstanceInventory, out: TextIO) -> None:
    name = _printable(vm.name) if vm.HasField("name") else "-"
    out.write(f"VM {_printable(vm.uuid)} ({name}), {_printable(vm.state) if vm.HasField('state') else '-'}\n")
    rows = [
        (
            str(rom.device_id) if rom.HasField("device_id") else "-",
            _printable(rom.uuid) if rom.HasField("uuid") else "-",
            _printable(rom.iso_uuid) if rom.HasField("iso_uuid") else "-",
        )
        for rom in sorted(vm.vm_cd_roms, key=lambda r: r.device_id)
    ]
    _print_rows(("DEVICE", "CD-ROM", "ISO"), rows, out)


def _print_error(err: ZStackError, hint: str | None, *, as_json: bool, out: TextIO) -> None:
    line = str(err) if hint is None else f"{err} (hint: {hint})"
    out.write(f"{PROG}: {_printable(line)}\n")
    if as_json:
        out.write(json.dumps({"error": err.to_dict()}, indent=2, ensure_ascii=False) + "\n")


_HEADERS = ("UUID", "NAME", "FORMAT", "PLATFORM", "ARCH", "SIZE", "BACKUP STORAGES")
_RIGHT_ALIGNED = frozenset({"SIZE", "BACKUP STORAGES"})
_TextField = Literal["uuid", "name", "format", "platform", "architecture"]


def _print_table(images: Sequence[image_pb2.ImageInventory], out: TextIO) -> None:
    if images:
        rows = [_HEADERS, *(_row(image) for image in images)]
        widths = [max(_width(row[i]) for row in rows) for i in range(len(_HEADERS))]
        for row in rows:
            cells = [
                _pad(cell, width, right=header in _RIGHT_ALIGNED)
                for cell, width, header in zip(row, widths, _HEADERS, strict=True)
            ]
            out.write("  ".join(cells).rstrip() + "\n")
    out.write(f"{len(images)} image{'' if len(images) == 1 else 's'}\n")


def _row(image: image_pb2.ImageInventory) -> tuple[str, ...]:
    def text(field: _TextField) -> str:
        return _printable(getattr(image, field)) if image.HasField(field) else "-"

    return (
        text("uuid"),
        _truncate(text("name"), _MAX_NAME_COLUMNS),
        text("format"),
        text("platform"),
        text("architecture"),
        human_size(image.size) if image.HasField("size") else "-",
        str(len(image.backup_storage_refs)),
    )


def human_size(size: int) -> str:
    """Bytes in binary units with one decimal: ``4.3 GiB``; below 1 KiB, whole bytes: ``512 B``."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    # Rounding may reach 1024.0 of a unit ("1024.0 MiB"); that is still correct, just not minimal.
    return f"{value:.1f} {unit}"


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so names cannot break lines or drive the terminal."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    """Terminal columns ``text`` takes: wide East Asian characters take two."""
    return sum(_char_width(ch) for ch in text)


def _truncate(text: str, columns: int) -> str:
    if _width(text) <= columns:
        return text
    kept: list[str] = []
    used = 0
    for ch in text:
        if used + _char_width(ch) > columns - 1:
            break
        kept.append(ch)
        used += _char_width(ch)
    return "".join(kept) + "…"


def _pad(text: str, width: int, *, right: bool) -> str:
    fill = " " * (width - _width(text))
    return fill + text if right else text + fill
