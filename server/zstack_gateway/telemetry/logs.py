"""Log set-up: one JSON object per line (the default) or human-readable text.

A record's ``extra`` fields (``rpc``, ``vm``, ``code`` ...) become keys of its JSON object. The
gateway never puts credentials into a log record; grpc might (see :class:`GrpcRedactFilter`).

Every record becomes exactly one line, whatever it holds, for every logger and both formats:

* control characters (C0, DEL, C1, U+2028/U+2029, lone surrogates) in the message, the logger name,
  every extra field and the traceback are written as visible escapes (``\\n``, ``\\x1b``,
  ``\\u2028``), so a caller's text (a VM uuid, a ZStack error) cannot start a forged line;
* each field is cut to :data:`FIELD_CHARS` characters, a traceback to its last
  :data:`TRACEBACK_CHARS` characters (the last frames and the exception), each cut with a visible
  mark, and the whole line to :data:`LINE_BYTES` bytes of UTF-8, newline included.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fnmatch
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import IO

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

#: Characters of one field (message, extra value, logger name) as written, cut mark included.
FIELD_CHARS = 1024
#: Characters of a traceback (or stack) as written, each of its lines cut to FIELD_CHARS // 2.
TRACEBACK_CHARS = 4096
#: Bytes of one log line as UTF-8, its newline included.
LINE_BYTES = 8192

# C0 controls, DEL, C1 controls, LINE/PARAGRAPH SEPARATOR, lone surrogates (which cannot even be
# encoded as UTF-8).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _cut_mark(chars: int) -> str:
    return f"...[cut {chars} chars]"


def clean(text: str, limit: int = FIELD_CHARS) -> str:
    """``text`` with its control characters escaped, at most ``limit`` characters long; a cut one
    ends with a mark saying how many characters of the original were left out."""
    if len(text) <= limit and not _UNSAFE.search(text):
        return text  # the usual case
    head = text[:limit]  # an escape is longer than its character: no more than this can fit
    escaped = _UNSAFE.sub(lambda m: _escape_char(m.group()), head)
    if len(head) == len(text) and len(escaped) <= limit:
        return escaped
    budget = limit - len(_cut_mark(len(text)))  # room for the mark
    out: list[str] = []
    used = 0
    for i, ch in enumerate(head):
        piece = _escape_char(ch) if _UNSAFE.match(ch) else ch
        if used + len(piece) > budget:
            return "".join(out) + _cut_mark(len(text) - i)
        out.append(piece)
        used += len(piece)
    return "".join(out)  # not reached: the escaped head is longer than the budget


def clean_traceback(text: str, limit: int = TRACEBACK_CHARS) -> str:
    """A traceback (or stack) as one escaped string: each line cut, and when the whole is too long
    its last lines kept (the innermost frames and the exception), behind a mark."""
    lines = [clean(line, FIELD_CHARS // 2) for line in text.rstrip("\n").split("\n")]
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if size + len(line) + 2 > limit - 40:  # 40: room for the mark
            left = len(lines) - len(kept)
            kept.append(f"...[cut {left} earlier lines]")
            break
        kept.append(line)
        size += len(line) + 2
    return "\\n".join(reversed(kept))


_SCALARS = frozenset({type(None), bool, int, float, str})
# The extra fields of each set of record attributes (records of one log call site share theirs):
# attribute name -> key as written. Bounded: cleared when full.
_EXTRA_KEYS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    """The record's ``extra`` fields: JSON scalars as they are, anything else as its text."""
    attributes = record.__dict__
    shape = tuple(attributes)
    keys = _EXTRA_KEYS.get(shape)
    if keys is None:
        keys = tuple(
            (key, clean(key, 64)) for key in shape if key not in _STANDARD and not key.startswith("_")
        )
        if len(_EXTRA_KEYS) >= 256:
            _EXTRA_KEYS.clear()
        _EXTRA_KEYS[shape] = keys
    out: dict[str, object] = {}
    for key, written in keys:
        value = attributes[key]
        if type(value) not in _SCALARS:
            value = value if isinstance(value, bool | int | float | str) else str(value)
        out[written] = value
    return out


class _Render:
    """Writes a record's cleaned fields as one line."""

    def __call__(self, fields: Mapping[str, object]) -> str:
        raise NotImplementedError


class _JsonRender(_Render):
    def __call__(self, fields: Mapping[str, object]) -> str:
        return json.dumps(fields, ensure_ascii=False)


# A text value is quoted when it holds a space, a quote or an equals sign, so that it cannot pass
# for further key=value fields.
_NEEDS_QUOTES = re.compile(r'[\s"=]')
_HEAD = ("time", "level", "logger", "message")


