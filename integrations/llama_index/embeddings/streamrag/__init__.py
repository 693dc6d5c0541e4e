"""The archive's embedder as a LlamaIndex embedding: ``from llama_index.embeddings.streamrag import ...``.

A query embedded by LlamaIndex must land in the same space as the chunks the
archive stored, so this wraps the very embedder the archive's Chroma
collection uses (normalised sentence-transformers vectors, cosine space).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import PrivateAttr

from streamrag.embedding import EMBEDDED, StreamragEmbedding

__all__ = ["StreamRAGEmbedding"]


class StreamRAGEmbedding(BaseEmbedding):
    """streamrag's embedder ('embedded' all-MiniLM-L6-v2, a folder, or a hub id) for LlamaIndex."""

    model_name: str = EMBEDDED
    device: str = "cpu"

    _embedder: StreamragEmbedding = PrivateAttr()

    def __init__(self, model_name: str = EMBEDDED, device: str = "cpu", **kwargs: Any):
        super().__init__(model_name=model_name, device=device, **kwargs)
        self._embedder = StreamragEmbedding(model=model_name, device=device)

    @classmethod
    def from_archive(cls, archive, **kwargs: Any) -> StreamRAGEmbedding:
        """The embedder of an :class:`~streamrag.archive.Archive` (the model its collection was built with)."""
        return cls(model_name=archive.embedder.model, device=archive.embedder.device, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "StreamRAGEmbedding"

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return [vector.tolist() for vector in self._embedder(texts)]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._get_query_embedding(query)
