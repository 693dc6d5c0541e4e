"""How a model encodes positions, and how to move a cached key to another position.

The sink cache keeps every key at its *cache-relative* position: when tokens
leave the middle of the cache, the keys behind them move left by that many
positions. Keys are stored after RoPE, so moving one means rotating it by the
negative shift with the model's own frequencies. This module reads those
frequencies off the loaded model (so default, linear, llama3, yarn and
partial-rotary variants all work) and refuses model families whose positions
cannot be shifted this way, at load time rather than with garbage output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

# Families whose attention applies HF's `rotate_half` RoPE to keys before they
# reach the cache, on every layer. Others may still work, but we only claim
# what the test suite checks.
ROTATE_HALF_FAMILIES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "gemma",
        "phi3",
        "phi",
        "stablelm",
        "gpt_neox",
        "olmo",
        "olmo2",
        "granite",
        "granitemoe",
        "starcoder2",
    }
)
# ALiBi biases depend only on key distance, so evicted keys need no rotation.
ALIBI_FAMILIES = frozenset({"bloom", "mpt"})
# rope types whose frequencies change with sequence length: safe only while the
# cache stays inside the original trained length (positions never exceed it).
LENGTH_DEPENDENT_ROPE = frozenset({"dynamic", "longrope"})


class UnsupportedModelError(ValueError):
    """The model's positional scheme cannot be shifted by the sink cache."""


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF's RoPE pairing: the first half of the rotary dims pairs with the second half."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class KeyRotation:
    """Moves RoPE'd keys along the position axis using the model's inverse frequencies.

    Keys in the cache are ``a * R(p) k`` where ``a`` is the rotary embedding's
    attention scaling (yarn/longrope) and ``R(p)`` the rotation for position
    ``p``. Rotations compose, ``R(-s) R(p) = R(p - s)``, and commute with the
    scalar ``a``, so applying the *unscaled* ``R(-s)`` yields exactly the key
    the model would have produced at ``p - s``; applying ``a`` again would
    double it. That is why only ``inv_freq`` is used here.
    """

    inv_freq: torch.Tensor  # [rotary_dim // 2], float32
    rotary_dim: int

    def shift(self, keys: torch.Tensor, delta: int) -> torch.Tensor:
        """Return ``keys`` (``[..., seq, head_dim]``) moved by ``delta`` positions."""
        if delta == 0 or keys.shape[-2] == 0:
            return keys
        # cos/sin of one angle per frequency; float64 keeps large deltas exact before casting.
        angles = float(delta) * self.inv_freq.to(device=keys.device, dtype=torch.float64)
        angles = torch.cat((angles, angles))
        cos, sin = angles.cos().float(), angles.sin().float()
        rot = keys[..., : self.rotary_dim].float()
        # Rotate in fp32 and round once, so bf16 caches do not accumulate extra error per shift.
        moved = (rot * cos + rotate_half(rot) * sin).to(keys.dtype)
        if self.rotary_dim == keys.shape[-1]:
            return moved
        return torch.cat((moved, keys[..., self.rotary_dim :]), dim=-1)

    def rotate(self, x: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Move each position of ``x`` (``[..., seq, head_dim]``) by its own ``deltas[i]`` (1-D, ``seq`` long).

        The per-position form of :meth:`shift`, for Self-Extend's grouped
        positions; works on queries as well as keys, since both carry RoPE the same way.
        """
        if x.shape[-2] == 0:
            return x
        angles = deltas.to(device=x.device, dtype=torch.float64)[:, None] * self.inv_freq.to(
            device=x.device, dtype=torch.float64
        )
        angles = torch.cat((angles, angles), dim=-1)  # [seq, rotary_dim]
        cos, sin = angles.cos().float(), angles.sin().float()
        rot = x[..., : self.rotary_dim].float()
        moved = (rot * cos + rotate_half(rot) * sin).to(x.dtype)
        if self.rotary_dim == x.shape[-1]:
            return moved
        return torch.cat((moved, x[..., self.rotary_dim :]), dim=-1)


def _rope_parameters(config) -> dict:
    """The flat RoPE parameter dict (the full-attention entry for per-layer-type configs)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(params, dict) and "rope_type" not in params and params:
        params = params.get("full_attention", next(iter(params.values())))
    return params if isinstance(params, dict) else {}


def _rope_type(config) -> str:
    params = _rope_parameters(config)
    return str(params.get("rope_type", params.get("type", "default")))


def find_rotary_embedding(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's shared rotary embedding module (holds ``inv_freq``), if any."""
    for name, module in model.named_modules():
        if name.endswith("rotary_emb") and isinstance(getattr(module, "inv_freq", None), torch.Tensor):
            return module
    return None


def key_rotation_for(model: torch.nn.Module, capacity: int) -> KeyRotation | None:
    """Inspect ``model`` and return how to shift its cached keys.

    Returns ``None`` for ALiBi models (nothing to rotate). Raises
    :class:`UnsupportedModelError` with the reason for anything else the sink
    cache cannot serve correctly at this ``capacity`` (sinks + window).
    """
    config = model.config.get_text_config(decoder=True)
    family = config.model_type
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(kind != "full_attention" for kind in layer_types):
        kinds = sorted(set(layer_types))
        raise UnsupportedModelError(
            f"{family} mixes attention layer types {kinds}; the sink cache needs full attention on every layer"
        )
    if getattr(config, "no_rope_layers", None) or getattr(config, "no_rope_layer_interval", None):
        raise UnsupportedModelError(f"{family} has layers without RoPE; their keys cannot be shifted uniformly")
    sliding = getattr(config, "sliding_window", None)
    if sliding and getattr(config, "use_sliding_window", True) and capacity > sliding:
        raise UnsupportedModelError(
            f"{family} uses sliding-window attention of {sliding} tokens; "
            f"set cache.sink_tokens + cache.window_tokens (now {capacity}) to at most {sliding}"
        )
    if family in ALIBI_FAMILIES:
        return None
    if family not in ROTATE_HALF_FAMILIES:
        raise UnsupportedModelError(
            f"model family {family!r} is not supported by the sink cache: it needs RoPE in HF's rotate-half form "
            f"({', '.join(sorted(ROTATE_HALF_FAMILIES))}) or ALiBi ({', '.join(sorted(ALIBI_FAMILIES))})"
        )
    rotary = find_rotary_embedding(model)
    if rotary is None:
        raise UnsupportedModelError(f"{family} model has no rotary embedding module to read frequencies from")
    rope_type = _rope_type(config)
    if rope_type in LENGTH_DEPENDENT_ROPE:
        # transformers' longrope switches frequencies at rope_parameters["original_max_position_embeddings"]
        # (phi3 also copies it to a config attribute); dynamic grows past max_position_embeddings.
        original = (
            _rope_parameters(config).get("original_max_position_embeddings")
            or getattr(config, "original_max_position_embeddings", None)
            or config.max_position_embeddings
        )
        if capacity > original:
            raise UnsupportedModelError(
                f"{rope_type!r} RoPE changes its frequencies beyond {original} tokens; "
                f"keep cache.sink_tokens + cache.window_tokens (now {capacity}) at or below that"
            )
    inv_freq = rotary.inv_freq.detach().float().clone()
    rotary_dim = inv_freq.numel() * 2
    logger.debug("%s: %s RoPE over %d dims", family, rope_type, rotary_dim)
    return KeyRotation(inv_freq=inv_freq, rotary_dim=rotary_dim)