def _text_value(value: object) -> str:
    if isinstance(value, str) and (value == "" or _NEEDS_QUOTES.search(value)):
        return '"' + value.replace('"', '\\"') + '"'
    return str(value)


class _TextRender(_Render):
    def __call__(self, fields: Mapping[str, object]) -> str:
        head = f"{fields['time']} {fields['level']} {fields['logger']}: {fields['message']}"
        rest = [f"{k}={_text_value(v)}" for k, v in fields.items() if k not in _HEAD]
        return " ".join([head, *rest])


_TRACEBACKS = frozenset({"exception", "stack"})


def _fit(raw: dict[str, object], render: _Render) -> str:
    """One line from a record's raw fields: strings escaped and cut to their caps, then the longest
    cut further until the line, newline included, fits :data:`LINE_BYTES` bytes of UTF-8."""
    texts = [v for v in raw.values() if type(v) is str]
    if (
        all(len(v) <= FIELD_CHARS for v in texts)
        and not _UNSAFE.search("".join(texts))
        and _TRACEBACKS.isdisjoint(raw)
    ):
        # The usual record: no field to escape or cut, so :func:`_fit_fields` would render it as
        # it is (tests/test_log_safety.py checks that both agree).
        line = render(raw)
        if len(line) * 4 < LINE_BYTES or len(line.encode("utf-8")) < LINE_BYTES:
            return line
    return _fit_fields(raw, render)


def _fit_fields(raw: dict[str, object], render: _Render) -> str:
    """:func:`_fit`, field by field."""
    limits = {
        k: TRACEBACK_CHARS if k in _TRACEBACKS else FIELD_CHARS for k, v in raw.items() if isinstance(v, str)
    }
    done: set[str] = {"time", "level"}  # short, and never cut
    for _ in range(64):  # each round cuts one field by at least the overflow; a few rounds suffice
        fields = {
            k: (clean_traceback if k in _TRACEBACKS else clean)(v, limits[k]) if isinstance(v, str) else v
            for k, v in raw.items()
        }
        line = render(fields)
        over = len(line.encode("utf-8")) + 1 - LINE_BYTES
        if over <= 0:
            return line
        cuttable = [k for k in limits if k not in done]
        if not cuttable:
            break
        key = max(cuttable, key=lambda k: len(str(fields[k])))
        # Every character is at least one byte: ``over`` characters fewer (and a little room for
        # a longer cut mark) make the line fit, unless the field has wide characters.
        limits[key] = min(limits[key], len(str(fields[key]))) - over - 16
        if limits[key] <= 32:  # nothing but the cut mark is left of it
            done.add(key)
    # Only a record with hundreds of extra fields gets here: keep its head, say what was dropped.
    head: dict[str, object] = {k: clean(str(raw[k]), 256) for k in _HEAD}
    head["cut_fields"] = len(raw) - len(_HEAD)
    return render(head)


class _SafeFormatter(logging.Formatter):
    """A record's fields, escaped and cut, on one line."""

    _render: _Render

    def _time(self, record: logging.LogRecord) -> str:
        raise NotImplementedError

    def format(self, record: logging.LogRecord) -> str:
        raw: dict[str, object] = {
            "time": self._time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            raw.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            raw["exception"] = record.exc_text
        if record.stack_info:
            raw["stack"] = self.formatStack(record.stack_info)
        return _fit(raw, self._render)


class JsonFormatter(_SafeFormatter):
    _render = _JsonRender()

    def _time(self, record: logging.LogRecord) -> str:
        return datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
            timespec="milliseconds"
        )


class TextFormatter(_SafeFormatter):
    _render = _TextRender()

    def _time(self, record: logging.LogRecord) -> str:
        return self.formatTime(record)


