"""Cuts ZStack's image list into stream messages, building each one only when a caller needs it.

What a call holds follows the bytes it received. ZStack's answer stays the bytes that came (never a
Python object per image); images are parsed, translated and serialized one at a time as their
message is built, and a built message is kept as its serialized bytes. The rules (also documented
in the proto):

* every message is at most CHUNK_BYTES (1 MiB) serialized, so it fits any caller's default maximum
  (4 MiB) with room to spare;
* the first message holds at most FIRST_CHUNK_IMAGES images, so the first image arrives early, and
  later ones at most CHUNK_IMAGES (grpcio spends a roughly fixed cost per message, so one message
  per image would make long lists slow);
* an empty list is one message with no images;
* an image that alone is over CHUNK_BYTES ends the stream with RESOURCE_EXHAUSTED (ErrorInfo reason
  ``IMAGE_TOO_LARGE``) right after the images before it.

How. The body is checked once up front without building Python objects: valid UTF-8, then msgspec
checks it is JSON, an object, with an ``inventories`` list, and points at that list's text. Whatever
that check refuses goes through the full parse (orjson), which gives the same error as it always did,
or, for the rare JSON that only orjson accepts, the parsed list. Images are then taken from the
list's text one at a time: on the compiled path (:mod:`zstack_gateway.wire`) as the text of each,
which is turned into its serialized ImageInventory without a Python object per field; on the pure
path parsed from a window of the text by the json module's scanner, which also tells where each
image ends, and translated. Each is serialized alone and framed as field 1 (``inventories``) of
GetCandidateIsoResponse: a message is the concatenation of its framed images, so its exact size is
known before it is sent.

An :class:`ImageStream` is shared by coalesced calls, each reading it through a :class:`Reader`.
A message is built once, by whichever reader needs it first, and kept until every reader has taken
it; the list's text goes when every image is built. What the stream holds is charged to the
gateway's memory budget (see :mod:`zstack_gateway.budget`) and released as it goes. A message that
cannot be built (an image ZStack sent that cannot be translated, or one too large) ends every call
that reaches it with the same error, after the images before it.
"""

from __future__ import annotations

import asyncio
import codecs
import dataclasses
import json
import re
import weakref
from collections.abc import Callable, Iterator
from json.scanner import make_scanner
from typing import Any, Final, NamedTuple
from zoneinfo import ZoneInfo

import msgspec
import orjson
from google.protobuf.message import Message

from zstack_gateway import errors, translate, wire
from zstack_gateway.budget import Account
from zstack_gateway.deadline import Deadline

FIRST_CHUNK_IMAGES: Final = 16
CHUNK_IMAGES: Final = 512
CHUNK_BYTES: Final = 1024 * 1024
#: Bytes of the list's text decoded at a time (more when one image is larger).
WINDOW_BYTES: Final = 1024 * 1024
#: On the compiled path, bodies of at least this size are checked up front in slices of
#: CHECK_SLICE_BYTES, the event loop serving other calls between two slices (see open_stream).
SLICED_CHECK_BYTES: Final = 16 * 1024 * 1024
CHECK_SLICE_BYTES: Final = 1024 * 1024
#: How far into a body the sliced check looks for the ``inventories`` key.
_LIST_START_LIMIT: Final = 64 * 1024

# The tag of GetCandidateIsoResponse.inventories: field 1, length-delimited.
_INVENTORIES_TAG: Final = 0x0A
_SHORT_HEADERS: Final = tuple(bytes((_INVENTORIES_TAG, size)) for size in range(0x80))


class Chunk(NamedTuple):
    """One stream message, serialized: a GetCandidateIsoResponse holding ``images`` images."""

    data: bytes
    images: int


def _header(size: int) -> bytes:
    """The tag and varint length that frame a serialized image of ``size`` bytes in the message."""
    if size < 0x80:
        return _SHORT_HEADERS[size]
    out = bytearray((_INVENTORIES_TAG,))
    while size >= 0x80:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out)


# --- the body, checked up front ------------------------------------------------------------------

Body = bytes | bytearray


class _Envelope(msgspec.Struct):
    inventories: msgspec.Raw


_ENVELOPE: Final = msgspec.json.Decoder(_Envelope)
_END: Final = object()


