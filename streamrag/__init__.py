"""streamrag: long-running assistants on a local model with an attention-sink KV cache."""

from streamrag.config import ConfigError, StreamRAGConfig
from streamrag.engine import CacheStats, MessageError, StreamingLM, TurnStats
from streamrag.ledger import EvictedSpan, MessageRef

__all__ = [
    "CacheStats",
    "ConfigError",
    "EvictedSpan",
    "MessageError",
    "MessageRef",
    "StreamRAGConfig",
    "StreamingLM",
    "TurnStats",
]
__version__ = "0.1.0"