class GrpcRedactFilter(logging.Filter):
    """Keeps a caller's metadata values out of grpc's own log records.

    grpcio's Cython layer decodes each metadata value as UTF-8; when that fails it logs
    ``Invalid encoding on <the raw value>`` at ERROR with the UnicodeDecodeError (logger
    ``grpc._cython.cygrpc``, function ``_decode`` in ``grpc_string.pyx.pxi``), and goes on with the
    value decoded as Latin-1. The value may be an ``authorization`` header: this filter rewrites
    such a record to say only how long the value was, drops the exception (which holds the raw
    value) and lowers it to WARNING (it is the caller's mistake, and the call still gets its
    status). Any other bytes argument of a grpc record is replaced by its length too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("grpc"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == "Invalid encoding on %s" and len(args) == 1:
            size = len(args[0]) if isinstance(args[0], bytes | bytearray | str) else 0
            record.msg = "a call's metadata value is not valid UTF-8 (%d bytes, not logged)"
            record.args = (size,)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        elif any(isinstance(a, bytes | bytearray | memoryview) for a in args):
            record.args = tuple(
                f"<{len(a)} bytes, not logged>" if isinstance(a, bytes | bytearray | memoryview) else a
                for a in args
            )
        return True


_GRPC_REDACT = GrpcRedactFilter()
# The loggers of grpcio that may log metadata. A filter on a logger sees only that logger's own
# records, so the handler below carries it too, for every other grpc logger.
_GRPC_LOGGERS = ("grpc._cython.cygrpc",)


def install_grpc_redaction() -> None:
    """Put :class:`GrpcRedactFilter` on grpc's loggers (idempotent): a record is redacted before
    any handler sees it, the root handler of :func:`setup` or one an embedding program added."""
    for name in _GRPC_LOGGERS:
        logger = logging.getLogger(name)
        if _GRPC_REDACT not in logger.filters:
            logger.addFilter(_GRPC_REDACT)


# grpc core's tracer that prints every incoming header, value included, unredacted.
_HEADER_TRACER = "chttp2_hpack_parser"


def unsafe_grpc_trace(environ: Mapping[str, str]) -> str | None:
    """The ``GRPC_TRACE`` setting when it turns on grpc core's header tracer (by name, ``all`` or a
    glob), else None. That tracer writes every call's metadata, ``authorization`` included, to
    stderr, and grpc reads the setting when it is imported, so the gateway can only refuse it.
    grpc's other tracers print metadata values as "N bytes redacted"."""
    setting = environ.get("GRPC_TRACE", "")
    enabled = False
    for item in setting.split(","):
        name = item.strip()
        negated = name.startswith("-")
        name = name.lstrip("-")
        if name and (name == "all" or fnmatch.fnmatchcase(_HEADER_TRACER, name)):
            enabled = not negated
    return setting if enabled else None


#: Seconds a line logged on the event loop may wait to be written with the lines logged after it.
BATCH_SECONDS = 0.02
#: Characters of waiting lines that make the batch go out at once.
BATCH_CHARS = 64 * 1024


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes the lines logged on an event loop in batches.

    A line per call, each its own write to stderr, costs a system call and wakes whoever reads
    stderr (the pump of :mod:`~zstack_gateway.telemetry.core_logs`, a container runtime) once per
    call. Here a line logged on a running event loop waits up to :data:`BATCH_SECONDS` for the
    lines after it, and they go out in one write. What never waits: a record at ERROR or above, a
    batch of :data:`BATCH_CHARS` characters or more, and a line logged where no event loop runs
    (start-up, shutdown, worker threads), which also takes any waiting lines with it, in order.
    :meth:`flush` (called by ``logging.shutdown`` at exit) writes what waits. A process killed
    without a chance to flush loses at most the last :data:`BATCH_SECONDS` of lines.
    """

    def __init__(self, stream: IO[str] | None = None, delay: float = BATCH_SECONDS) -> None:
        super().__init__(stream)
        self._delay = delay
        self._waiting: list[str] = []
        self._chars = 0
        self._timer: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._waiting.append(line)
        self._chars += len(line)
        if record.levelno >= logging.ERROR or self._chars >= BATCH_CHARS:
            self._write_waiting()
            return
        if self._timer is not None:
            return  # the batch is already due
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: at once
            self._write_waiting()
            return
        self._timer = loop.call_later(self._delay, self._due)

    def _due(self) -> None:
        self.acquire()
        try:
            self._timer = None
            self._write_waiting()
        finally:
            self.release()

    def _write_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._waiting:
            return
        text = "\n".join(self._waiting) + "\n"
        self._waiting.clear()
        self._chars = 0
        with contextlib.suppress(OSError, ValueError):  # stderr is gone: nothing left to write to
            self.stream.write(text)
            self.stream.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_waiting()
            super().flush()
        finally:
            self.release()


def handler(fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    """The gateway's log handler: ``fmt`` json or text, to ``stream`` (default stderr), lines
    logged on the event loop written in batches (:class:`BatchingHandler`)."""
    out = BatchingHandler(sys.stderr if stream is None else stream)
    out.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    out.addFilter(_GRPC_REDACT)
    return out


def setup(level: str, fmt: str) -> None:
    install_grpc_redaction()
    root = logging.getLogger()
    root.handlers[:] = [handler(fmt)]
    root.setLevel(level.upper())
