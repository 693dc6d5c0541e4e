"""The attention-sink KV cache, as one more member of transformers' ``Cache`` family.

StreamingLLM (Xiao et al., 2023) observed that a model keeps working over an
endless stream if the cache holds the first few tokens (the "attention sinks"
every head dumps attention on) plus a window of recent tokens. This cache is a
plain list of transformers ``DynamicLayer`` objects; between forward passes the
engine calls :meth:`SinkCache.evict` to drop the oldest non-sink tokens. The
keys behind the gap are rotated left by the gap's length, so every key sits at
its cache-relative position and the model never sees a position beyond
``sink_tokens + window_tokens``. Because eviction happens between forward
passes, attention code is untouched: no monkey-patching, any attention kernel.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from streamrag.rope import KeyRotation


class SinkCache(Cache):
    """``sink_tokens`` first tokens plus a rolling window of ``window_tokens`` recent ones.

    Parameters
    ----------
    num_layers:
        Number of decoder layers of the model.
    sink_tokens, window_tokens:
        The two sizes of StreamingLLM (its ``start_size`` and ``recent_size``).
    rotation:
        How to move a cached key along the position axis, or ``None`` for
        models whose positions need no rotation (ALiBi).
    """

    def __init__(self, num_layers: int, sink_tokens: int, window_tokens: int, rotation: KeyRotation | None):
        super().__init__(layers=[DynamicLayer() for _ in range(num_layers)])
        self.sink_tokens = sink_tokens
        self.window_tokens = window_tokens
        self.rotation = rotation
        self.evicted_tokens = 0
        self.evictions = 0

    @property
    def capacity(self) -> int:
        """Most tokens the cache may hold."""
        return self.sink_tokens + self.window_tokens

    def room_needed(self, incoming: int, evict_chunk: int) -> int:
        """How many tokens to evict before ``incoming`` new ones fit.

        Returns 0 if they fit; otherwise at least ``evict_chunk`` tokens (as
        llama.cpp's context shift does, so the rotation cost is paid once per
        chunk rather than once per generated token), never more than the
        evictable (non-sink) tokens.
        """
        if incoming > self.window_tokens:
            raise ValueError(f"cannot add {incoming} tokens at once to a window of {self.window_tokens}")
        length = self.get_seq_length()
        overflow = length + incoming - self.capacity
        if overflow <= 0:
            return 0
        evictable = max(length - self.sink_tokens, 0)
        return min(max(overflow, evict_chunk), evictable)

    def evict(self, count: int) -> None:
        """Drop ``count`` tokens right after the sinks and shift the rest left.

        Only the KV tensors change here; which text those tokens held is the
        ledger's business, and the engine asks it first.
        """
        if count <= 0:
            return
        length = self.get_seq_length()
        if count > length - self.sink_tokens:
            raise ValueError(f"cannot evict {count} tokens: only {length - self.sink_tokens} are outside the sinks")
        sink, start = self.sink_tokens, self.sink_tokens + count
        for layer in self.layers:
            if not layer.is_initialized or layer.keys.numel() == 0:
                continue
            kept_keys = layer.keys[..., start:, :]
            if self.rotation is not None:
                # The kept keys now sit `count` positions earlier than when they were computed.
                kept_keys = self.rotation.shift(kept_keys, -count)
            layer.keys = torch.cat((layer.keys[..., :sink, :], kept_keys), dim=-2)
            layer.values = torch.cat((layer.values[..., :sink, :], layer.values[..., start:, :]), dim=-2)
        self.evicted_tokens += count
        self.evictions += 1

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values (for stats and benchmarks)."""
        total = 0
        for layer in self.layers:
            if layer.is_initialized and layer.keys is not None:
                total += layer.keys.numel() * layer.keys.element_size()
                total += layer.values.numel() * layer.values.element_size()
        return total