def _items_of(body: Body, compiled: bool) -> Iterator[Any] | _Cursor:
    """The items of a success body ``{"inventories": [...]}``, parsed one at a time as asked for
    (``compiled``: as the compiled path's cursor, for images).

    Raises, before any image is read, the errors the full parse gives: GatewayError (ZSTACK_BAD_RESPONSE)
    for a body that is not valid JSON, TranslationError for a body of the wrong shape.
    """
    if _is_utf8(body):
        try:
            envelope = _ENVELOPE.decode(body)
        except (msgspec.DecodeError, RecursionError):  # msgspec.ValidationError is a DecodeError
            pass
        else:
            text = memoryview(envelope.inventories)  # a view into body: nothing is copied
            if text[0] == ord("["):
                return _Cursor(text) if compiled else _list_items(text)
    # What the check refused: the full parse says why, in the words it always used, or (JSON that only
    # orjson accepts, e.g. nesting msgspec finds too deep) gives the list.
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_response(f"the body is not valid JSON ({exc.msg} at byte {exc.pos})") from None
    return _parsed_items(translate.inventory_items(parsed))


def _is_utf8(body: Body) -> bool:
    if body.isascii():
        return True
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(body)
    try:
        for start in range(0, len(view), WINDOW_BYTES):
            decoder.decode(view[start : start + WINDOW_BYTES])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _parsed_items(items: list[Any]) -> Iterator[Any]:
    """Items already parsed; each is let go once handed out."""
    for index, item in enumerate(items):
        items[index] = None
        yield item


# Between items of a list: JSON whitespace and the comma.
_SEPARATORS: Final = frozenset(" \t\n\r,")
_scan_once: Final = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed wants its own type


# Text without brackets, strings included whole.
_FLAT: Final = re.compile(r'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+')


def _deep_item(window: str, at: int) -> tuple[Any, int] | None:
    """The item (an array or object) at ``at`` parsed by orjson, and where it ends; None when it runs
    past the window."""
    depth, pos = 0, at
    while True:
        flat = _FLAT.match(window, pos)
        pos = flat.end() if flat is not None else pos
        if pos == len(window) or window[pos] == '"':  # the window cuts it (in a string, for '"')
            return None
        depth += 1 if window[pos] in "[{" else -1
        pos += 1
        if depth == 0:
            try:
                return orjson.loads(window[at:pos]), pos
            except orjson.JSONDecodeError as exc:
                raise errors.bad_response(f"the body is not valid JSON ({exc.msg})") from None


class _Cursor:
    """The compiled path's place in the list's text (``text``, already checked to be valid JSON):
    ``pos`` is 1 (past its ``[``) or where the last image taken ended."""

    __slots__ = ("pos", "text")

    def __init__(self, text: memoryview) -> None:
        self.text = text
        self.pos = 1

    def next_text(self) -> memoryview | None:
        """The next image's text (the cursor moves past it); None where the compiled scan cannot
        follow the text (the json module's scanner then goes on from ``pos``)."""
        try:
            start, end = wire.next_item(self.text, self.pos)
        except ValueError:
            return None
        if start < 0:
            return None
        self.pos = end
        return self.text[start:end]


def _list_items(text: memoryview, start: int = 1) -> Iterator[Any]:
    """The items of a JSON list (``text``, already checked to be valid JSON), parsed one at a time.

    A window of the text is decoded at a time (WINDOW_BYTES, more when one item is larger); the json
    module's scanner parses the item at a position and says where it ends.
    """
    size = WINDOW_BYTES  # start: past the list's "[", or where the compiled scan stopped
    while True:
        # Not final: a character cut by the window's end is left for the next window.
        window, used = codecs.utf_8_decode(text[start : start + size], "strict", False)
        width = len(window)
        last = start + used == len(text)
        at = 0
        while True:
            while at < width and window[at] in _SEPARATORS:
                at += 1
            if at == width:
                if last:  # cannot happen: the checked text ends with "]"
                    raise errors.bad_response("the body is not valid JSON (the list does not end)")
                break
            if window[at] == "]":
                return
            try:
                item, end = _scan_once(window, at)
            except RecursionError:
                # Nesting the scanner finds too deep on this call's stack (orjson goes to 1,024).
                deep = _deep_item(window, at)
                if deep is None:
                    if last:  # cannot happen: the whole text was checked
                        raise errors.bad_response(
                            "the body is not valid JSON (an item does not end)"
                        ) from None
                    break
                item, end = deep
            except (ValueError, StopIteration) as exc:  # ValueError: JSONDecodeError too
                # Where the window cuts the item, it is incomplete: read on. In the last window, only
                # what the json module refuses beyond the check can come here (an integer of more
                # than 4,300 digits).
                if last:
                    raise errors.bad_response(f"the body is not valid JSON ({exc})") from None
                break
            if end == width and not last:
                break  # an item that ends where the window does may go on past it (a number)
            yield item
            at = end
        # The next window starts at the item that ran past this one, and is larger if the item
        # already started this one.
        offset = start + (at if used == width else len(window[:at].encode("utf-8")))
        size = size * 2 if offset == start else WINDOW_BYTES
        start = offset


