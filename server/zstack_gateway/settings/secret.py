"""A secret value that never shows itself: ``repr``, ``str``, format strings, ``dataclasses.asdict``
and JSON logging of a Config holding one all print ``Secret('***')``. Only :meth:`Secret.reveal`
gives the value, and only the code that sends it to ZStack (or compares it) calls it.
"""

from __future__ import annotations

import hmac


class Secret:
    """A password, an AccessKey secret, a caller token. Not a dataclass on purpose: ``asdict`` and
    ``vars`` must not be able to reach the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, len(self._value)))

    def __deepcopy__(self, memo: dict[int, object]) -> Secret:
        return self

    def __copy__(self) -> Secret:
        return self


#: The default of a secret setting: nothing given.
NO_SECRET = Secret()
