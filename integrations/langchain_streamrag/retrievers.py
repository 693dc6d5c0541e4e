"""``StreamRAGRetriever``: hybrid search (dense + BM25) over one session's archive, as LangChain documents.

The archive holds the exact text that left a session's window, so a chain can
do RAG over a chat history far longer than the model's context.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from langchain_streamrag._common import resolve_resources
from streamrag.archive import Archive, Memory
from streamrag.indexer import Indexer
from streamrag.session import Assistant


class StreamRAGRetriever(BaseRetriever):
    """The ``k`` best archived chunks of one session for a query; metadata says where each came from.

    >>> retriever = StreamRAGRetriever.from_session(chat.get_session("ada"), k=4)
    >>> retriever.invoke("locker code")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    session_id: str
    k: int = 4
    archive: Archive | None = Field(default=None, exclude=True)
    """The archive to search; the process-wide one for ``config`` when ``None``."""
    indexer: Indexer | None = Field(default=None, exclude=True)
    """Whose not-yet-indexed text is searched too (BM25 and the embedder, beside the store)."""
    config: Any = None

    @classmethod
    def from_session(cls, session: Assistant, **kwargs: Any) -> StreamRAGRetriever:
        """A retriever over the archive of a streamrag session (``ChatStreamRAG.get_session(...)``)."""
        return cls(session_id=session.session_id, archive=session.archive, indexer=session.indexer, **kwargs)

    def _archive(self) -> Archive:
        if self.archive is None:
            resources = resolve_resources(None, self.config)
            self.archive, self.indexer = resources.archive, resources.indexer
        return self.archive

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None, **kwargs: Any
    ) -> list[Document]:
        archive = self._archive()
        pending = self.indexer.pending_chunks(self.session_id) if self.indexer is not None else None
        memories = archive.search(self.session_id, query, k=k if k is not None else self.k, pending=pending)
        return [to_document(memory) for memory in memories]


def to_document(memory: Memory) -> Document:
    return Document(
        id=memory.chunk_id,
        page_content=memory.text,
        metadata={
            "chunk_id": memory.chunk_id,
            "session_id": memory.session_id,
            "message_id": memory.message_id,
            "role": memory.role,
            "speaker": memory.speaker,
            "turn": memory.turn,
            "char_start": memory.char_start,
            "char_end": memory.char_end,
            "created_at": memory.created_at,
            "score": memory.score,
            "similarity": memory.similarity,
            "lexical_score": memory.lexical_score,
        },
    )