async def _sliced_check(body: Body) -> tuple[int, int] | None:
    """The up-front check of a large body, a slice at a time with a turn of the event loop between
    two: where the list under ``inventories`` starts and ends, or None for a body this check does
    not pass (the usual check then reads it, and gives the usual error).

    It passes exactly the bodies the usual check passes, with the list msgspec finds there: valid
    UTF-8; the list's items, cut into slices where the compiled scan says items end, each slice valid
    JSON (msgspec, as deep as in the body), the commas between them checked by the scan, so that the
    slices are the whole list; the object around the list valid for the envelope, with an empty list
    in its place and no other ``inventories`` (or escaped) key.
    """
    view = memoryview(body)
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for at in range(0, len(view), CHECK_SLICE_BYTES):
            decoder.decode(view[at : at + CHECK_SLICE_BYTES])
            await asyncio.sleep(0)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return None
    start = wire.list_start(view, _LIST_START_LIMIT)
    if start < 0:
        return None
    pos = start + 1
    while True:
        try:
            first, last, end = wire.items_span(view, pos, CHECK_SLICE_BYTES)
        except ValueError:
            return None
        if last > first:
            try:
                msgspec.json.decode(b"".join((b'{"":[', view[first:last], b"]}")), type=msgspec.Raw)
            except (msgspec.DecodeError, RecursionError):
                return None
            pos = last
        if end >= 0:
            break
        await asyncio.sleep(0)
    if start + len(view) - end > CHECK_SLICE_BYTES or wire.top_level_key(view, end) != 0:
        return None
    try:
        _ENVELOPE.decode(b"".join((view[:start], b"[]", view[end:])))
    except (msgspec.DecodeError, RecursionError):
        return None
    return start, end


async def open_stream(
    body: Body, tz: ZoneInfo, account: Account | None = None, *, shared_by: asyncio.Task[Any] | None = None
) -> ImageStream:
    """``ImageStream(body, tz, account, shared_by=shared_by)``; on the compiled path, a body of
    SLICED_CHECK_BYTES or more is checked a slice at a time, so that the check never holds up the
    event loop for long (the whole check at once takes about 0.8 ms per MB)."""
    checked = None
    if wire.PATH == "compiled" and len(body) >= SLICED_CHECK_BYTES:
        try:
            checked = await _sliced_check(body)
        except BaseException:
            if account is not None:
                account.close()
            raise
    return ImageStream(body, tz, account, shared_by=shared_by, checked=checked)


# --- a body still arriving ------------------------------------------------------------------------

#: Bodies announced smaller than this are read whole before their stream starts (see Arrival): on
#: loopback a 1 MB body arrives in about 1 ms, and checking it as it arrives, interleaved with the
#: first writes, measured no earlier first image and about 0.5 ms more per call.
ARRIVING_MIN_BYTES: Final = 2 * 1024 * 1024

#: An arriving body is checked a slice at a time, the event loop turning between two: first
#: FIRST_SLICE_BYTES (the first message's images go out after it), then ARRIVING_SLICE_BYTES.
FIRST_SLICE_BYTES: Final = 32 * 1024
ARRIVING_SLICE_BYTES: Final = 256 * 1024

_HEAD, _ITEMS, _TAIL, _DONE, _FALLBACK = range(5)
_COMMA, _OPEN, _CLOSE = b",[]"


class _NeedMore(Exception):
    """The next message needs bytes of the body that have not arrived yet."""


