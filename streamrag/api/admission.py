"""Who may generate now: a bounded, first-come-first-served line in front of the one model.

Up to ``max_active`` requests generate at once (they take turns on the model
token by token, see :class:`~streamrag.fairlock.FairLock`); up to
``max_queue`` more wait in arrival order; beyond that a request is refused at
once with 429 and a ``Retry-After`` estimated from how long recent turns took,
instead of piling up until clients time out. A waiter whose client goes away
leaves the line (its task is cancelled), so it never takes a slot nobody reads.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time

from streamrag.api.errors import APIError


class Admission:
    """The line in front of the model (one per server; used from the event loop only)."""

    def __init__(self, max_active: int, max_queue: int):
        self.max_active = max_active
        self.max_queue = max_queue
        self.active = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._durations: collections.deque[float] = collections.deque(maxlen=32)
        self.refused = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: recent turns' mean duration times the rounds ahead (>= 1)."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 5.0
        rounds = (self.waiting + self.active) / self.max_active
        return max(1, math.ceil(mean * max(rounds, 1.0)))

    async def acquire(self) -> Slot:
        """A slot to generate in: at once, after waiting in line, or a 429 :class:`APIError` when the line is full."""
        if self.active >= self.max_active or self._waiters:
            if len(self._waiters) >= self.max_queue:
                self.refused += 1
                raise APIError(
                    429,
                    f"the server is busy: {self.active} requests generating and {self.waiting} waiting "
                    f"(server.max_active={self.max_active}, server.max_queue={self.max_queue}); retry later",
                    type="rate_limit_error",
                    code="server_busy",
                    headers={"Retry-After": str(self.retry_after())},
                )
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter  # set by _free, which passed a slot on to this request
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._free()  # granted just as the client left: pass the slot on
                raise
        else:
            self.active += 1
        return Slot(self)

    def _free(self) -> None:
        """A slot is free: hand it to the first waiter still waiting, else count it free."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: `active` stays the same
                return
        self.active -= 1


class Slot:
    """One request's permission to generate; :meth:`release` is idempotent (called on every way out)."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._started = time.monotonic()
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._admission._durations.append(time.monotonic() - self._started)
        self._admission._free()
