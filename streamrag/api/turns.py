"""One turn of a conversation run in its own thread, its pieces handed to the event loop as they come.

A :class:`~streamrag.session.Reply` is read by blocking calls (each takes the
model for one step), so it cannot be read on the event loop. Each request gets
a dedicated thread rather than a pooled one: a session serialises its turns
by the thread that owns the open reply, and a pooled thread reused by the
next request on the same session would look like that owner and cut the
reply short. When the client goes away the thread is told to stop; it closes
the reply after the step it is in, so the model is free again within one
token and the transcript keeps exactly the text that was produced.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable

from streamrag.session import Reply

logger = logging.getLogger(__name__)


class TurnWorker:
    """Runs ``start()`` (which returns a :class:`Reply`) and reads the reply, in a thread of its own."""

    def __init__(self, start: Callable[[], Reply], name: str = "api-turn"):
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()
        self.reply: Reply | None = None
        self.finished = asyncio.Event()
        self._thread = threading.Thread(target=self._work, args=(start,), name=name, daemon=True)
        self._thread.start()

    def _put(self, kind: str, value: object = None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is reading
            self._cancelled.set()

    def _work(self, start: Callable[[], Reply]) -> None:
        reply = None
        try:
            reply = start()
            self._put("reply", reply)
            for piece in reply:
                if self._cancelled.is_set():
                    break
                self._put("piece", piece)
        except BaseException as exc:  # handed to the request, which answers with it
            self._put("error", exc)
        finally:
            if reply is not None and not reply.done:
                reply.close()  # the client left: the text so far is recorded as "interrupted"
                logger.info("turn %s stopped: its client went away", reply.message_id)
            self._put("done")

    def cancel(self) -> None:
        """Stop after the current step (safe from the event loop; never blocks)."""
        self._cancelled.set()

    async def started(self) -> Reply:
        """The reply, once the session has synced and recalled; raises what the start raised."""
        kind, value = await self._events.get()
        if kind == "error":
            await self._drain()
            raise value
        if kind != "reply":  # pragma: no cover - the worker always sends reply or error first
            raise RuntimeError(f"unexpected turn event {kind}")
        self.reply = value
        return value

    async def pieces(self) -> AsyncIterator[str]:
        """The reply's pieces as they are generated."""
        while True:
            kind, value = await self._events.get()
            if kind == "piece":
                yield value
            elif kind == "error":
                await self._drain()
                raise value
            else:
                self.finished.set()
                return

    async def _drain(self) -> None:
        while (await self._events.get())[0] != "done":
            pass
        self.finished.set()

    async def wait_finished(self) -> None:
        """Until the thread has closed the reply (it has recorded the text and let go of the model)."""
        if not self.finished.is_set():
            await self._drain()
