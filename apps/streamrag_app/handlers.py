"""What each control of the app does, as plain functions of (inputs, tab state, request).

Each handler that touches a session takes the ``gr.Request`` Gradio passes
in and acts as its user (``request.username``; ``None`` when the app has no
users): sessions are created for that user, the *Past sessions* list holds
only theirs, and opening, continuing, searching or deleting another user's
session is refused with a :class:`gradio.Error` that changes nothing and never
names the other session's title.

Generation runs in a worker thread that feeds a queue: the Gradio handler
only reads from it. If the handler is abandoned (the tab closed, the event
cancelled) the worker is told to :meth:`~streamrag.session.Assistant.stop`,
so the shared model's lock is always released and the transcript keeps
exactly the text that was streamed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator

import gradio as gr

from streamrag.archive import ArchiveUnavailable
from streamrag.config import ConfigError
from streamrag.engine import MessageError
from streamrag.session import Assistant, Reply, SessionAccessError
from streamrag_app.panel import panel_data, panel_html
from streamrag_app.sessions import SETTING_FIELDS, SessionRegistry, new_state

logger = logging.getLogger(__name__)
_DONE = object()
SEARCH_HEADERS = ["chunk id", "turn", "role", "score", "text"]
NOT_YOURS = "That session belongs to another user; nothing was changed."


def user_of(request: gr.Request | None) -> str | None:
    """The logged-in user of a request; ``None`` when the app has no users (or outside a request)."""
    return getattr(request, "username", None) or None


def stream_in_worker(assistant: Assistant, make_stream: Callable[[], Iterator[str]]) -> Iterator[str]:
    """Yield the reply so far, each time new pieces arrive; errors from the worker are re-raised here."""
    pieces: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            for piece in make_stream():
                pieces.put(piece)
        except BaseException as exc:  # handed to the reader, which raises it in the request
            pieces.put(exc)
        finally:
            pieces.put(_DONE)

    threading.Thread(target=work, name=f"reply-{assistant.session_id[:8]}", daemon=True).start()
    text = ""
    finished = False
    try:
        while not finished:
            batch = [pieces.get()]
            while not pieces.empty():  # coalesce what arrived while the browser was being updated
                batch.append(pieces.get_nowait())
            for item in batch:
                if item is _DONE:
                    finished = True
                elif isinstance(item, BaseException):
                    raise item
                else:
                    text += item
            yield text
    finally:
        if not finished:
            assistant.stop()


class Handlers:
    """The app's event handlers, bound to one process's shared :class:`Resources`."""

    def __init__(self, registry: SessionRegistry):
        self.registry = registry
        self._replies: dict[str, Reply] = {}  # each session's last reply, for the memory panel

    def _current(self, state: dict | None, user: str | None) -> Assistant | None:
        """The tab's session as ``user`` may see it; another user's is refused (nothing is changed)."""
        try:
            return self.registry.current(state or {}, user)
        except SessionAccessError:
            raise gr.Error(NOT_YOURS) from None

    def _panel(self, assistant: Assistant | None) -> tuple[str, dict]:
        data = panel_data(assistant, self._replies.get(assistant.session_id) if assistant else None)
        return panel_html(data), data

    def _replying(self, assistant: Assistant, start: Callable[[], Reply]) -> Callable[[], Reply]:
        """``start`` that also remembers the reply it returns, for the panel."""

        def started() -> Reply:
            reply = start()
            self._replies[assistant.session_id] = reply
            return reply

        return started

    def _sessions_update(self, state: dict, user: str | None):
        return gr.update(choices=self.registry.choices(user), value=state.get("session_id"))

    # -- chat -------------------------------------------------------------
    def respond(
        self, message: str, history: list | None, state: dict | None, request: gr.Request, *settings
    ) -> Iterator[tuple]:
        """Answer one message, streaming; outputs: textbox, chat, panel html, panel json, sessions, state."""
        user = user_of(request)
        state = dict(state or new_state())
        history = list(history or [])
        if not message or not message.strip():
            html, data = self._panel(self._current(state, user))
            yield message, history, html, data, self._sessions_update(state, user), state
            return
        try:
            assistant = self.registry.ensure(state, dict(zip(SETTING_FIELDS, settings)), user)
        except ConfigError as exc:
            raise gr.Error(str(exc)) from None
        except SessionAccessError:
            raise gr.Error(NOT_YOURS) from None
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield from self._stream(
            assistant, self._replying(assistant, lambda: assistant.stream(message)), "", history, state, user
        )

    def regenerate(self, history: list | None, state: dict | None, request: gr.Request = None) -> Iterator[tuple]:
        """Answer the last user message again (the old reply and its memories are taken back first)."""
        user = user_of(request)
        state = dict(state or new_state())
        assistant = self._current(state, user)
        history = self.registry.chat_history(assistant)
        last_user = next((m["content"] for m in reversed(history) if m["role"] == "user"), None)
        if assistant is None or last_user is None:
            raise gr.Error("Nothing to regenerate yet.")
        while history and history[-1]["role"] != "user":
            history.pop()
        history.append({"role": "assistant", "content": ""})
        yield from self._stream(assistant, self._replying(assistant, assistant.regenerate), "", history, state, user)

    def _stream(
        self, assistant: Assistant, make_stream, textbox: str, history: list, state: dict, user: str | None
    ) -> Iterator[tuple]:
        html, data = self._panel(assistant)
        sessions = self._sessions_update(state, user)
        yield textbox, history, html, data, sessions, state
        try:
            for text in stream_in_worker(assistant, make_stream):
                history[-1] = {"role": "assistant", "content": text}
                yield textbox, history, html, data, gr.skip(), state
        except (MessageError, ArchiveUnavailable) as exc:
            raise gr.Error(str(exc)) from None
        history = self.registry.chat_history(assistant)
        html, data = self._panel(assistant)
        yield textbox, history, html, data, self._sessions_update(state, user), state

    def stop(self, state: dict | None, request: gr.Request = None) -> None:
        assistant = self._current(state, user_of(request))
        if assistant is not None:
            assistant.stop()

    def undo(self, state: dict | None, request: gr.Request = None) -> tuple:
        """Take back the last exchange; its message returns to the textbox for editing."""
        user = user_of(request)
        state = dict(state or new_state())
        assistant = self._current(state, user)
        text = assistant.undo() if assistant is not None else None
        if assistant is not None:
            self._replies.pop(assistant.session_id, None)
        html, data = self._panel(assistant)
        return text or "", self.registry.chat_history(assistant), html, data, self._sessions_update(state, user), state

    # -- sessions -----------------------------------------------------------
    def new_session(self, state: dict | None, request: gr.Request = None) -> tuple:
        """A fresh tab state; the session is stored with the current settings on its first message."""
        return self._fresh(user_of(request))

    def _fresh(self, user: str | None) -> tuple:
        state = new_state()
        html, data = self._panel(None)
        return "", [], html, data, self._sessions_update(state, user), state

    def switch(self, session_id: str | None, state: dict | None, request: gr.Request = None) -> tuple:
        """Continue a stored session (resumed from the transcript if this process has not opened it).

        Only the user's own: another user's session is refused and the tab stays where it was.
        """
        user = user_of(request)
        state = dict(state or new_state())
        if not session_id:
            return self._fresh(user)
        if self.registry.resources.transcript.get_session(session_id) is None:
            raise gr.Error(f"No session {session_id!r}.")
        assistant = self._current({"session_id": session_id}, user)
        state["session_id"] = session_id
        html, data = self._panel(assistant)
        return "", self.registry.chat_history(assistant), html, data, self._sessions_update(state, user), state

    def refresh_sessions(self, state: dict | None, request: gr.Request = None):
        """The *Past sessions* list of this tab's user (filled when the page loads: never baked into the page)."""
        return self._sessions_update(state or new_state(), user_of(request))

    # -- archive ------------------------------------------------------------
    def search(self, query: str, k: float, state: dict | None, request: gr.Request = None) -> list[list]:
        """The session's archive: the best matches for ``query``, or every memory when it is empty."""
        return self._search(self._current(state, user_of(request)), query, k)

    @staticmethod
    def _search(assistant: Assistant | None, query: str, k: float) -> list[list]:
        if assistant is None:
            return []
        try:
            if query and query.strip():
                memories = assistant.search(query, k=int(k))
            else:
                assistant.flush(timeout=5)  # list what was evicted a moment ago too
                memories = assistant.archive.list(assistant.session_id)
        except ArchiveUnavailable as exc:
            raise gr.Error(f"The archive is unavailable: {exc}") from None
        return [[m.chunk_id, m.turn, m.role, round(m.score, 4), m.text] for m in memories]

    def forget(self, chunk_id: str, query: str, k: float, state: dict | None, request: gr.Request = None) -> tuple:
        """Forget the message a memory came from, everywhere; outputs: status, results, chat, panel html and json.

        The chat view is refreshed too: the forgotten message leaves the screen as it leaves the stores.
        """
        assistant = self._current(state, user_of(request))
        history = self.registry.chat_history(assistant)
        if assistant is None or not chunk_id or not chunk_id.strip():
            return "Pick a memory first.", self._search(assistant, query, k), history, *self._panel(assistant)
        try:
            done = assistant.forget(chunk_id.strip())
        except KeyError:
            status = f"No memory {chunk_id} in this session."
        except ArchiveUnavailable as exc:
            raise gr.Error(f"The archive is unavailable, nothing was forgotten: {exc}") from None
        else:
            status = (
                f"Forgot the message this memory came from: {done.chunks} memories, "
                f"{done.memory_blocks} recalled blocks quoting it, and its transcript row."
            )
        html, data = self._panel(assistant)
        return status, self._search(assistant, query, k), self.registry.chat_history(assistant), html, data

    def clear_chat(self, confirmed: bool, state: dict | None, request: gr.Request = None) -> tuple:
        """The chat's trash icon. The browser asked first (a confirm dialog): forget the session for real,
        or put the conversation back on the screen. Either way screen and stores agree.
        """
        user = user_of(request)
        state = dict(state or new_state())
        if confirmed and state.get("session_id"):
            _, _, *outputs = self._forget_session(state, user)
            return outputs
        assistant = self._current(state, user)
        html, data = self._panel(assistant)
        return "", self.registry.chat_history(assistant), html, data, self._sessions_update(state, user), state

    @staticmethod
    def ask_forget_session(state: dict | None):
        """First click on *Forget the whole session*: show the confirmation, do nothing yet."""
        has = bool((state or {}).get("session_id"))
        note = (
            "**Forget this whole session for good?** Every message, memory and recalled block of it is erased "
            "from the transcript and the archive files. This cannot be undone."
            if has
            else "No session yet."
        )
        return note, gr.update(visible=has)

    @staticmethod
    def cancel_forget_session():
        return "Nothing was forgotten.", gr.update(visible=False)

    def forget_session(self, state: dict | None, request: gr.Request = None) -> tuple:
        """Confirmed: delete the tab's session everywhere (archive, transcript, cache); the tab starts afresh."""
        return self._forget_session(state, user_of(request))

    def _forget_session(self, state: dict | None, user: str | None) -> tuple:
        assistant = self._current(state, user)
        if assistant is not None:
            assistant.forget_session()
            self._replies.pop(assistant.session_id, None)
        return ("Session deleted." if assistant else "No session yet."), [], *self._fresh(user)

    @staticmethod
    def pick(rows, evt: gr.SelectData) -> str:
        """Clicking a result row fills in its chunk id for Forget."""
        try:
            return str(rows.iloc[evt.index[0], 0]) if hasattr(rows, "iloc") else str(rows[evt.index[0]][0])
        except (IndexError, KeyError, TypeError):
            return ""
