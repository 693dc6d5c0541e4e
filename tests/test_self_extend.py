"""Self-Extend position mode: exact where it must reduce to shift mode, and equal to a plain reference otherwise.

* ``group_size=1`` makes the grouped positions the exact ones, and a
  ``neighbor_window`` covering the whole cache never uses them: either way the
  logits must equal shift mode's (prefill, decode, after evictions).
* The attention function itself is checked against a per-query loop that
  starts from *unrotated* queries and keys and applies RoPE at the paper's
  positions explicitly: an independent route to the same numbers.
* The mode switch must not leak into other users of the shared model.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from streamrag.cache import SinkCache
from streamrag.config import ConfigError, StreamRAGConfig
from streamrag.engine import StreamingLM
from streamrag.rope import KeyRotation, UnsupportedModelError, key_rotation_for, rotate_half
from streamrag.self_extend import SelfExtend, SelfExtendError, applied, bi_level_attention, reach, self_extend_for
from tests.test_rope_families import random_tokens, tiny_model

LOGIT_ATOL = 1e-4  # fp32; measured ~6e-5 on the embedded model
TEXT = (
    "Streaming language models keep the first tokens as attention sinks and a rolling window of recent ones. "
    "Self-Extend groups distant positions so a model trained on short texts can read longer ones. "
) * 8


# Tiny matrices: one thread is faster than two, above all beside another busy process.
pytestmark = pytest.mark.usefixtures("one_thread_module")


def token_ids(tokenizer, count: int) -> list[int]:
    ids = tokenizer(TEXT).input_ids
    assert len(ids) >= count
    return ids[:count]


def stream_logits(lm: StreamingLM, ids: list[int], chunks: list[int]) -> list[torch.Tensor]:
    """Feed ``ids`` through ``lm`` in pieces of ``chunks`` (the last ones single tokens, like decoding)."""
    out, start = [], 0
    for size in chunks:
        out.append(lm.feed_for_scoring(ids[start : start + size]))
        start += size
    return out


# -- reduces to shift mode ------------------------------------------------------------


@pytest.mark.parametrize(
    "group_size, neighbor_window",
    [(1, 8), (4, 64)],
    ids=["group-size-1", "neighbor-window-covers-cache"],
)
def test_self_extend_logits_equal_shift_mode_when_nothing_is_grouped(make_lm, embedded, group_size, neighbor_window):
    _, tokenizer = embedded
    ids = token_ids(tokenizer, 100)
    chunks = [40, 30, 20, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]  # prefill with evictions, then one-token decode steps
    shift = make_lm(sink_tokens=4, window_tokens=60, evict_chunk=8)
    extended = StreamingLM(
        shift.model,
        tokenizer,
        _with_cache(
            shift.config,
            position_mode="self_extend",
            group_size=group_size,
            neighbor_window=neighbor_window,
        ),
    )
    expected = stream_logits(shift, ids, chunks)
    got = stream_logits(extended, ids, chunks)

    assert extended.cache.evictions >= 3 and extended.cache.get_seq_length() <= 64
    for a, b in zip(expected, got, strict=True):
        assert (a - b).abs().max().item() < LOGIT_ATOL


def test_self_extend_with_groups_changes_the_logits_once_keys_leave_the_neighbor_window(make_lm, embedded):
    _, tokenizer = embedded
    ids = token_ids(tokenizer, 60)
    shift = make_lm(sink_tokens=4, window_tokens=60)
    extended = StreamingLM(
        shift.model, tokenizer, _with_cache(shift.config, position_mode="self_extend", group_size=4, neighbor_window=16)
    )
    a, b = shift.feed_for_scoring(ids), extended.feed_for_scoring(ids)

    # Queries closer than neighbor_window to every key see exact positions; later ones do not.
    assert (a[:16] - b[:16]).abs().max().item() < LOGIT_ATOL
    assert (a[30:] - b[30:]).abs().max().item() > 1e-2
    assert torch.isfinite(b).all()


# -- the attention function against an independent per-query loop ---------------------


def _rope(x: torch.Tensor, position: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """HF rotate-half RoPE of one vector (``[head_dim]``) at ``position``, written out directly."""
    angles = position * inv_freq.double()
    cos, sin = torch.cat((angles, angles)).cos(), torch.cat((angles, angles)).sin()
    return (x.double() * cos + rotate_half(x.double()) * sin).float()


def _reference(q0, k0, v, inv_freq, scaling, group, window, past):
    """Self-Extend attention for queries at ``past + i`` over keys ``0..n-1``, one query and head at a time."""
    _, heads, queries, dim = q0.shape
    kv_heads = k0.shape[1]
    out = torch.zeros(1, queries, heads, dim)
    for h in range(heads):
        kv = h // (heads // kv_heads)
        for i in range(queries):
            p = past + i
            scores = []
            for j in range(p + 1):
                if p - j < window:
                    qp, kp = p, j
                else:
                    qp, kp = p // group + window - window // group, j // group
                scores.append(scaling * torch.dot(_rope(q0[0, h, i], qp, inv_freq), _rope(k0[0, kv, j], kp, inv_freq)))
            weights = torch.softmax(torch.stack(scores), dim=0)
            out[0, i, h] = weights @ v[0, kv, : p + 1]
    return out


@pytest.mark.parametrize("queries", [7, 1], ids=["prefill", "decode"])
def test_bi_level_attention_matches_a_per_query_reference_with_explicit_positions(queries):
    torch.manual_seed(0)
    heads, kv_heads, dim, keys, group, window = 4, 2, 8, 29, 3, 5
    inv_freq = 1.0 / (100.0 ** (torch.arange(0, dim, 2).float() / dim))
    q0, k0 = torch.randn(1, heads, queries, dim), torch.randn(1, kv_heads, keys, dim)
    v = torch.randn(1, kv_heads, keys, dim)
    past = keys - queries
    # What the model hands over: RoPE already applied at the exact positions.
    q = torch.stack([_rope(q0[0, h, i], past + i, inv_freq) for h in range(heads) for i in range(queries)])
    q = q.view(1, heads, queries, dim)
    k = torch.stack([_rope(k0[0, h, j], j, inv_freq) for h in range(kv_heads) for j in range(keys)])
    k = k.view(1, kv_heads, keys, dim)
    scaling = dim**-0.5
    rotation = KeyRotation(inv_freq=inv_freq, rotary_dim=dim)

    got = bi_level_attention(
        q,
        k,
        v,
        scaling=scaling,
        query_positions=torch.arange(past, keys),
        group_size=group,
        neighbor_window=window,
        rotation=rotation,
        query_block=3,  # several blocks, so the block bounds are exercised too
    )
    expected = _reference(q0, k0, v, inv_freq, scaling, group, window, past)

    assert got.shape == (1, queries, heads, dim)
    assert (got - expected).abs().max().item() < 1e-5


def test_grouped_distances_stay_inside_the_trained_length_up_to_the_reach():
    trained, group, window = 64, 4, 16
    extended = reach(trained, group, window)
    p = extended - 1  # the last query of a full extended window, and the first key
    assert (p // group + window - window // group) - 0 < trained
    assert extended == (trained - window) * group + window


# -- the engine: validation, eviction, no leak -------------------------------------------


def _with_cache(config: StreamRAGConfig, **cache) -> StreamRAGConfig:
    data = config.model_dump()
    data["cache"].update(cache)
    return StreamRAGConfig.from_dict(data)


def test_a_window_beyond_the_reach_fails_at_load_naming_the_fix(embedded, data_dir):
    model, tokenizer = embedded  # SmolLM2-135M: trained on 8192 positions
    config = StreamRAGConfig(
        data_dir=data_dir,
        cache={"window_tokens": 30000, "position_mode": "self_extend", "group_size": 4, "neighbor_window": 1024},
    )
    with pytest.raises(SelfExtendError) as error:
        StreamingLM(model, tokenizer, config)
    message = str(error.value)
    assert "29696" in message and "cache.group_size" in message and "cache.window_tokens" in message

    wide = _with_cache(config, neighbor_window=8192, window_tokens=8000)
    with pytest.raises(SelfExtendError, match="cache.neighbor_window"):
        StreamingLM(model, tokenizer, wide)


def test_a_window_past_the_trained_length_is_accepted_in_self_extend_mode(embedded, data_dir, caplog):
    model, tokenizer = embedded
    config = StreamRAGConfig(
        data_dir=data_dir,
        cache={"window_tokens": 16380, "position_mode": "self_extend", "group_size": 4, "neighbor_window": 2048},
    )
    with caplog.at_level(logging.WARNING):
        lm = StreamingLM(model, tokenizer, config)
    assert lm.self_extend is not None and lm.cache.capacity == 16384
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        StreamingLM(model, tokenizer, _with_cache(config, group_size=100, neighbor_window=100))
    assert "rule of thumb" in caplog.text


def test_position_mode_is_validated_by_the_config():
    with pytest.raises(ConfigError, match="cache.position_mode"):
        StreamRAGConfig.from_dict({"cache": {"position_mode": "grouped"}})
    with pytest.raises(ConfigError, match="cache.group_size"):
        StreamRAGConfig.from_dict({"cache": {"group_size": 0}})


def test_self_extend_cache_never_exceeds_its_capacity_while_generating(make_lm, embedded):
    _, tokenizer = embedded
    base = make_lm(sink_tokens=4, window_tokens=60, evict_chunk=8, max_new_tokens=40, ignore_eos=True)
    lm = StreamingLM(
        base.model, tokenizer, _with_cache(base.config, position_mode="self_extend", group_size=2, neighbor_window=16)
    )
    lengths = []
    lm.add_message("user", "Tell me a long story about the sea and the wind and the ships.")
    reply = lm.stream_reply()
    for _ in reply:
        lengths.append(lm.cache.get_seq_length())

    assert lm.cache.evictions >= 2
    assert max(lengths) <= lm.cache.capacity == 64
    assert reply.stats.generated_tokens == 40


def test_the_mode_switch_does_not_leak_into_other_users_of_the_model(make_lm, embedded):
    model, tokenizer = embedded
    before = model.config._attn_implementation
    base = make_lm()
    lm = StreamingLM(model, tokenizer, _with_cache(base.config, position_mode="self_extend", neighbor_window=16))
    lm.feed_for_scoring(token_ids(tokenizer, 20))
    assert model.config._attn_implementation == before

    class Boom(RuntimeError):
        pass

    def explode(module, args):
        raise Boom

    handle = model.model.layers[0].register_forward_pre_hook(explode)
    try:
        with pytest.raises(Boom):
            lm.feed_for_scoring(token_ids(tokenizer, 5))
    finally:
        handle.remove()
    assert model.config._attn_implementation == before


# -- model families ---------------------------------------------------------------------

FAMILIES = {"llama": {}, "qwen2": {}, "mistral": {"sliding_window": None}}


@torch.no_grad()
def _stream(model, settings: SelfExtend | None, chunks: list[int], sinks=4, window=60, evict_chunk=6):
    rotation = key_rotation_for(model, sinks + window)
    cache = SinkCache(model.config.num_hidden_layers, sinks, window, rotation)
    tokens = random_tokens(sum(chunks))
    logits, start = [], 0
    for size in chunks:
        cache.evict(cache.room_needed(size, evict_chunk))
        ids = torch.tensor([tokens[start : start + size]])
        start += size
        if settings is None:
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        else:
            with applied(model, settings):
                out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        assert cache.get_seq_length() <= sinks + window
        logits.append(out.logits[0])
    assert cache.evictions >= 3
    return logits


@pytest.mark.parametrize("family", list(FAMILIES))
def test_self_extend_runs_on_each_family_and_reduces_to_shift_with_group_size_one(family):
    chunks = [20, 17, 9, 11, 1, 1, 1, 1, 13, 1, 1, 1, 10, 8, 1]
    # Same seed, same weights; only the trained length differs (RoPE models have no position table).
    in_range = tiny_model(family, num_layers=2, max_position_embeddings=64, **FAMILIES[family])
    shift = _stream(in_range, None, chunks)
    same = _stream(in_range, self_extend_for(in_range, key_rotation_for(in_range, 64), 64, 1, 4), chunks)
    # Trained on 32 positions, a 64-token cache: only Self-Extend may serve it ((32 - 8) * 4 + 8 = 104).
    short = tiny_model(family, num_layers=2, max_position_embeddings=32, **FAMILIES[family])
    grouped = _stream(short, self_extend_for(short, key_rotation_for(short, 64), 64, 4, 8), chunks)

    assert short.config._attn_implementation != "streamrag_self_extend"
    assert max((a - b).abs().max().item() for a, b in zip(shift, same, strict=True)) < LOGIT_ATOL
    assert all(torch.isfinite(g).all() for g in grouped)
    assert max((a - b).abs().max().item() for a, b in zip(shift, grouped, strict=True)) > 1e-3


def test_self_extend_refuses_rope_that_depends_on_the_sequence_length():
    model = tiny_model(
        "llama", num_layers=1, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    )
    with pytest.raises(UnsupportedModelError, match="shift"):
        self_extend_for(model, key_rotation_for(model, 64), 64, group_size=2, neighbor_window=16)
    assert math.isfinite(reach(256, 2, 16))