class _Growth:
    """The compiled path's check of a body still arriving (``body``, the buffer the upstream client
    appends to), the same check as the sliced one a piece at a time: valid UTF-8 so far, the list
    under ``inventories`` found within its first bytes, each run of complete items valid JSON
    (msgspec, as deep as in the body), and once the body is whole, the object around the list.
    Images are taken from ``body[start:checked]``; ``pos`` is where the next one starts in that text.

    It never holds a view of ``body`` between two calls: the buffer must stay free to grow.
    """

    __slots__ = (
        "body",
        "checked",
        "complete",
        "decoded",
        "end",
        "failure",
        "phase",
        "pos",
        "retry_at",
        "scan",
        "start",
    )

    def __init__(self, body: bytearray) -> None:
        self.body = body
        self.phase = _HEAD
        self.decoded = 0  # bytes found valid UTF-8
        self.start = self.end = -1
        self.scan = self.checked = 0  # where the scan goes on, and where the checked items end
        self.retry_at = 0
        self.pos = 1
        self.complete = False
        self.failure: errors.GatewayError | None = None

    def advance(self) -> bool:
        """Check a slice of what arrived; True when more that arrived is left to check (after a turn
        of the event loop). A body this check does not pass goes to the usual check once it is whole
        (phase _FALLBACK), which gives the usual error, or passes it."""
        if self.phase >= _DONE:
            return False
        view = memoryview(self.body)
        try:
            return self._advance(view)
        finally:
            view.release()

    def _advance(self, whole: memoryview) -> bool:
        n = len(whole)
        if self.phase == _ITEMS:
            if n < self.retry_at and not self.complete:
                return False  # one item larger than what came since the last scan: read on first
            upto = self.scan + (ARRIVING_SLICE_BYTES if self.scan > self.start + 1 else FIRST_SLICE_BYTES)
            if upto < n:
                n = upto
        if n == len(whole):
            return self._check(whole, False) or False
        view = whole[:n]
        try:
            more = self._check(view, True)
        finally:
            view.release()
        if more is None:  # an item longer than the slice: what arrived, whole
            return self._check(whole, False) or False
        return more

    def _check(self, view: memoryview, sliced: bool) -> bool | None:
        """Check ``view`` (all that arrived, or the slice of it this turn checks, for ``sliced``):
        True when more is left to check now, None for a slice with no item that ends in it."""
        n = len(view)
        final = self.complete and not sliced
        try:
            if self.decoded < n or final:
                self.decoded += codecs.utf_8_decode(view[self.decoded : n], "strict", final)[1]
        except UnicodeDecodeError:
            self.phase = _FALLBACK
            return False
        if self.phase == _HEAD:
            start = wire.list_start(view, _LIST_START_LIMIT)
            if start < 0:
                if n >= _LIST_START_LIMIT or final:
                    self.phase = _FALLBACK
                return False
            self.start, self.scan, self.checked, self.phase = start, start + 1, start + 1, _ITEMS
            return True  # the first slice of items next
        if self.phase == _ITEMS:
            if self._quick_cut(view, n) and not final:
                return sliced
            try:
                first, last, end = wire.complete_items(view, self.scan)
            except ValueError:
                self.phase = _FALLBACK
                return False
            if last > first:
                try:
                    msgspec.json.decode(b"".join((b'{"":[', view[first:last], b"]}")), type=msgspec.Raw)
                except (msgspec.DecodeError, RecursionError):
                    self.phase = _FALLBACK
                    return False
                self.scan = self.checked = last
                self.retry_at = 0
            elif end < 0 and not sliced:
                # Scan again once as much again has come: a long item costs linear time, not more.
                self.retry_at = self.scan + 2 * (n - self.scan)
            if end >= 0:
                self.end, self.phase = end, _TAIL
            elif final:
                self.phase = _FALLBACK
                return False
            elif sliced:
                return True if last > first else None
        if self.phase == _TAIL and final:
            start, end = self.start, self.end
            if start + n - end > CHECK_SLICE_BYTES or wire.top_level_key(view, end) != 0:
                self.phase = _FALLBACK
                return False
            try:
                _ENVELOPE.decode(b"".join((view[:start], b"[]", view[end:])))
            except (msgspec.DecodeError, RecursionError):
                self.phase = _FALLBACK
                return False
            self.checked, self.phase = end, _DONE
        return False

    def _quick_cut(self, view: memoryview, n: int) -> bool:
        """The usual case, in one pass: the items up to the last ``},`` in what came. msgspec passing
        them (after a dummy item, when they follow a comma) proves the cut falls where an item ends:
        a cut inside a string or a nested value leaves invalid JSON. False: no such cut, or it does
        not pass (the scan then finds where the complete items end)."""
        cut = self.body.rfind(b"},", self.scan, n)
        if cut < 0:
            return False
        body, scan = self.body, self.scan
        opening = scan == self.start + 1
        if not opening and body[scan] != _COMMA:
            return False
        # Checked in place, without a copy: the comma after the cut (and the one before the first
        # item) made brackets for the time of the check.
        begin = self.start if opening else scan
        saved = body[begin]
        body[begin], body[cut + 1] = _OPEN, _CLOSE
        try:
            msgspec.json.decode(view[begin : cut + 2], type=msgspec.Raw)
        except (msgspec.DecodeError, RecursionError):
            return False
        finally:
            body[begin], body[cut + 1] = saved, _COMMA
        self.scan = self.checked = cut + 1
        self.retry_at = 0
        return True

    def one_list(self) -> bool:
        """The body's object has one ``inventories`` key, that of the list checked here."""
        if self.end < 0:
            return False
        view = memoryview(self.body)
        try:
            return wire.top_level_key(view, self.end) == 0
        finally:
            view.release()


