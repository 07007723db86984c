"""One queue for the heavy work (decoding and the model) of every session of the server."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

WAIT_POLL_SECONDS = 0.5


class WorkQueue:
    """`slots` holders at a time, first come first served.

    A waiting caller's `on_wait(ahead)` runs every WAIT_POLL_SECONDS outside the lock, with
    the number of callers ahead of it; whatever it raises (Streamlit stops a script whose
    browser went away by raising inside its next UI call) leaves the queue cleanly.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a work queue needs at least one slot")
        self.slots = slots
        self._busy = 0
        self._waiting: deque[object] = deque()
        self._changed = threading.Condition()

    def _take_or_position(self, ticket: object) -> int | None:
        """None when the ticket got a slot, else how many are ahead of it (lock held)."""
        if self._busy < self.slots and self._waiting[0] is ticket:
            self._waiting.popleft()
            self._busy += 1
            return None
        return self._waiting.index(ticket)

    @contextmanager
    def slot(self, on_wait: Callable[[int], object] | None = None) -> Iterator[None]:
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
        try:
            while True:
                with self._changed:
                    ahead = self._take_or_position(ticket)
                    if ahead is None:
                        break
                    self._changed.wait(WAIT_POLL_SECONDS)
                if on_wait is not None:
                    on_wait(ahead)
        except BaseException:
            with self._changed:
                self._waiting.remove(ticket)
                self._changed.notify_all()
            raise
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1
                self._changed.notify_all()

    def waiting(self) -> int:
        with self._changed:
            return len(self._waiting)

    def busy(self) -> int:
        with self._changed:
            return self._busy
