"""Self-Extend: attend over more tokens than the model was trained on, by grouping distant positions.

Self-Extend (Jin et al., "LLM Maybe LongLM", ICML 2024) keeps exact relative
positions for the nearest ``neighbor_window`` (W) keys and maps every key
further away to the grouped position ``j // G`` (G = ``group_size``), seen from
the grouped query position ``p // G + W - W // G``. The largest relative
position the model then meets is below its trained length L as long as the
sequence fits in ``(L - W) * G + W`` tokens, so a sink cache may hold a window
several times longer than L.

How it plugs into transformers 5 without patching a model family: the
attention modules apply RoPE to queries and keys at the positions the engine
passes, append the keys to the cache and then call the function registered for
``config._attn_implementation``. We register :func:`self_extend_attention`
under :data:`ATTENTION_NAME`. Because RoPE is a rotation, the grouped branch
is derived inside it by rotating the already-rotated tensors once more: a key
at ``j`` by ``j // G - j``, a query at ``p`` by ``(p // G + W - W // G) - p``
(:meth:`~streamrag.rope.KeyRotation.rotate`, with the model's own frequencies).
The sink cache keeps every key at its cache-relative position (eviction
re-rotates), so key ``j`` simply sits at position ``j``; grouped keys are
recomputed per call rather than cached, so memory stays what the window implies.

The switch is scoped: :func:`applied` sets the model's attention implementation
for the duration of one forward pass and puts the previous one back, so other
users of the same model object (a test fixture, other sessions) keep their
attention bit for bit. A call that reaches the function outside such a scope
gets plain causal attention.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from streamrag.rope import LENGTH_DEPENDENT_ROPE, KeyRotation, UnsupportedModelError, _rope_parameters, _rope_type

logger = logging.getLogger(__name__)

ATTENTION_NAME = "streamrag_self_extend"
# Queries per block of the score matrix: bounds memory to (heads x QUERY_BLOCK x keys) per branch,
# ~75 MB in fp32 for 9 heads and 16k keys, whatever the prefill chunk.
QUERY_BLOCK = 128


class SelfExtendError(ValueError):
    """Self-Extend cannot serve these settings on this model; the message names the fix."""


@dataclass(frozen=True)
class SelfExtend:
    """The two numbers of Self-Extend, and how to rotate this model's queries and keys."""

    group_size: int
    neighbor_window: int
    rotation: KeyRotation

    def attention(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, query_positions: torch.Tensor
    ) -> torch.Tensor:
        """Bi-level attention of ``query`` over the cached ``key``/``value``; see :func:`bi_level_attention`."""
        return bi_level_attention(
            query,
            key,
            value,
            scaling=scaling,
            query_positions=query_positions,
            group_size=self.group_size,
            neighbor_window=self.neighbor_window,
            rotation=self.rotation,
        )


def reach(trained: int, group_size: int, neighbor_window: int) -> int:
    """Most tokens Self-Extend can attend over: ``(L - W) * G + W`` (the paper's extended window)."""
    return (trained - neighbor_window) * group_size + neighbor_window


def trained_length(model: torch.nn.Module) -> int | None:
    """The context the model was trained on: the pre-scaling length when its RoPE is scaled."""
    config = model.config.get_text_config(decoder=True)
    original = _rope_parameters(config).get("original_max_position_embeddings") or getattr(
        config, "original_max_position_embeddings", None
    )
    return original or getattr(config, "max_position_embeddings", None)


