"""What counts as a message the model may read, checked once before anything is stored or fed.

Every entry point (the engine, the session, the adapters) calls
:func:`check_message` first, so bad input is refused with one clear
:class:`MessageError` and nothing is left behind: no transcript row, no
cache slot. Python strings can hold lone UTF-16 surrogates (``"\\ud800"``,
from a broken JSON decoder or a truncated emoji); they cannot be encoded as
UTF-8, so SQLite, the tokenizer and Chroma would each fail on them
somewhere deep inside.
"""

from __future__ import annotations

ROLES = ("system", "user", "assistant", "tool")


class MessageError(ValueError):
    """A message was refused (empty, too long, unknown role, not valid text); nothing was changed."""


def check_text(content: object, what: str = "message") -> str:
    """``content`` if it is a non-blank string that encodes as UTF-8; :class:`MessageError` otherwise."""
    if not isinstance(content, str):
        raise MessageError(f"{what} content must be a string, not {type(content).__name__}")
    if not content.strip():
        raise MessageError(f"{what} is empty")
    try:
        content.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = content[exc.start : exc.end]
        raise MessageError(
            f"{what} holds text that is not valid Unicode at character {exc.start:,} "
            f"({bad.encode('unicode_escape').decode()}, a lone surrogate); fix the encoding of the input"
        ) from None
    return content


def check_message(role: str, content: object, max_chars: int, roles: tuple[str, ...] = ROLES) -> str:
    """Refuse an unknown role, a non-string, blank or over-long content, or invalid Unicode."""
    if role not in roles:
        raise MessageError(f"unknown role {role!r}; use one of {', '.join(roles)}")
    check_text(content)
    assert isinstance(content, str)
    if len(content) > max_chars:
        raise MessageError(
            f"message has {len(content):,} characters, more than max_message_chars ({max_chars:,}); "
            "split it or raise the limit"
        )
    return content