class Arrival:
    """The upstream client's sink for a 200 answer to GetCandidateIso on the compiled path (see
    ``upstream.ZStackClient._read_body``): the stream starts when the answer's headers come, and its
    images are built as the body arrives, checked a piece at a time.

    ``begin`` makes the :class:`ImageStream` and hands it to ``publish`` (coalesce.publish: the calls
    sharing the request get it at once); ``feed`` after each piece; then :meth:`finish` once the body
    is whole, or :meth:`fail` with what ended the read.

    The read's timer (``limit``, started on the first caller's deadline) is the stream's to push: each
    caller holding the stream calls :meth:`ImageStream.hold_for` with its deadline, so that the read
    runs until the latest of them, never ending a caller's call on another caller's deadline.
    """

    min_bytes = ARRIVING_MIN_BYTES

    def __init__(
        self,
        tz: ZoneInfo,
        *,
        shared_by: asyncio.Task[Any] | None,
        publish: Callable[[ImageStream], None],
    ) -> None:
        self._tz = tz
        self._shared_by = shared_by
        self._publish = publish
        self._body = bytearray()
        self.stream: ImageStream | None = None

    @property
    def started(self) -> bool:
        return self.stream is not None

    def begin(self, body: bytearray, account: Account, limit: asyncio.Timeout | None = None) -> None:
        self._body = body
        self.stream = ImageStream(body, self._tz, account, shared_by=self._shared_by, arriving=True)
        self.stream._limit = limit
        self._shared_by = None
        self._publish(self.stream)

    def feed(self) -> bool:
        """Check a slice of what arrived; True when more is left: call again after a loop turn."""
        assert self.stream is not None
        return self.stream._arrived(len(self._body))

    def finish(self) -> ImageStream:
        assert self.stream is not None
        self.stream._limit = None  # the read is over
        self.stream._arrived(len(self._body), complete=True)
        del self._body
        return self.stream

    def fail(self, exc: BaseException) -> None:
        if self.stream is not None:
            self.stream._limit = None
            self.stream._cut(exc)


# --- the stream ------------------------------------------------------------------------------------


class _Seal:
    """Set once no further reader can join the stream (see ImageStream)."""

    sealed = False

    def __call__(self, _: object = None) -> None:
        self.sealed = True