def self_extend_for(
    model: torch.nn.Module, rotation: KeyRotation | None, capacity: int, group_size: int, neighbor_window: int
) -> SelfExtend:
    """Check that Self-Extend can serve ``capacity`` cached tokens on ``model``; fail now, naming the fix.

    Logs a warning when the settings fall outside the paper's empirical
    advice (group_size 2-64 and a neighbor window of roughly L/8 to L/2 for
    Llama-2's L = 4096), since they still run but may retrieve worse.
    """
    config = model.config.get_text_config(decoder=True)
    if rotation is None:
        raise SelfExtendError(f"{config.model_type} has no RoPE; cache.position_mode 'self_extend' needs one")
    rope_type = _rope_type(config)
    if rope_type in LENGTH_DEPENDENT_ROPE:
        raise UnsupportedModelError(
            f"{rope_type!r} RoPE changes its frequencies with the sequence length, so grouped positions cannot be "
            "derived by rotation; use cache.position_mode 'shift'"
        )
    trained = trained_length(model)
    if not trained:
        raise SelfExtendError("the model config names no max_position_embeddings; Self-Extend needs the trained length")
    if neighbor_window >= trained:
        raise SelfExtendError(
            f"cache.neighbor_window ({neighbor_window}) must be below the trained length ({trained}): "
            "neighbor attention keeps exact positions, which the model only knows up to that length"
        )
    extended = reach(trained, group_size, neighbor_window)
    if capacity > extended:
        smallest = -(-(capacity - neighbor_window) // (trained - neighbor_window))  # ceil division
        raise SelfExtendError(
            f"cache.sink_tokens + cache.window_tokens ({capacity}) exceeds what Self-Extend reaches with "
            f"cache.group_size={group_size} and cache.neighbor_window={neighbor_window} on a model trained on "
            f"{trained} tokens: (L - W) * G + W = {extended}. Raise cache.group_size to at least {smallest}, "
            f"or lower cache.window_tokens by {capacity - extended}"
        )
    advice = []
    if group_size == 1:
        advice.append("group_size 1 groups nothing (the context cannot grow past the trained length)")
    elif group_size > 64:
        advice.append(f"group_size {group_size} is above the 2-64 the authors found reasonable")
    if not trained // 8 <= neighbor_window <= trained // 2:
        advice.append(
            f"neighbor_window {neighbor_window} is outside roughly L/8..L/2 = {trained // 8}..{trained // 2} "
            "(the authors used 512-1536 for L = 4096)"
        )
    if advice:
        logger.warning(
            "Self-Extend settings outside the paper's rule of thumb: %s; reach %d tokens for a cache of %d",
            "; ".join(advice),
            extended,
            capacity,
        )
    logger.info(
        "Self-Extend: group_size %d, neighbor_window %d, trained length %d, reach %d tokens, cache %d",
        group_size,
        neighbor_window,
        trained,
        extended,
        capacity,
    )
    register()
    return SelfExtend(group_size=group_size, neighbor_window=neighbor_window, rotation=rotation)


def bi_level_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scaling: float,
    query_positions: torch.Tensor,
    group_size: int,
    neighbor_window: int,
    rotation: KeyRotation,
    query_block: int = QUERY_BLOCK,
) -> torch.Tensor:
    """Self-Extend's attention; returns ``[batch, queries, heads, head_dim]`` like transformers' kernels.

    ``query`` is ``[batch, heads, queries, head_dim]`` RoPE'd at ``query_positions``
    (1-D, one per query); ``key``/``value`` are ``[batch, kv_heads, keys, head_dim]``
    with key ``j`` RoPE'd at position ``j``. A key at distance ``p - j < W`` is
    scored with the exact positions, one further away with the grouped ones;
    keys after the query are masked (causal). Grouped-query attention is
    handled by folding each KV head's query heads into the query axis, so keys
    and values are never repeated in memory.
    """
    batch, heads, queries, head_dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    per_kv = heads // kv_heads
    window, group = neighbor_window, group_size
    device = query.device
    key_positions = torch.arange(keys, device=device)
    query_positions = query_positions.to(device=device, dtype=torch.long)
    # Grouped keys only matter when some key is W or more positions before some query.
    grouped_key = rotation.rotate(key, key_positions // group - key_positions) if group > 1 else key
    out = torch.empty(batch, kv_heads, per_kv, queries, head_dim, device=device, dtype=query.dtype)
    folded = query.view(batch, kv_heads, per_kv, queries, head_dim)
    for start in range(0, queries, query_block):
        stop = min(start + query_block, queries)
        positions = query_positions[start:stop]
        q = folded[:, :, :, start:stop]
        first, last = int(positions.min()), int(positions.max())
        # Keys [0, far_end) are W or more before at least one query of the block; keys [near_start, keys)
        # are within W of at least one. Only the overlap needs both scores.
        far_end = min(max(last - window + 1, 0), keys)
        near_start = min(max(first - window + 1, 0), keys)
        distance = positions[:, None] - key_positions[None, :]  # [block, keys]
        scores = torch.matmul(q, key[:, :, None, near_start:].transpose(-1, -2)) * scaling
        if far_end > 0:
            grouped_positions = positions // group + window - window // group
            q_grouped = rotation.rotate(q, grouped_positions - positions) if group > 1 else q
            far = torch.matmul(q_grouped, grouped_key[:, :, None, :far_end].transpose(-1, -2)) * scaling
            overlap = far_end - near_start
            if overlap > 0:
                use_near = distance[:, near_start:far_end] < window
                scores[..., :overlap] = torch.where(use_near, scores[..., :overlap], far[..., near_start:])
            scores = torch.cat((far[..., :near_start], scores), dim=-1)
        elif near_start > 0:
            # Cannot happen (near_start <= far_end), kept as a guard for the invariant.
            raise AssertionError("keys before the neighbor window but no grouped scores")
        scores = scores.masked_fill(distance < 0, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
        out[:, :, :, start:stop] = torch.matmul(probs, value[:, :, None])
    return out.view(batch, heads, queries, head_dim).transpose(1, 2).contiguous()


# The SelfExtend of the forward pass running in this thread (set by `applied`).
_ACTIVE: contextvars.ContextVar[SelfExtend | None] = contextvars.ContextVar("streamrag_self_extend", default=None)
_SWITCH_LOCK = threading.RLock()
_warned_outside_scope = False


def self_extend_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The function registered with transformers' ``AttentionInterface`` (its calling convention).

    No mask is built for this implementation (transformers skips mask creation
    for names it has no mask function for): causality comes from positions,
    which is all a batch of one unpadded sequence needs.
    """
    global _warned_outside_scope
    if dropout:
        raise ValueError("Self-Extend attention is for inference; dropout must be 0")
    if attention_mask is not None:
        raise ValueError("Self-Extend attention takes no padding mask (one unpadded sequence per call)")
    if getattr(module, "sliding_window", None):
        raise UnsupportedModelError("Self-Extend does not combine with sliding-window attention layers")
    keys, queries = key.shape[-2], query.shape[-2]
    position_ids = kwargs.get("position_ids")
    if position_ids is not None:
        query_positions = position_ids.reshape(-1, position_ids.shape[-1])[0]
    else:
        query_positions = torch.arange(keys - queries, keys, device=query.device)
    settings = _ACTIVE.get()
    if settings is None:
        if not _warned_outside_scope:
            _warned_outside_scope = True
            logger.warning("Self-Extend attention called outside its scope; using plain causal attention")
        window = keys + 1  # every key is a neighbor: ordinary attention
        rotation = KeyRotation(inv_freq=torch.zeros(1), rotary_dim=2)
        out = bi_level_attention(
            query,
            key,
            value,
            scaling=scaling,
            query_positions=query_positions,
            group_size=1,
            neighbor_window=window,
            rotation=rotation,
        )
        return out, None
    return settings.attention(query, key, value, scaling, query_positions), None


def register() -> None:
    """Register :func:`self_extend_attention` with transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, self_extend_attention)


@contextmanager
def applied(model: torch.nn.Module, settings: SelfExtend) -> Iterator[None]:
    """Run the enclosed forward passes of ``model`` with Self-Extend attention, then restore its own.

    The decoder's configuration object is shared by every attention layer and
    the mask builder, so the switch is one attribute; a lock keeps two threads from interleaving their
    switch and restore.
    """
    # The decoder's own config, set without the recursive setter so sub-configs keep their implementations.
    config = model.config.get_text_config(decoder=True)
    with _SWITCH_LOCK:
        previous = config._attn_implementation_internal
        token = _ACTIVE.set(settings)
        config._attn_implementation_internal = ATTENTION_NAME
        try:
            yield
        finally:
            config._attn_implementation_internal = previous
            _ACTIVE.reset(token)
