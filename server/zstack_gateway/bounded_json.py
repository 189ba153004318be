"""A JSON reader for bodies that may be hostile (ZStack's error answers), whose cost is bounded
whatever the body holds.

:func:`loads` reads a JSON text as ``json.loads`` would, except that it keeps at most ``max_items``
elements of an array or members of an object (a cut one comes back as :class:`CutList` or
:class:`CutDict`), at most ``max_chars`` characters of a string (a cut one ends with
:data:`CUT_MARK`), and values at most ``max_depth`` levels deep (a deeper one is None). What it
does not keep it skips without building anything, with bytes methods and regular expressions that
run in C (about 6 ns a byte): a 10 MB string, a list of 100,000 objects or a chain nested 100,000
deep. Skipped parts are not checked for JSON syntax.

All its work is charged to ``budget`` (units of about 0.7 µs: the default is under 0.1 s). A deep
container stops reading its members sooner than the ones around it, so that those still read what
follows it; when skipping runs out of budget, the rest of the body is taken as the rest of the
containers still open, which come back cut. Either way the value holds what came first.

It is lenient where a Java server or a proxy may not be strict: bytes that are not UTF-8 read as
U+FFFD, lone surrogate escapes stay as they are (Gson writes them), raw control characters in strings,
NaN and Infinity, and numbers of any size (read as floats when they are not small integers).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

__all__ = ["CUT_MARK", "CutDict", "CutList", "loads", "skip_rest"]

#: Appended to a string the reader (or the gateway) cut.
CUT_MARK: Final = " [cut by the gateway]"


class CutList(list[Any]):
    """An array read only in part: its first elements."""


class CutDict(dict[str, Any]):
    """An object read only in part: its first members."""


# --- regular expressions, on bytes ----------------------------------------------------------------

_WS: Final = re.compile(rb"[ \t\n\r]*+")
_STRING: Final = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_NUMBER: Final = re.compile(rb"-?(?:0|[1-9][0-9]*+)(\.[0-9]++)?([eE][-+]?[0-9]++)?")
# A \u escape that a cut left with fewer than four hex digits.
_TRAILING_U: Final = re.compile(r"u[0-9a-fA-F]{0,3}\Z")


def _content_pattern(levels: int) -> re.Pattern[bytes]:
    """Anything between brackets whose containers nest at most ``levels`` deep: strings, and any
    bytes other than brackets and quotes. A match stops before a closing bracket it did not open,
    an opening bracket too deep, or a quote that starts no complete string."""
    plain = rb'[^\[\]{}"]++'
    string = _STRING.pattern
    content = rb"(?:" + plain + rb"|" + string + rb")*+"
    for _ in range(levels):
        content = rb"(?:" + plain + rb"|" + string + rb"|[\[{]" + content + rb"[\]}])*+"
    return re.compile(content, re.DOTALL)


_CONTENT: Final = _content_pattern(6)
_OPENERS: Final = frozenset(b"[{")
_CLOSERS: Final = frozenset(b"]}")

_LITERALS: Final = (
    (b"true", True),
    (b"false", False),
    (b"null", None),
    (b"NaN", float("nan")),
    (b"Infinity", float("inf")),
    (b"-Infinity", float("-inf")),
)


def loads(
    body: bytes | bytearray,
    *,
    max_depth: int = 100,
    max_items: int = 64,
    max_chars: int = 65_536,
    budget: int = 120_000,
) -> object:
    """The JSON value of ``body``, bounded as the module says. Raises ValueError when what it reads
    is not JSON (skipped parts excepted)."""
    reader = _Reader(bytes(body), max_depth, max_items, max_chars, budget)
    value = reader.value(0)
    if not reader.truncated:
        end = _WS.match(reader.data, reader.pos)
        if end is None or end.end() != len(reader.data):
            raise ValueError(f"extra data after the JSON value at byte {reader.pos}")
    return value


class _Reader:
    def __init__(self, data: bytes, max_depth: int, max_items: int, max_chars: int, budget: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth
        self.max_items = max_items
        self.max_chars = max_chars
        self.budget = budget
        # The deeper a container, the sooner it stops reading: what is left of the budget then
        # still reads the members that follow it in the containers around it.
        self.reserve = max(1, budget // (4 * max(1, max_depth)))
        self.truncated = False  # the budget ran out while skipping: the body was read in part

    # --- values -------------------------------------------------------------------------------

    def _skip_ws(self) -> int:
        match = _WS.match(self.data, self.pos)
        self.pos = match.end() if match is not None else self.pos
        return self.pos

    def _fail(self, what: str) -> ValueError:
        return ValueError(f"not JSON: {what} at byte {self.pos}")

    def value(self, depth: int) -> object:
        data = self.data
        pos = self._skip_ws()
        if pos >= len(data):
            raise self._fail("a value expected")
        self.budget -= _VALUE_UNITS
        char = data[pos]
        if char == 0x22:  # "
            return self.string()
        if char in _OPENERS:
            if depth >= self.max_depth:
                self.pos = self._skip_rest(pos + 1)
                return None
            return self.array(depth) if char == 0x5B else self.object(depth)
        number = _NUMBER.match(data, pos)
        if number is not None:
            self.pos = number.end()
            text = number.group()
            if number.group(1) is None and number.group(2) is None and len(text) <= 18:
                return int(text)
            return float(text)
        for word, literal in _LITERALS:
            if data.startswith(word, pos):
                self.pos = pos + len(word)
                return literal
        raise self._fail("a value expected")

    def string(self) -> str:
        data = self.data
        start = self.pos
        end = _string_end(data, start + 1)
        if end < 0:
            raise self._fail("an unterminated string")
        self.budget -= (end - start) // (_BYTES_PER_UNIT * 64)  # found at the speed of memchr
        self.pos = end
        inner_end = end - 1
        limit = self.max_chars
        cut = False
        # A UTF-8 character or an escape takes at least one byte: more than 4 * limit bytes (plus a
        # little for a cut escape) can never be needed.
        if inner_end - (start + 1) > 4 * limit + 8:
            inner_end = start + 1 + 4 * limit + 8
            cut = True
        raw = data[start + 1 : inner_end].decode("utf-8", "replace")
        if "\\" in raw:
            if cut:
                raw = _without_broken_escape(raw)
            try:
                text: str = json.loads('"' + raw + '"', strict=False)
            except ValueError:
                raise self._fail("a bad escape in a string") from None
        else:
            text = raw
        if cut or len(text) > limit:
            text = text[: limit - len(CUT_MARK)] + CUT_MARK
        return text

    def _expect(self, char: int, what: str) -> None:
        pos = self._skip_ws()
        if pos >= len(self.data) or self.data[pos] != char:
            raise self._fail(what)
        self.pos = pos + 1

    def _stop_reading(self, depth: int, count: int) -> bool:
        return count >= self.max_items or self.budget <= self.reserve * (depth + 1)

    def array(self, depth: int) -> list[Any]:
        data = self.data
        self.pos += 1
        items: list[Any] = []
        if self._next_is(0x5D):  # ]
            self.pos += 1
            return items
        while True:
            if self._stop_reading(depth, len(items)):
                self.pos = self._skip_rest(self.pos)
                return CutList(items)
            items.append(self.value(depth + 1))
            if self.truncated:
                return CutList(items)
            pos = self._skip_ws()
            if pos < len(data) and data[pos] == 0x2C:  # ,
                self.pos = pos + 1
            elif pos < len(data) and data[pos] == 0x5D:
                self.pos = pos + 1
                return items
            else:
                raise self._fail("',' or ']' expected")

    def object(self, depth: int) -> dict[str, Any]:
        data = self.data
        self.pos += 1
        members: dict[str, Any] = {}
        if self._next_is(0x7D):  # }
            self.pos += 1
            return members
        count = 0
        while True:
            if self._stop_reading(depth, count):
                self.pos = self._skip_rest(self.pos)
                return CutDict(members)
            pos = self._skip_ws()
            if pos >= len(data) or data[pos] != 0x22:
                raise self._fail("a member name expected")
            self.budget -= _VALUE_UNITS
            key = self.string()
            self._expect(0x3A, "':' expected")  # :
            members[key] = self.value(depth + 1)
            count += 1
            if self.truncated:
                return CutDict(members)
            pos = self._skip_ws()
            if pos < len(data) and data[pos] == 0x2C:
                self.pos = pos + 1
            elif pos < len(data) and data[pos] == 0x7D:
                self.pos = pos + 1
                return members
            else:
                raise self._fail("',' or '}' expected")

    def _next_is(self, char: int) -> bool:
        pos = self._skip_ws()
        return pos < len(self.data) and self.data[pos] == char

    # --- skipping -------------------------------------------------------------------------------

    def _skip_rest(self, pos: int) -> int:
        """The index after the closing bracket of the container that ``pos`` is inside. When the
        budget runs out first, the rest of the body is taken as the rest of that container."""
        try:
            end, self.budget = skip_rest(self.data, pos, self.budget)
        except _OutOfBudget:
            self.budget = 0
            self.truncated = True
            return len(self.data)
        return end


# --- skipping at the speed of C ---------------------------------------------------------------------
#
# A slice of the body is reduced to its brackets outside strings with a few passes of bytes methods:
# escaped backslashes and quotes dropped, everything but brackets and quotes deleted, then strings
# (now "" or holding brackets only) removed. Removing adjacent pairs "{}" and "[]" a few times then
# leaves the slice's unmatched closing brackets followed by its unmatched opening ones: the slice
# closes the value when it has as many unmatched closing brackets as the depth. A slice nested too
# deep to reduce in a few passes is judged by its counts of brackets, or else by walking what is left
# of its brackets when they are few. The slice in which the value closes is shrunk, then stepped
# through with _CONTENT.

_KEEP: Final = b'[]{}"'
_DELETE: Final = bytes(byte for byte in range(256) if byte not in _KEEP)
_PLAIN_STRING: Final = re.compile(rb'"[^"]*+"')
_STRING_REST: Final = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_MAX_SLICE: Final = 65_536
_MIN_SLICE: Final = 256
_REDUCE_PASSES: Final = 8
# Brackets of a slice counted one by one, at most, when the passes leave it unjudged.
_MAX_SCANNED: Final = 4096
# The budget is in units of about 0.7 µs of work: reading one value costs _VALUE_UNITS, going through
# _BYTES_PER_UNIT bytes of a slice or walking _BRACKETS_PER_UNIT brackets one by one costs one.
_VALUE_UNITS: Final = 2
_BYTES_PER_UNIT: Final = 128
_BRACKETS_PER_UNIT: Final = 8


class _OutOfBudget(Exception):
    """Skipping ran out of budget."""


def skip_rest(data: bytes, pos: int, budget: int) -> tuple[int, int]:
    """The index after the closing bracket of the array or object that ``pos`` is inside (outside
    any string, depth 1), and the budget left. Work is charged to the budget as it is done (see
    :func:`loads`). Raises ValueError when the data ends first, _OutOfBudget when the budget does."""
    size = len(data)
    depth = 1
    span = _MAX_SLICE
    fine_until = pos
    while True:
        if span >= _MIN_SLICE:
            stop, brackets = _slice(data, pos, span)
            change, cost = _net_change(brackets, depth)
            budget -= 1 + (stop - pos) // _BYTES_PER_UNIT + cost
            if budget <= 0:
                raise _OutOfBudget
            if change is not None:
                depth += change
                pos = stop
                if pos >= size:
                    raise ValueError("not JSON: the body ends inside a value")
                span = min(_MAX_SLICE, span * 2)
                continue
            span //= 8
            if span >= _MIN_SLICE:
                continue
            fine_until = stop
        # The value may close before fine_until: step through, one bracket at a time.
        while pos < fine_until:
            match = _CONTENT.match(data, pos)
            end = match.end() if match is not None else pos
            budget -= 1 + (end - pos) // _BYTES_PER_UNIT
            if budget <= 0:
                raise _OutOfBudget
            if end >= size:
                raise ValueError("not JSON: the body ends inside a value")
            char = data[end]
            pos = end + 1
            if char in _CLOSERS:
                depth -= 1
                if depth == 0:
                    return pos, budget
            elif char in _OPENERS:
                depth += 1
            else:
                raise ValueError(f"not JSON: an unterminated string at byte {end}")
        span = _MIN_SLICE * 8


def _string_end(data: bytes, pos: int) -> int:
    """The index after the quote that ends the string whose inside ``pos`` is in (not inside an
    escape), or -1 when the data ends first."""
    quote = data.find(b'"', pos)
    if quote < 0:
        return -1
    if data.find(b"\\", pos, quote) < 0:
        return quote + 1
    rest = _STRING_REST.match(data, pos)
    return rest.end() if rest is not None else -1


def _slice(data: bytes, pos: int, span: int) -> tuple[int, bytes]:
    """Where a slice of about ``span`` bytes from ``pos`` ends (never inside a string or an
    escape: it may be longer to finish one), and its brackets outside strings, in order."""
    size = len(data)
    stop = min(size, pos + span)
    piece = data[pos:stop]
    if (len(piece) - len(piece.rstrip(b"\\"))) % 2 and stop < size:
        stop += 1  # the slice ended between a backslash and the character it escapes
        piece = data[pos:stop]
    unescaped = piece.replace(b"\\\\", b"").replace(b'\\"', b"")
    if unescaped.count(b'"') % 2:  # the slice ends inside a string: take the rest of it
        stop = _string_end(data, stop)
        if stop < 0:
            raise ValueError(f"not JSON: an unterminated string after byte {pos}")
        unescaped = data[pos:stop].replace(b"\\\\", b"").replace(b'\\"', b"")
    # Removing adjacent quotes keeps every other character inside or outside a string as it was.
    brackets = unescaped.translate(None, _DELETE).replace(b'""', b"")
    if b'"' in brackets:
        brackets = _PLAIN_STRING.sub(b"", brackets)  # the strings that hold brackets
    return stop, brackets


def _net_change(brackets: bytes, depth: int) -> tuple[int | None, int]:
    """How much a slice with these ``brackets`` changes the depth, or None when it brings the
    depth to zero (or may: a long slice that neither a few passes nor its counts can judge); and
    the cost of judging it, in budget units."""
    reduced = brackets
    cost = 0
    for _ in range(_REDUCE_PASSES):
        shorter = reduced.replace(b"{}", b"").replace(b"[]", b"")
        cost += len(reduced) // _BYTES_PER_UNIT
        if len(shorter) == len(reduced):
            closers = len(reduced) - len(reduced.lstrip(b"]}"))
            openers = reduced[closers:]
            if len(openers.lstrip(b"[{")) == 0:  # fully reduced: closers, then openers
                return (len(openers) - closers if closers < depth else None), cost
            break
        if len(shorter) > len(reduced) * 3 // 4:  # nested too deep for passes to pay
            reduced = shorter
            break
        reduced = shorter
    closes = brackets.count(b"}") + brackets.count(b"]")
    if closes < depth:
        return len(brackets) - 2 * closes, cost
    if len(reduced) > _MAX_SCANNED:
        return None, cost
    cost += len(reduced) // _BRACKETS_PER_UNIT
    level = depth
    for char in reduced:
        level += 1 if char in _OPENERS else -1
        if level <= 0:
            return None, cost
    return level - depth, cost


def _without_broken_escape(raw: str) -> str:
    """``raw`` (the start of a string's inside) without an escape sequence its end cut short."""
    tail = _TRAILING_U.search(raw, max(0, len(raw) - 4))
    end = tail.start() if tail is not None else len(raw)
    run = 0
    while run < end and raw[end - run - 1] == "\\":
        run += 1
    return raw[: end - 1] if run % 2 else raw