class ImageStream:
    """ZStack's answer, checked for shape, built lazily into stream messages for one or more readers.

    ``translate_item`` turns one item of ``inventories`` into its message (an image by default; a
    VM for GetCandidateVm, whose response frames its list as field 1 too).

    ``account`` holds the body's bytes against the memory budget; the stream adds its messages to it
    and releases both as it lets them go. ``shared_by``: the task whose result this stream is, when
    coalesced calls may still join it through that task; until the task is gone, messages every
    current reader has taken are kept for readers still to come (except while the body arrives: those
    go, and a reader joining later gets them rebuilt from the body). None: the stream is not shared
    beyond the readers it gets at once. ``checked``: where the list starts and ends in ``body``, when
    :func:`open_stream` has already checked it.
    """

    def __init__(
        self,
        body: Body,
        tz: ZoneInfo,
        account: Account | None = None,
        *,
        shared_by: asyncio.Task[Any] | None = None,
        translate_item: Callable[[Any, ZoneInfo, str], Message] = translate.image_from_json,
        checked: tuple[int, int] | None = None,
        arriving: bool = False,
    ) -> None:
        self._translate_item = translate_item
        self._account = account
        self._body_bytes = len(body)
        self._items: Iterator[Any] | _Cursor | _Growth | None = None
        self._built: list[Chunk | None] = []
        self._closed = False
        # The message being built when the body ran out: (framed images, their bytes, images).
        self._pending: tuple[list[bytes], int, int] | None = None
        self._progress: asyncio.Event | None = None  # set when more of an arriving body came
        self._limit: asyncio.Timeout | None = None  # the timer of an arriving body's read (Arrival)
        # An arriving body's check, while readers may still join: the messages every present reader
        # took are let go, and a reader joining later gets them rebuilt from this body.
        self._source: _Growth | None = None
        try:
            if arriving:
                assert isinstance(body, bytearray) and wire.PATH == "compiled"
                self._items = self._source = _Growth(body)
            elif checked is not None:
                self._items = _Cursor(memoryview(body)[checked[0] : checked[1]])
            else:
                # The compiled path writes ImageInventory: other items take the reference.
                compiled = wire.PATH == "compiled" and translate_item is translate.image_from_json
                self._items = _items_of(body, compiled)
        except BaseException:
            self.close()
            raise
        self._tz = tz
        self._seal = _Seal()
        self._shared_by: weakref.ref[asyncio.Task[Any]] | None = None
        if shared_by is None:
            self._seal()
        else:
            # Held so that its callback fires when the coalescer lets the shared task go.
            self._shared_by = weakref.ref(shared_by, self._seal)
        self._index = 0  # of the next image to translate
        self._sent = 0  # images in the messages built
        # A framed image that did not fit in the message before: (index, header, data).
        self._carry: tuple[int, bytes, bytes] | None = None
        self._failure: tuple[str, str] | errors.GatewayError | None = None
        self._released = 0  # messages let go (every reader took them)
        self._readers: dict[int, int] = {}  # reader id -> index of the next message it reads
        self._next_reader = 0

    # -- a body still arriving --

    def _arrived(self, size: int, *, complete: bool = False) -> bool:
        """The body has ``size`` bytes now (all of it, for ``complete``): check a slice of what came
        (all of it, for ``complete``), wake the readers; True when more is left to check (after a
        turn of the event loop, which lets readers send what is checked)."""
        growth = self._items
        more = False
        if isinstance(growth, _Growth):
            growth.complete = complete
            more = growth.advance()
            while complete and more:
                more = growth.advance()
            self._body_bytes = size
            if complete and growth.phase == _FALLBACK:
                self._fall_back(growth)
        elif self._items is None and self._account is not None:
            # The stream let go of the body early (it failed): what still comes is not held for it.
            self._account.release(size - self._body_bytes)
            self._body_bytes = size
        self._wake()
        return more

    def _fall_back(self, growth: _Growth) -> None:
        """The whole body, which the check as it arrived did not pass: the usual check says why, or
        passes it; the images already sent are skipped (those taken for the next message are taken
        again)."""
        index = self._index = self._sent
        self._pending = self._carry = None
        # The messages from here come from the whole body, not from what the check as it arrived
        # passed: they cannot be rebuilt from it (readers can no longer join anyway: the read ended).
        self._source = None
        try:
            items = _items_of(growth.body, True)
            if index and not growth.one_list():
                # Not the list the images already sent came from (a second ``inventories`` key).
                raise errors.bad_response("the body has more than one inventories list")
            if isinstance(items, _Cursor):
                for skipped in range(index):
                    if items.next_text() is None:
                        items = _list_items(items.text, items.pos)
                        for _ in range(index - skipped):
                            next(items)
                        break
            else:
                for _ in range(index):
                    next(items)
        except translate.TranslationError as exc:
            self._fail((exc.field, exc.reason))
            return
        except errors.GatewayError as exc:
            self._fail(exc)
            return
        self._items = items

    def _cut(self, exc: BaseException) -> None:
        """The body's read ended early with ``exc``: readers get it after the images that arrived."""
        growth = self._items
        if isinstance(growth, _Growth):
            if isinstance(exc, errors.GatewayError):
                growth.failure = exc
            else:
                growth.failure = errors.internal("the read of ZStack's answer was abandoned")
        self._wake()

    def _wake(self) -> None:
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.set()

    async def _arrival(self) -> None:
        if self._progress is None:
            self._progress = asyncio.Event()
        await self._progress.wait()

    # -- readers --

    def hold_for(self, deadline: Deadline) -> None:
        """A caller whose deadline is ``deadline`` holds the stream: while its body arrives, the read
        runs at least until then (the latest deadline of the callers holding it bounds the read; a
        caller's own deadline ends its own call, see :meth:`reader`)."""
        limit = self._limit
        if limit is None:
            return
        when = limit.when()
        later = asyncio.get_running_loop().time() + deadline.remaining()
        if when is not None and later > when:
            try:
                limit.reschedule(later)
            except RuntimeError:  # the read's timer is over (the read ended just now)
                self._limit = None

    def reader(self, deadline: Deadline | None = None) -> Reader:
        """Start reading from the first message. ``deadline``: the caller's, which ends its wait for
        the body to arrive (DEADLINE_EXCEEDED) even when the read goes on for other callers."""
        catch_up: tuple[Reader, int] | None = None
        if self._released and self._source is not None and not self._seal.sealed and not self._closed:
            # Joining an arriving stream whose first messages were let go: those are rebuilt for
            # this reader alone from the body (it is kept until the read ends), the rest shared.
            catch_up = (self._rebuild(self._source).reader(), self._released)
        elif self._closed or self._released:
            # Cannot happen with the coalescer: a call that can still join holds the stream's task.
            raise errors.internal("a call joined a shared stream after its first messages were let go")
        token = self._next_reader
        self._next_reader += 1
        self._readers[token] = self._released
        return Reader(self, token, deadline, catch_up)

    def _rebuild(self, source: _Growth) -> ImageStream:
        """A stream of its own over the part of the arriving body ``source`` checked so far, which
        builds the same messages as this one from the first (the messages are the same however the
        body arrives), for one reader; nothing of it is kept beyond the message being read."""
        rebuilt = ImageStream(source.body, self._tz, translate_item=self._translate_item, arriving=True)
        growth = rebuilt._items
        assert isinstance(growth, _Growth)
        growth.start, growth.scan, growth.checked, growth.phase = (
            source.start,
            source.checked,
            source.checked,
            _DONE,
        )
        rebuilt._source = None
        return rebuilt

    def messages(self) -> Iterator[Chunk]:
        """Every message, for one reader."""
        reader = self.reader()
        try:
            yield from reader
        finally:
            reader.close()

    def _read(self, token: int) -> Chunk:
        index = self._readers[token]
        if index == len(self._built) and not self._build():
            raise StopIteration
        chunk = self._built[index]
        assert chunk is not None
        self._readers[token] = index + 1
        if self._source is not None:
            if self._seal.sealed:
                self._source = None  # no reader can join any more: the body goes as in any stream
            self._let_go(min(self._readers.values()))
        elif self._seal.sealed:
            self._let_go(min(self._readers.values()))
        return chunk

    def _leave(self, token: int) -> None:
        del self._readers[token]
        if self._seal.sealed:
            self._source = None
            if self._readers:
                self._let_go(min(self._readers.values()))
            else:
                self.close()
        elif self._source is not None and self._readers:
            self._let_go(min(self._readers.values()))

    def _let_go(self, below: int) -> None:
        for index in range(self._released, below):
            chunk = self._built[index]
            self._built[index] = None
            if chunk is not None and self._account is not None:
                self._account.release(len(chunk.data))
        self._released = max(self._released, below)

    def close(self) -> None:
        """Let go of everything: the body, every message, their charge on the budget."""
        self._closed = True
        self._drop_body()
        self._source = None
        self._built = []
        self._pending = None
        self._wake()
        if self._account is not None:
            self._account.close()

    # -- building --

    def _drop_body(self) -> None:
        if self._items is not None:
            self._items = None
            if self._account is not None:
                self._account.release(self._body_bytes)

    def _raise_failure(self) -> None:
        failure = self._failure
        # A new exception each time: a kept one would keep the frames of its first raise alive.
        if isinstance(failure, errors.GatewayError):
            raise dataclasses.replace(failure)
        if failure is not None:
            raise translate.TranslationError(*failure)

    def _build(self) -> bool:
        """Build the next message; False when there is none."""
        self._raise_failure()
        if self._closed:
            raise errors.internal("read from a closed stream")
        limit = CHUNK_IMAGES if self._built else FIRST_CHUNK_IMAGES
        pieces: list[bytes]
        pieces, size, images = self._pending if self._pending is not None else ([], 0, 0)
        self._pending = None
        items, tz, index = self._items, self._tz, self._index
        carry, self._carry = self._carry, None
        try:
            while images < limit:
                if carry is not None:
                    at, header, data = carry
                    carry = None
                elif isinstance(items, _Growth):
                    whole = memoryview(items.body)
                    arrived = whole[items.start : items.checked] if items.start >= 0 else whole[:0]
                    try:
                        if len(arrived):
                            data, count, items.pos, stop, over = wire.take(
                                arrived, items.pos, limit - images, CHUNK_BYTES - size, tz
                            )
                        else:
                            data, count, stop, over = b"", 0, wire.LOST, 0
                        if count:
                            pieces.append(data)
                            size += len(data)
                            images += count
                            index += count
                        if stop == wire.END:
                            self._drop_body()
                            break
                        if stop == wire.FULL:
                            if over and not images:
                                raise errors.image_too_large(index, over, CHUNK_BYTES)
                            break
                        if stop == wire.LOST:
                            if items.pos < len(arrived):  # cannot happen: the arrived was checked
                                raise errors.bad_response("the body is not valid JSON (a list item)")
                            # The checked arrived ends here: the rest has not arrived (or been checked).
                            if items.failure is not None:
                                self._fail(items.failure)
                                if not images:
                                    self._raise_failure()
                                break
                            self._pending = (pieces, size, images)
                            raise _NeedMore
                        # wire.REFERENCE: this image takes the reference translation.
                        start, end = wire.next_item(arrived, items.pos)
                        one = arrived[start:end]
                        try:
                            at = index
                            index += 1
                            data = wire.reference_bytes(one, tz, f"inventories[{at}]")
                        finally:
                            one.release()
                        items.pos = end
                        header = _SHORT_HEADERS[len(data)] if len(data) < 0x80 else _header(len(data))
                    finally:
                        arrived.release()
                        whole.release()
                elif isinstance(items, _Cursor):
                    # The compiled path: as many images as fit, framed, in one step.
                    data, count, items.pos, stop, over = wire.take(
                        items.text, items.pos, limit - images, CHUNK_BYTES - size, tz
                    )
                    if count:
                        pieces.append(data)
                        size += len(data)
                        images += count
                        index += count
                    if stop == wire.END:
                        self._drop_body()
                        break
                    if stop == wire.FULL:
                        if over and not images:
                            raise errors.image_too_large(index, over, CHUNK_BYTES)
                        break
                    text = items.next_text() if stop == wire.REFERENCE else None
                    if text is None:  # the compiled scan lost the text: the json module's goes on
                        items = self._items = _list_items(items.text, items.pos)
                        continue
                    at = index
                    index += 1
                    data = wire.reference_bytes(text, tz, f"inventories[{at}]")
                    header = _SHORT_HEADERS[len(data)] if len(data) < 0x80 else _header(len(data))
                else:
                    item = _END if items is None else next(items, _END)
                    if item is _END:
                        self._drop_body()
                        break
                    at = index
                    index += 1
                    data = self._translate_item(item, tz, f"inventories[{at}]").SerializeToString()
                    header = _SHORT_HEADERS[len(data)] if len(data) < 0x80 else _header(len(data))
                length = len(header) + len(data)
                if size + length > CHUNK_BYTES:
                    if not images:
                        raise errors.image_too_large(at, length, CHUNK_BYTES)
                    self._carry = (at, header, data)
                    break
                pieces.append(header)
                pieces.append(data)
                size += length
                images += 1
        except translate.TranslationError as exc:
            self._fail((exc.field, exc.reason))
            if not images:
                raise
        except errors.GatewayError as exc:
            self._fail(exc)
            if not images:
                raise
        finally:
            self._index = index
        if not images and self._built:
            return False
        chunk = Chunk(b"".join(pieces), images)
        self._built.append(chunk)
        self._sent += images
        if self._account is not None:
            self._account.add(len(chunk.data))
        return True

    def _fail(self, failure: tuple[str, str] | errors.GatewayError) -> None:
        self._failure = failure
        self._carry = None
        self._drop_body()


