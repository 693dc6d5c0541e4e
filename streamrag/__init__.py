"""streamrag: long-running assistants on a local model with an attention-sink KV cache and recall."""

from streamrag.config import ConfigError, StreamRAGConfig
from streamrag.engine import CacheStats, Generation, MessageError, StreamingLM, TurnStats
from streamrag.ledger import EvictedSpan, MessageRef

__all__ = [
    "AnonymousSessions",
    "Archive",
    "ArchiveUnavailable",
    "Assistant",
    "CacheStats",
    "ConfigError",
    "EvictedSpan",
    "Generation",
    "Memory",
    "MessageError",
    "MessageRef",
    "Reply",
    "Resources",
    "SessionAccessError",
    "StreamRAGConfig",
    "StreamingLM",
    "TurnStats",
]
__version__ = "0.1.0"

# The archive side imports Chroma and sentence-transformers; load it only when asked for.
_LAZY = {
    "Archive": "streamrag.archive",
    "ArchiveUnavailable": "streamrag.archive",
    "Memory": "streamrag.archive",
    "AnonymousSessions": "streamrag.session",
    "Assistant": "streamrag.session",
    "Resources": "streamrag.session",
    "Reply": "streamrag.session",
    "SessionAccessError": "streamrag.session",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'streamrag' has no attribute {name!r}")
