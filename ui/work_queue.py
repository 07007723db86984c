"""One queue for the heavy work (decoding and the model) of every session of the server."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

WAIT_POLL_SECONDS = 0.5
# A waiter hears of its place when it changes, and at least this often: each call is a message
# to its browser (and the check that the browser is still there), and twenty waiters told twice
# a second what had not changed kept the server busy while the films waited.
WAIT_HEARTBEAT_SECONDS = 5.0


class WorkQueue:
    """`slots` holders at a time, first come first served.

    A waiting caller's `on_wait(ahead)` runs outside the lock with the number of callers ahead
    of it: at once, whenever that number changes, and every WAIT_HEARTBEAT_SECONDS otherwise.
    Whatever it raises (Streamlit stops a script whose browser went away by raising inside its
    next UI call) leaves the queue cleanly.
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
        told: tuple[int, float] | None = None  # (place, when) the waiter was last told
        try:
            while True:
                with self._changed:
                    ahead = self._take_or_position(ticket)
                    if ahead is None:
                        break
                    self._changed.wait(WAIT_POLL_SECONDS)
                if on_wait is not None and (
                    told is None or told[0] != ahead or time.monotonic() - told[1] >= WAIT_HEARTBEAT_SECONDS
                ):
                    on_wait(ahead)
                    told = (ahead, time.monotonic())
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
