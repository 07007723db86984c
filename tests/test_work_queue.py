"""The server-wide work queue: first come first served, never more holders than slots, and a
waiter that is stopped (a browser that went away) leaves without blocking the others."""

from __future__ import annotations

import threading
import time

import pytest

from ui.work_queue import WorkQueue


def wait_until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_waiters_get_the_slot_in_the_order_they_came():
    queue, order, release = WorkQueue(1), [], threading.Event()

    def hold():
        with queue.slot():
            release.wait(5)

    def take(name: str):
        with queue.slot():
            order.append(name)

    holder = threading.Thread(target=hold)
    holder.start()
    wait_until(lambda: queue.busy() == 1)
    waiters = []
    for count, name in enumerate("abcde", start=1):
        waiters.append(threading.Thread(target=take, args=(name,)))
        waiters[-1].start()
        wait_until(lambda expected=count: queue.waiting() == expected)
    release.set()
    for thread in [holder, *waiters]:
        thread.join(5)
    assert order == list("abcde")


def test_never_more_holders_than_slots():
    queue, lock, state = WorkQueue(2), threading.Lock(), {"now": 0, "most": 0}

    def work():
        with queue.slot():
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0.02)
            with lock:
                state["now"] -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert state["most"] == 2 and queue.busy() == 0 and queue.waiting() == 0


class Stopped(Exception):
    """Stands in for Streamlit's StopException, raised in a stopped script's next UI call."""


def test_a_stopped_waiter_leaves_and_the_next_one_gets_the_slot():
    queue, release, got = WorkQueue(1), threading.Event(), threading.Event()
    positions: list[int] = []

    def hold():
        with queue.slot():
            release.wait(5)

    def stopped_waiter():
        def on_wait(ahead: int):
            positions.append(ahead)
            raise Stopped

        with pytest.raises(Stopped), queue.slot(on_wait=on_wait):
            pass

    def next_waiter():
        with queue.slot():
            got.set()

    holder = threading.Thread(target=hold)
    holder.start()
    wait_until(lambda: queue.busy() == 1)
    first = threading.Thread(target=stopped_waiter)
    first.start()
    first.join(5)
    assert positions == [0] and queue.waiting() == 0
    second = threading.Thread(target=next_waiter)
    second.start()
    release.set()
    assert got.wait(5)
    holder.join(5)
    second.join(5)
    assert queue.busy() == 0


def test_a_queue_needs_a_slot():
    with pytest.raises(ValueError):
        WorkQueue(0)


def test_a_waiter_hears_of_its_place_when_it_changes_not_every_poll(monkeypatch):
    import ui.work_queue as work_queue

    monkeypatch.setattr(work_queue, "WAIT_POLL_SECONDS", 0.02)
    monkeypatch.setattr(work_queue, "WAIT_HEARTBEAT_SECONDS", 0.5)
    queue, release_first, release_second = WorkQueue(1), threading.Event(), threading.Event()
    heard: list[int] = []

    def hold(release):
        with queue.slot():
            release.wait(5)

    first = threading.Thread(target=hold, args=(release_first,))
    first.start()
    wait_until(lambda: queue.busy() == 1)
    second = threading.Thread(target=hold, args=(release_second,))
    second.start()
    wait_until(lambda: queue.waiting() == 1)
    third = threading.Thread(target=lambda: queue.slot(on_wait=heard.append).__enter__())
    third.start()
    time.sleep(0.3)  # about 15 polls: the place (1 ahead) is told once
    assert heard == [1]
    release_first.set()
    wait_until(lambda: heard[-1] == 0)
    time.sleep(0.7)  # past a heartbeat: told again, though unchanged
    assert heard[:2] == [1, 0] and heard.count(0) >= 2 and len(heard) <= 4
    release_second.set()
    for thread in (first, second, third):
        thread.join(5)
