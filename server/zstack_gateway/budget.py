"""The process's budget of bytes held for callers: ZStack's answers and the messages built from them.

Every answer is charged as its bytes arrive (see ``upstream.ZStackClient._read_body``), never on the
size it announces; a call whose next piece would pass the budget fails at once with
RESOURCE_EXHAUSTED (reason ``GATEWAY_MEMORY_BUDGET``, with RetryInfo) and reads no further. The
stream messages built from an answer are charged too, without failing (their answer already fit),
so that while they are held new answers are refused sooner. What an answer holds is released as its
stream drops it and, whatever way its calls end, when its :class:`Account` is closed or collected.
"""

from __future__ import annotations

import threading
import weakref

from zstack_gateway import errors


class MemoryBudget:
    """At most ``limit`` bytes held at once, over every account it opened. Thread-safe: an account
    may be released by the garbage collector on any thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Bytes held now (the ``zstack_gateway_held_bytes`` gauge)."""
        return self._held

    def account(self) -> Account:
        """A new account, holding nothing yet, for one ZStack answer."""
        return Account(self)

    def _take(self, size: int, *, force: bool) -> bool:
        with self._lock:
            if not force and self._held + size > self.limit:
                return False
            self._held += size
            return True

    def _give(self, size: int) -> None:
        with self._lock:
            self._held -= size


def _release(budget: MemoryBudget, cell: list[int]) -> None:
    held, cell[0] = cell[0], 0
    budget._give(held)


class Account:
    """The bytes one ZStack answer holds against a :class:`MemoryBudget`.

    :meth:`close` releases whatever is still held, once; it also runs when the account is garbage
    collected, so a call that ends in any way (an error, a cancelled caller, a stream nobody
    finished) cannot keep its bytes charged.
    """

    __slots__ = ("__weakref__", "_budget", "_cell", "_finalizer")

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        # The bytes held, in a cell shared with the finalizer (which must not refer to the account).
        self._cell = [0]
        self._finalizer = weakref.finalize(self, _release, budget, self._cell)

    @property
    def held(self) -> int:
        return self._cell[0]

    def charge(self, size: int) -> None:
        """Hold ``size`` more bytes of an answer being read; raise GATEWAY_MEMORY_BUDGET if that would
        pass the budget (nothing is charged then)."""
        if not self._finalizer.alive:
            raise RuntimeError("charge on a closed Account")
        if not self._budget._take(size, force=False):
            raise errors.over_budget(self._budget.limit, self._budget.held)
        self._cell[0] += size

    def add(self, size: int) -> None:
        """Hold ``size`` more bytes built from an answer already charged; never refused."""
        if self._finalizer.alive:
            self._budget._take(size, force=True)
            self._cell[0] += size

    def release(self, size: int) -> None:
        """Give back ``size`` bytes (at most what is held)."""
        size = min(size, self._cell[0])
        self._cell[0] -= size
        self._budget._give(size)

    def close(self) -> None:
        """Give back everything still held; later calls do nothing."""
        self._finalizer()
