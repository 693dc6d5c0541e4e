"""The streamrag archive as a LlamaIndex vector store: ``from llama_index.vector_stores.streamrag import ...``.

It is one session's Chroma collection in the archive, seen through
LlamaIndex's ``ChromaVectorStore``, so
``VectorStoreIndex.from_vector_store(store, embed_model=StreamRAGEmbedding.from_archive(archive))``
builds a query engine over a chat history. It is read-only: the archive is
written by the session's evictions, never by an index.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from llama_index.core.vector_stores.types import (
    FilterCondition,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from llama_index.vector_stores.chroma import ChromaVectorStore

__all__ = ["StreamRAGVectorStore"]


class StreamRAGVectorStore(ChromaVectorStore):
    """One session's archived chunks, read through Chroma (each session has its own collection)."""

    session_id: str | None = None

    def __init__(self, archive, session_id: str, **kwargs: Any):
        if not session_id:
            raise ValueError("StreamRAGVectorStore needs a session_id: each session's memories are a collection")
        super().__init__(chroma_collection=archive.collection_for(session_id), **kwargs)
        self.session_id = session_id

    @classmethod
    def from_archive(cls, archive, session_id: str, **kwargs: Any) -> StreamRAGVectorStore:
        return cls(archive, session_id=session_id, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "StreamRAGVectorStore"

    def _scoped(self, query: VectorStoreQuery) -> VectorStoreQuery:
        if self.session_id is None:
            return query
        session = MetadataFilter(key="session_id", value=self.session_id)
        if query.filters is None:
            filters = MetadataFilters(filters=[session])
        else:
            filters = MetadataFilters(filters=[session, query.filters], condition=FilterCondition.AND)
        return replace(query, filters=filters)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return super().query(self._scoped(query), **kwargs)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return self.query(query, **kwargs)

    def add(self, nodes, **add_kwargs: Any) -> list[str]:
        raise NotImplementedError("the streamrag archive is written by its sessions' evictions, not by an index")

    async def async_add(self, nodes, **add_kwargs: Any) -> list[str]:
        return self.add(nodes, **add_kwargs)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        raise NotImplementedError("forget memories with Assistant.forget() or `streamrag archive forget`")

    def delete_nodes(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("forget memories with Assistant.forget() or `streamrag archive forget`")

    def clear(self) -> None:
        raise NotImplementedError("forget memories with Assistant.forget_session() or `streamrag archive forget`")
