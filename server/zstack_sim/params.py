"""Request-parameter rules of ZStack's REST layer (``RestServer.handleApi``), and Java string helpers.

Query parameters (GET/DELETE) follow the servlet parameter map (contract §2.2):

* a repeated key makes a list (``systemTags=a&systemTags=b`` -> ``["a", "b"]``);
* ``name.N`` keys with an integer ``N`` are gathered, sorted by ``N`` and replace any plain
  ``name=`` values (``normalizeCollectionParameters``); only the first value of each ``name.N`` counts;
* commas are not split (``systemTags=a,b`` -> ``["a,b"]``);
* unknown keys are ignored;
* ``name.x`` with a non-numeric suffix is a map parameter; for a known field without ``@MapField``
  (all of ours) the server's assertion fails: 500 plain text [INF, wording from the assertion's
  format string];
* a key ending in a dot (``systemTags.``) makes ``pairs[1]`` throw ArrayIndexOutOfBounds: 500 with
  the Java 8 message, the bare index (``1``) [INF];
* a single-valued field given twice: 400 ``Invalid query parameter[...], only one value is allowed...``.
"""

from __future__ import annotations

import re
from typing import Literal

from zstack_sim.replies import Reply, text_reply

__all__ = ["FieldKind", "RestError", "java_split", "java_trim", "parse_java_long", "parse_query_params"]

FieldKind = Literal["str", "list"]

_JAVA_INT = re.compile(r"[+-]?[0-9]+")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


class RestError(Exception):
    """A REST-layer failure: carries the plain-text reply the servlet would write."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.body.decode("utf-8", "replace"))
        self.reply = reply


def rest_error(status: int, text: str) -> RestError:
    return RestError(text_reply(status, text))


def java_trim(text: str) -> str:
    """``String.trim()``: strips every char <= U+0020 from both ends."""
    start, end = 0, len(text)
    while start < end and text[start] <= " ":
        start += 1
    while end > start and text[end - 1] <= " ":
        end -= 1
    return text[start:end]


def java_split(text: str, sep: str) -> list[str]:
    """``String.split`` on a literal separator: trailing empty strings are removed, and an input
    without the separator comes back whole (so ``""`` gives ``[""]``)."""
    if sep not in text:
        return [text]
    parts = text.split(sep)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _java_int(text: str, lo: int, hi: int) -> int | None:
    if not _JAVA_INT.fullmatch(text):
        return None
    value = int(text)
    return value if lo <= value <= hi else None


def parse_java_long(text: str) -> int | None:
    """``Long.parseLong``: ``None`` where Java throws NumberFormatException."""
    return _java_int(text, _LONG_MIN, _LONG_MAX)


def _index_error(index: int) -> RestError:
    # Java 8's ArrayIndexOutOfBoundsException message is the bare index.
    return rest_error(500, str(index))


def parse_query_params(
    pairs: list[tuple[str, str]], fields: dict[str, FieldKind], api_class: str
) -> dict[str, str | list[str]]:
    """Apply the REST layer's query-parameter rules for an API with ``fields``; raises RestError."""
    params: dict[str, list[str]] = {}
    for key, value in pairs:
        params.setdefault(key, []).append(value)

    # normalizeCollectionParameters: gather name.N keys into lists sorted by N.
    indexed: dict[str, list[tuple[int, str]]] = {}
    for key in [k for k in params if "." in k]:
        parts = java_split(key, ".")
        if len(parts) < 2:
            raise _index_error(len(parts))
        index = _java_int(parts[1], _INT_MIN, _INT_MAX)
        if index is not None:
            indexed.setdefault(parts[0], []).append((index, params.pop(key)[0]))
    for name, items in indexed.items():
        items.sort(key=lambda item: item[0])
        params[name] = [value for _, value in items]

    out: dict[str, str | list[str]] = {}
    for key, values in params.items():
        if "." in key:
            fname = java_split(key, ".")[0]
            if fname in fields:
                raise rest_error(500, f"class {api_class}::{fname} must be annotated by @MapField")
            continue
        kind = fields.get(key)
        if kind is None:
            continue  # unknown query parameter: ignored (the server logs a warning)
        if kind == "list":
            out[key] = list(values)
        elif len(values) > 1:
            raise rest_error(
                400,
                f"Invalid query parameter[{key}], only one value is allowed for the parameter but"
                " multiple values found",
            )
        else:
            out[key] = values[0]
    return out
