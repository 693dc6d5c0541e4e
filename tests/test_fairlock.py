"""The model's lock hands itself over in arrival order, so concurrent replies take turns."""

from __future__ import annotations

import threading
import time

from streamrag.fairlock import FairLock


def _steps(lock, name: str, steps: int, order: list[str], started: threading.Barrier) -> None:
    started.wait()
    for _ in range(steps):
        with lock:
            order.append(name)
            time.sleep(0.001)  # a forward pass


def _longest_run(order: list[str]) -> int:
    longest = run = 1
    for before, after in zip(order, order[1:]):
        run = run + 1 if before == after else 1
        longest = max(longest, run)
    return longest


def test_two_threads_that_ask_again_at_once_alternate_step_by_step():
    lock, order = FairLock(), []
    started = threading.Barrier(2)
    threads = [threading.Thread(target=_steps, args=(lock, n, 40, order, started)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(order) == ["a"] * 40 + ["b"] * 40
    # Once both are waiting, no thread gets the lock twice in a row while the other waits
    # (a plain threading.Lock here typically lets one thread run dozens of steps in a row).
    assert _longest_run(order) <= 2, order


def test_waiters_are_served_in_arrival_order():
    lock, order = FairLock(), []
    lock.acquire()
    threads = []
    for i in range(5):
        thread = threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i), lock.release()))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 5
        while lock._next_ticket < i + 2 and time.monotonic() < deadline:  # it has taken its ticket
            time.sleep(0.001)
    lock.release()
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3, 4]


def test_a_waiter_that_times_out_leaves_the_line_without_blocking_the_next():
    lock = FairLock()
    lock.acquire()
    assert lock.acquire(timeout=0.05) is False
    assert lock.acquire(blocking=False) is False
    got = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=5)))
    waiter.start()
    time.sleep(0.05)
    lock.release()
    waiter.join()
    assert got == [True] and lock.locked()
    lock.release()
    assert not lock.locked() and lock.acquire(blocking=False)
