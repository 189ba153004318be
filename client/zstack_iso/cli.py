"""The ``zstack-iso`` command.

    zstack-iso candidates VM_UUID [--target HOST:PORT] [--session SESSION] [--json] [--timeout S]
                                  [--system-tag TAG ...] [--user-tag TAG ...]

``--target`` defaults to $ZSTACK_GATEWAY_TARGET, else 127.0.0.1:50051. ``--session`` defaults to
$ZSTACK_SESSION; prefer the variable, since other users of the host can read command lines. The
session is never printed.

Exit status: 0 on success; 1 when the call failed (the gRPC status is printed on stderr); 2 for a
usage error, including a missing session, which is caught before any call is made.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
from collections.abc import Sequence
from typing import Literal, TextIO

from google.protobuf import json_format
from zstack.v1 import image_pb2

from zstack_iso.client import IsoClient
from zstack_iso.errors import ZStackError

__all__ = ["main"]

PROG = "zstack-iso"
DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "ZSTACK_GATEWAY_TARGET"
SESSION_ENV = "ZSTACK_SESSION"

EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2

# Longest NAME shown in the table, in terminal columns; --json has the full name.
_MAX_NAME_COLUMNS = 48


def main(argv: Sequence[str] | None = None) -> int:
    parser, candidates = _parsers()
    args = parser.parse_args(argv)
    session = args.session or os.environ.get(SESSION_ENV) or ""
    if not session:
        candidates.error(f"no session: pass --session or set {SESSION_ENV}")
    try:
        client = IsoClient(args.target, session=session, timeout=args.timeout)
    except ValueError as exc:
        # The messages name the problem, never the session's value.
        candidates.error(str(exc))
    try:
        with client:
            images = client.list_candidates(
                args.vm_instance_uuid, system_tags=args.system_tags, user_tags=args.user_tags
            )
    except ZStackError as err:
        _print_error(err, as_json=args.json, out=sys.stderr)
        return EXIT_RPC_ERROR
    except KeyboardInterrupt:
        return 130
    try:
        if args.json:
            _print_json(images, sys.stdout)
        else:
            _print_table(images, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (e.g. `head`) left early. Point stdout at devnull so that the interpreter's
        # final flush does not fail again, and exit 1 as Python itself does on a broken pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return EXIT_OK


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command's parser and that of its one subcommand, ``candidates``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="List ZStack ISO images through the zstack-grpc-gateway."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    candidates = commands.add_parser(
        "candidates",
        help="the ISO images that can be attached to a VM",
        description="List the ISO images that can be attached to a VM (GetCandidateIso).",
    )
    candidates.add_argument("vm_instance_uuid", metavar="VM_UUID", help="the VM's UUID (32 hex characters)")
    candidates.add_argument(
        "--target",
        default=os.environ.get(TARGET_ENV) or DEFAULT_TARGET,
        metavar="HOST:PORT",
        help=f"the gateway's address (default: ${TARGET_ENV}, else {DEFAULT_TARGET})",
    )
    candidates.add_argument(
        "--session",
        metavar="SESSION",
        help=f"a ZStack session UUID (default: ${SESSION_ENV}, which is safer than the command line)",
    )
    candidates.add_argument(
        "--json", action="store_true", help="print one JSON array of the images, with ZStack's field names"
    )
    candidates.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=30.0,
        metavar="S",
        help="seconds the whole call may take (default: 30)",
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
    return parser, candidates


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Output


def _print_json(images: Sequence[image_pb2.ImageInventory], out: TextIO) -> None:
    data = [json_format.MessageToDict(image) for image in images]
    out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _print_error(err: ZStackError, *, as_json: bool, out: TextIO) -> None:
    out.write(f"{PROG}: {_printable(str(err))}\n")
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
