"""A lock handed to its waiters in the order they asked: one model, many conversations, each its turn.

The shared model runs one step (a prefill, one decoded token) at a time under
:attr:`streamrag.session.Resources.lock`. With :class:`threading.Lock`, a
thread that releases the lock and asks again a few microseconds later (the
next token of the same reply) usually gets it back before a waiting thread is
even scheduled, so one reply can run to its end while others starve: with
the server's concurrent requests, time to first token would depend on luck.
Tickets make the hand-over first come, first served, so concurrent replies
advance one token each in turn.
"""

from __future__ import annotations

import threading


class FairLock:
    """A non-reentrant lock granted in arrival order (a ticket lock); a drop-in for ``threading.Lock``."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0
        self._held = False
        self._abandoned: set[int] = set()  # tickets whose waiters timed out

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        with self._cond:
            if not self._held and self._serving == self._next_ticket:
                self._next_ticket += 1
                self._held = True
                return True
            if not blocking:
                return False
            ticket = self._next_ticket
            self._next_ticket += 1
            granted = self._cond.wait_for(
                lambda: not self._held and self._serving == ticket, None if timeout < 0 else timeout
            )
            if not granted:
                # Give the ticket up: later tickets move up one place, so the line keeps its order.
                self._abandon(ticket)
                return False
            self._held = True
            return True

    def _abandon(self, ticket: int) -> None:
        """A waiter that timed out leaves the line (called with the condition held)."""
        self._abandoned.add(ticket)
        self._skip_abandoned()

    def _skip_abandoned(self) -> None:
        while not self._held and self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release of an unlocked FairLock")
            self._held = False
            self._serving += 1
            self._skip_abandoned()

    def locked(self) -> bool:
        return self._held

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
