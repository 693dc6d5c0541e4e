"""The embedder, registered with Chroma so a collection reopens with its own model.

Chroma 1.x stores an embedding function's *name and config* with each
collection and rebuilds it from them when the collection is opened again (by
this process, another one, or the Chroma CLI). Chroma's built-in
sentence-transformers function would store the absolute path of the embedded
model inside site-packages, which breaks as soon as the virtualenv moves; ours
stores ``"embedded"`` and resolves it on load.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from streamrag.models import ModelLoadError, embedded_embedding_model

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
_MODELS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def load_sentence_transformer(model: str, device: str = "cpu"):
    """Load (once per process) a sentence-transformers model: 'embedded', a folder, or a hub id."""
    from sentence_transformers import SentenceTransformer

    key = (model, device)
    with _LOCK:
        if key not in _MODELS:
            path = str(embedded_embedding_model()) if model == EMBEDDED else model
            try:
                _MODELS[key] = SentenceTransformer(path, device=device)
            except OSError as exc:
                raise ModelLoadError(
                    f"cannot load embedding model {model!r}: not a local folder and not in the offline "
                    "Hugging Face cache; set archive.embedding_model to a local sentence-transformers folder"
                ) from exc
            logger.info("loaded embedding model %s on %s", model, device)
        return _MODELS[key]


@register_embedding_function
class StreamragEmbedding(EmbeddingFunction[Documents]):
    """Normalised sentence-transformers embeddings, cosine space."""

    def __init__(self, model: str = EMBEDDED, device: str = "cpu", batch_size: int = 64, lazy: bool = False):
        """Loads the model now (a missing one fails at start-up) unless ``lazy``: then on first use.

        Chroma rebuilds the function whenever it opens a collection; those copies
        are lazy, so a process that only copies stored vectors never loads a model.
        """
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self._loaded = None if lazy else load_sentence_transformer(model, device)

    @property
    def _encoder(self):
        if self._loaded is None:
            self._loaded = load_sentence_transformer(self.model, self.device)
        return self._loaded

    def __call__(self, input: Documents) -> Embeddings:  # noqa: A002 - Chroma's protocol names it `input`
        vectors = self._encoder.encode(
            list(input),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,  # it defaults to on whenever the app logs at INFO: one bar per eviction
        )
        return [np.asarray(v, dtype=np.float32) for v in vectors]

    @staticmethod
    def name() -> str:
        return "streamrag_sentence_transformer"

    def default_space(self) -> str:
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine", "ip", "l2"]

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> StreamragEmbedding:
        return StreamragEmbedding(
            model=config.get("model", EMBEDDED),
            device=config.get("device", "cpu"),
            batch_size=int(config.get("batch_size", 64)),
            lazy=True,
        )

    def get_config(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "batch_size": self.batch_size}

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        if old_config.get("model") != new_config.get("model"):
            raise ValueError("a collection's embedding model cannot change: its stored vectors would not match")

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if not isinstance(config.get("model", EMBEDDED), str):
            raise ValueError("embedding config needs a string 'model'")
