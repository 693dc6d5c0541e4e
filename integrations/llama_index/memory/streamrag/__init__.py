"""A memory block for LlamaIndex's ``Memory`` that reads from a streamrag archive.

``from llama_index.memory.streamrag import StreamRAGMemoryBlock``. On each
read it asks the session what it would recall for the latest user message
(:meth:`streamrag.session.Assistant.recall`: hybrid search, thresholds, token
budget, skipping what is still in the window) and returns that block of text.
Nothing is written through it: the archive is filled by the session's evictions.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.memory.memory import BaseMemoryBlock

__all__ = ["StreamRAGMemoryBlock"]


class StreamRAGMemoryBlock(BaseMemoryBlock[str]):
    """Memories a streamrag session recalls for the latest user message, as one text block."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = "streamrag_archive"
    description: str | None = "What left the conversation's window, recalled from the streamrag archive."
    session: Any = Field(description="The streamrag Assistant whose archive is read.", exclude=True)
    accept_short_term_memory: bool = False

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        query = next((m.content for m in reversed(messages or []) if m.role == MessageRole.USER and m.content), None)
        if not query:
            return ""
        return self.session.recall(query).block

    async def _aput(self, messages: list[ChatMessage]) -> None:
        return None