class Reader:
    """One call's way through an :class:`ImageStream`: iterate it, then :meth:`close` it."""

    def __init__(
        self,
        stream: ImageStream,
        token: int,
        deadline: Deadline | None = None,
        catch_up: tuple[Reader, int] | None = None,
    ) -> None:
        self._stream: ImageStream | None = stream
        self._token = token
        self._deadline = deadline
        # The messages let go before this reader joined: a reader of their rebuilding, and how many.
        self._catch_up = catch_up

    def _next(self, stream: ImageStream) -> Chunk:
        catch_up = self._catch_up
        if catch_up is None:
            return stream._read(self._token)
        reader, left = catch_up
        chunk = next(reader)  # within what was checked: never waits
        if left > 1:
            self._catch_up = (reader, left - 1)
        else:
            self._catch_up = None
            reader.close()
        return chunk

    def __iter__(self) -> Reader:
        return self

    def __next__(self) -> Chunk:
        """The next message of a stream whose body is whole."""
        if self._stream is None:
            raise StopIteration
        try:
            return self._next(self._stream)
        except _NeedMore:
            raise errors.internal("a stream still arriving read without waiting") from None

    def __aiter__(self) -> Reader:
        return self

    async def __anext__(self) -> Chunk:
        """The next message, waiting for the body to arrive as far as it needs."""
        while True:
            stream = self._stream
            if stream is None:
                raise StopAsyncIteration
            try:
                return self._next(stream)
            except StopIteration:
                raise StopAsyncIteration from None
            except _NeedMore:
                await self._wait(stream)

    async def _wait(self, stream: ImageStream) -> None:
        """Until more of the body came, within this reader's deadline (the read may go on longer
        for another caller holding the stream)."""
        deadline = self._deadline
        if deadline is None:
            await stream._arrival()
            return
        budget = deadline.remaining()
        try:
            async with asyncio.timeout(budget):
                await stream._arrival()
        except TimeoutError:
            raise errors.deadline_exceeded(budget, caller_deadline=deadline.from_caller) from None

    def close(self) -> None:
        if self._catch_up is not None:
            self._catch_up[0].close()
            self._catch_up = None
        if self._stream is not None:
            self._stream._leave(self._token)
            self._stream = None
