"""Which conversation a browser tab is in, and the list of past conversations.

A tab's ``gr.State`` holds only a session id; the conversation itself lives
in :class:`streamrag.session.Resources` (one per process, shared model and
archive), so two tabs on two ids never share a cache, and a tab that
switches to a stored session resumes it from the transcript.

Every method takes the tab's ``owner``: the logged-in user when the app has
users (``streamrag serve --auth``), ``None`` without. A new session is stored
with its owner, the list holds only the owner's sessions, and opening someone
else's raises :class:`~streamrag.session.SessionAccessError`. With ``None``
(one local user) every session is listed and may be opened.
"""

from __future__ import annotations

from streamrag.session import MEMORY_ROLE, Assistant, Resources

# The "Settings for new sessions" controls, as dotted config fields.
SETTING_FIELDS = (
    "cache.window_tokens",
    "cache.sink_tokens",
    "recall.top_k",
    "recall.budget_fraction",
    "generation.temperature",
)


def new_state() -> dict:
    """A tab's state before its first message: no session yet (none is stored until something is said)."""
    return {"session_id": None}


class SessionRegistry:
    """Sessions for the app's tabs, on top of :meth:`Resources.session`."""

    def __init__(self, resources: Resources):
        self.resources = resources

    def defaults(self) -> dict:
        """The settings a new session gets unless the user changes them (from the loaded config)."""
        config = self.resources.config
        return {
            "cache.window_tokens": config.cache.window_tokens,
            "cache.sink_tokens": config.cache.sink_tokens,
            "recall.top_k": config.recall.top_k,
            "recall.budget_fraction": config.recall.budget_fraction,
            "generation.temperature": config.generation.temperature,
        }

    def current(self, state: dict, owner: str | None = None) -> Assistant | None:
        """The tab's session, if it has one; :class:`SessionAccessError` if it is not ``owner``'s."""
        session_id = state.get("session_id")
        return self.resources.session(session_id, owner=owner) if session_id else None

    def ensure(self, state: dict, settings: dict, owner: str | None = None) -> Assistant:
        """The tab's session, created with ``settings`` (and ``owner``) on its first message."""
        assistant = self.current(state, owner)
        if assistant is None:
            changed = {k: v for k, v in settings.items() if v is not None and v != self.defaults().get(k)}
            assistant = self.resources.session(None, settings=_typed(changed), owner=owner)
            state["session_id"] = assistant.session_id
        return assistant

    def choices(self, owner: str | None = None) -> list[tuple[str, str]]:
        """(label, session id) of ``owner``'s stored sessions with messages (every one for ``None``), newest first."""
        out = []
        for info in self.resources.sessions_of(owner):
            label = info.title or info.session_id[:8]
            out.append((f"{label} · {info.message_count} msgs", info.session_id))
        return out

    def chat_history(self, assistant: Assistant | None) -> list[dict]:
        """The session's user and assistant messages in Gradio's messages format."""
        if assistant is None:
            return []
        return [
            {"role": m.role, "content": m.content}
            for m in assistant.transcript.messages(assistant.session_id)
            if m.role in {"user", "assistant"} and m.role != MEMORY_ROLE
        ]


def _typed(settings: dict) -> dict:
    """Sliders send floats; token counts and top-k are integers in the config."""
    ints = {"cache.window_tokens", "cache.sink_tokens", "recall.top_k"}
    return {k: int(v) if k in ints else float(v) for k, v in settings.items()}
