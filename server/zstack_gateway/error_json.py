"""ZStack's ``ErrorCode`` JSON -> ``zstack.v1.ErrorCode``, tolerantly and within fixed bounds.

:func:`error_code_from_json` runs when something already went wrong, so it never raises: it skips
wrong-typed fields, bounds its recursion, and builds at most a fixed amount whatever the body holds
(a hostile error must cost little). What it cuts is said in ``details``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Final

from zstack.v1 import error_pb2

from zstack_gateway.bounded_json import CUT_MARK, CutDict, CutList

__all__ = ["CUT_MARK", "error_code_from_json", "type_name", "utf8_ok"]

log = logging.getLogger("zstack_gateway.translate")


def type_name(value: object) -> str:
    """The JSON type name of a parsed value, for messages."""
    return "null" if value is None else type(value).__name__


def utf8_ok(text: str) -> bool:
    """True when ``text`` encodes as UTF-8 (no lone surrogate), as protobuf requires."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Bounds that keep a hostile error body from exhausting the stack, and keep the message within the
# nesting depth (100) that protobuf parsers accept: causes nest up to 32 deep, and the JSON inside
# `opaque` up to 16 deep (each JSON level costs up to three message levels in a Struct).
_MAX_CAUSE_DEPTH: Final = 32
_MAX_OPAQUE_DEPTH: Final = 16
# Bounds on what one error builds, whatever the body holds, so that a hostile error costs little:
# ErrorCodes in all (the error, its causes and theirs), causes kept of one `causes` list, characters
# kept of each string field, and the size of all `opaque` objects together (8 per value plus the
# characters of its strings and keys; one that does not fit in what is left is dropped whole).
_MAX_ERROR_NODES: Final = 128
_MAX_CAUSES: Final = 16
_MAX_TEXT_CHARS: Final = 64 * 1024
_MAX_OPAQUE_COST: Final = 16 * 1024

_ERROR_STRINGS: Final = (
    ("code", "code"),
    ("description", "description"),
    ("details", "details"),
    ("elaboration", "elaboration"),
    ("location", "location"),
    ("cost", "cost"),
    ("globalErrorCode", "global_error_code"),
)


def _clean_text(text: str) -> str:
    """``text`` with lone surrogates (which protobuf refuses) replaced by U+FFFD."""
    if text.isascii() or utf8_ok(text):
        return text
    # Through UTF-16, a lone surrogate becomes one U+FFFD and a split pair becomes its character.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _bounded_text(text: str) -> str:
    if len(text) > _MAX_TEXT_CHARS:
        text = text[: _MAX_TEXT_CHARS - len(CUT_MARK)] + CUT_MARK
    return _clean_text(text)


class _OpaqueTooLarge(Exception):
    pass


class _Budget:
    """What is left to build of one error: ErrorCodes, and the cost of ``opaque`` objects."""

    __slots__ = ("nodes", "opaque")

    def __init__(self) -> None:
        self.nodes = _MAX_ERROR_NODES
        self.opaque = _MAX_OPAQUE_COST

    def spend_opaque(self, cost: int) -> None:
        self.opaque -= cost
        if self.opaque < 0:
            raise _OpaqueTooLarge


def _plain_json(value: object, depth: int, budget: _Budget) -> object:
    """``value`` as something Struct accepts: numbers as finite floats, strings as valid Unicode.

    Values Struct cannot hold (non-finite or huge numbers, non-JSON types, nesting deeper than the
    limit) become null; object entries with non-string keys are dropped. Raises _OpaqueTooLarge when
    the value costs more than the budget left, or when the JSON reader kept only part of it.
    """
    budget.spend_opaque(8)
    if isinstance(value, CutList | CutDict):
        raise _OpaqueTooLarge
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        budget.spend_opaque(len(value))
        return _clean_text(value)
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    if depth >= _MAX_OPAQUE_DEPTH:
        return None
    if isinstance(value, list):
        return [_plain_json(item, depth + 1, budget) for item in value]
    if isinstance(value, dict):
        return _plain_object(value, depth, budget)
    return None


def _plain_object(obj: dict[Any, Any], depth: int, budget: _Budget) -> dict[str, Any]:
    if isinstance(obj, CutDict):
        raise _OpaqueTooLarge
    plain: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(key, str):
            budget.spend_opaque(len(key))
            plain[_clean_text(key)] = _plain_json(value, depth + 1, budget)
    return plain


def _append_note(error: error_pb2.ErrorCode, note: str) -> None:
    error.details = error.details + note


def _fill_error(
    error: error_pb2.ErrorCode, obj: dict[Any, Any], depth: int, path: str, budget: _Budget
) -> None:
    for key, name in _ERROR_STRINGS:
        value = obj.get(key)
        if isinstance(value, str):
            setattr(error, name, _bounded_text(value))
        elif value is not None:
            log.debug("ZStack error field %s.%s skipped: got %s", path, key, type_name(value))
    opaque = obj.get("opaque")
    if isinstance(opaque, dict):
        try:
            plain = _plain_object(opaque, 0, budget)
        except _OpaqueTooLarge:
            _append_note(error, " [opaque dropped by the gateway: too large]")
        else:
            error.opaque.update(plain)
    if depth >= _MAX_CAUSE_DEPTH:
        return
    cause = obj.get("cause")
    if isinstance(cause, dict):
        if budget.nodes > 0:
            budget.nodes -= 1
            error.cause.SetInParent()
            _fill_error(error.cause, cause, depth + 1, f"{path}.cause", budget)
        else:
            _append_note(error, " [deeper causes cut by the gateway]")
    causes = obj.get("causes")
    if isinstance(causes, list):
        kept = 0
        for index, item in enumerate(causes[:_MAX_CAUSES]):
            if not isinstance(item, dict) or budget.nodes <= 0:
                continue
            budget.nodes -= 1
            kept += 1
            _fill_error(error.causes.add(), item, depth + 1, f"{path}.causes[{index}]", budget)
        dropped = sum(1 for item in causes[:_MAX_CAUSES] if isinstance(item, dict)) - kept
        dropped += len(causes) - min(len(causes), _MAX_CAUSES)
        if isinstance(causes, CutList):  # the JSON reader kept only the first causes
            _append_note(error, f" [{dropped} or more causes cut by the gateway]")
        elif dropped:
            _append_note(error, f" [{dropped} more causes cut by the gateway]")


def error_code_from_json(obj: object, path: str = "error") -> error_pb2.ErrorCode:
    """Translate a ZStack ``ErrorCode`` object, tolerantly: never raises.

    Wrong-typed fields are skipped, a non-object ``cause`` is ignored, causes nested deeper than 32
    levels are dropped, and anything that is not an object gives an empty ErrorCode. Whatever the
    object holds, the translation builds at most 128 ErrorCodes (16 of one ``causes`` list), keeps
    65,536 characters of each string and about 16 KiB of ``opaque`` objects in all; its cost does not
    grow with the rest. What it cuts is said in ``details``.
    """
    error = error_pb2.ErrorCode()
    if isinstance(obj, dict):
        budget = _Budget()
        budget.nodes -= 1
        _fill_error(error, obj, 0, path, budget)
    return error
