"""The sink cache's key re-rotation is exact, across model families and RoPE variants.

Every check here compares the sink cache with an independent reference: the same
model run from scratch, with a plain transformers ``DynamicCache``, over exactly
the tokens the sink cache kept (sinks + everything after the evicted gap), at
positions ``0..n-1``. Two facts make that reference exact:

* layer-0 keys depend only on (token, position), so after any number of
  evictions the sink cache's layer-0 keys must equal the fresh ones;
* in a one-layer model *every* cached key and value depends only on (token,
  position), so the sink cache's logits must equal the fresh forward's.

Models are tiny, built from configs with random weights (no downloads). The
initializer range is raised from 0.02 to 0.2 so attention is far from uniform:
with the default, a cache that forgot to rotate at all moved the logits by only
~3e-3 and a wrong attention scaling by less, too close to the tolerance to trust.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, DynamicCache

from streamrag.cache import SinkCache
from streamrag.rope import KeyRotation, UnsupportedModelError, find_rotary_embedding, key_rotation_for

SINK_TOKENS, WINDOW_TOKENS = 4, 28
CAPACITY = SINK_TOKENS + WINDOW_TOKENS
EVICT_CHUNK = 3
VOCAB = 128
# Prefill pieces and single decoded tokens, mixed, as the engine produces them: 114 tokens, 19 evictions
# of 3 to 12 tokens; the oldest keys still cached at the end have been rotated 6 times.
CHUNKS = [12, 9, 1, 1, 1, 7, 1, 3, 1, 1, 9, 1, 5, 2, 1, 1, 8, 1, 1, 4, 6, 12, 1, 1, 1, 10, 2, 1, 1, 1, 3, 1, 1, 1, 1, 1]
KEY_ATOL = 1e-5  # fp32; measured worst case 2.7e-6 over all families, on keys up to ~6
LOGIT_ATOL = 1e-4  # fp32; measured worst case 2.0e-5 over all families, on logits up to ~9

TINY = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=VOCAB,
    max_position_embeddings=256,
    initializer_range=0.2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
THETA = 10000.0

# id -> (model_type, config overrides). Every family of rope.ROTATE_HALF_FAMILIES is here, since
# key_rotation_for claims them; the llama rows cover the RoPE variants that change inv_freq or scale cos/sin.
ROPE_MODELS = {
    "llama": ("llama", {}),
    "llama-linear": ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": THETA, "factor": 2.0}}),
    # head_dim 16, theta 1e4, original 64: wavelengths fall in all three llama3 bands (kept, smoothed, scaled by 1/8).
    "llama-llama3": (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": THETA,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
    ),
    # yarn scales cos/sin by attention_scaling ~1.069: stored keys carry it once and must keep carrying it once.
    "llama-yarn": (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": THETA,
                "factor": 2.0,
                "original_max_position_embeddings": 128,
            }
        },
    ),
    # dynamic NTK is safe while the cache stays within the original length (here 32 <= 256).
    "llama-dynamic": ("llama", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": THETA, "factor": 2.0}}),
    "qwen2": ("qwen2", {}),
    "qwen2_moe": (
        "qwen2_moe",
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 64,
        },
    ),
    "qwen3": ("qwen3", {"head_dim": 16}),
    "qwen3_moe": (
        "qwen3_moe",
        {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    ),
    "mistral": ("mistral", {"sliding_window": None}),
    # A sliding window exactly as long as the cache never hides a cached key, so it is accepted and exact.
    "mistral-window-at-capacity": ("mistral", {"sliding_window": CAPACITY}),
    "mixtral": ("mixtral", {"sliding_window": None, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "phi3": ("phi3", {}),
    # longrope below its original length uses the short factors throughout; attention_scaling is ~1.18 here.
    "phi3-longrope": (
        "phi3",
        {
            "original_max_position_embeddings": 64,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": THETA,
                "short_factor": [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5],
                "long_factor": [4.0] * 8,
                "original_max_position_embeddings": 64,
            },
        },
    ),
    "gemma": ("gemma", {"head_dim": 16}),
    "phi-partial-rotary": ("phi", {"partial_rotary_factor": 0.5}),
    "stablelm-partial-rotary": ("stablelm", {"partial_rotary_factor": 0.25}),
    "gpt_neox-partial-rotary": ("gpt_neox", {"partial_rotary_factor": 0.25}),
    "olmo": ("olmo", {}),
    "olmo2": ("olmo2", {}),
    "granite": ("granite", {}),
    "granitemoe": ("granitemoe", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "starcoder2": ("starcoder2", {"sliding_window": None}),
}
ALIBI_MODELS = {
    "bloom": ("bloom", {}),
    "mpt": ("mpt", {"max_seq_len": 256}),
}


# Tiny matrices: one thread is faster than two, above all beside another busy process.
pytestmark = pytest.mark.usefixtures("one_thread_module")


def tiny_model(model_type: str, num_layers: int, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random-weight fp32 model of ``model_type``; the same arguments always give the same weights."""
    settings = {**TINY, "num_hidden_layers": num_layers, **copy.deepcopy(overrides)}
    config = CONFIG_MAPPING[model_type](**settings)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def random_tokens(count: int, seed: int = 1) -> list[int]:
    return torch.randint(3, VOCAB, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def fresh_forward(model, token_ids: list[int]):
    """The reference: ``token_ids`` from scratch at positions 0..n-1, with a plain DynamicCache."""
    cache = DynamicCache()
    out = model(input_ids=torch.tensor([token_ids]), past_key_values=cache, use_cache=True)
    return out.logits[0], cache


@torch.no_grad()
def stream_through_sink_cache(model, rotation, chunks=CHUNKS, evict_chunk=EVICT_CHUNK, after_forward=None):
    """Feed random tokens in ``chunks``, evicting between forwards as the engine does.

    Returns the cache and the token ids it holds, in order. ``after_forward(kept, logits)``
    sees the kept ids and the logits of each chunk right after its forward.
    """
    num_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    cache = SinkCache(num_layers, SINK_TOKENS, WINDOW_TOKENS, rotation)
    tokens = random_tokens(sum(chunks))
    kept: list[int] = []
    start = 0
    for size in chunks:
        chunk = tokens[start : start + size]
        start += size
        count = cache.room_needed(size, evict_chunk)
        cache.evict(count)
        kept = kept[:SINK_TOKENS] + kept[SINK_TOKENS + count :]
        out = model(input_ids=torch.tensor([chunk]), past_key_values=cache, use_cache=True)
        kept += chunk
        assert cache.get_seq_length() == len(kept) <= CAPACITY
        if after_forward is not None:
            after_forward(kept, out.logits[0])
    return cache, kept


def layer0_key_error(model, rotation, **stream) -> float:
    """Largest |sink-cache layer-0 key - fresh layer-0 key| after streaming; also checks evictions happened."""
    cache, kept = stream_through_sink_cache(model, rotation, **stream)
    assert cache.evictions >= 8, "the stream should evict repeatedly, or the rotation is barely exercised"
    _, fresh = fresh_forward(model, kept)
    assert cache.layers[0].keys.shape == fresh.layers[0].keys.shape
    return (cache.layers[0].keys.float() - fresh.layers[0].keys.float()).abs().max().item()


def logits_error(model, rotation) -> float:
    """Largest |sink-cache logits - fresh logits| over every chunk of the stream (one-layer models)."""
    worst = 0.0

    def compare(kept, logits):
        nonlocal worst
        expected, _ = fresh_forward(model, kept)
        worst = max(worst, (logits - expected[-logits.shape[0] :]).abs().max().item())

    cache, _ = stream_through_sink_cache(model, rotation, after_forward=compare)
    assert cache.evictions >= 8
    return worst


# -- RoPE families: exact re-rotation ------------------------------------------------


@pytest.mark.parametrize("name", list(ROPE_MODELS))
def test_layer0_keys_after_repeated_evictions_equal_a_fresh_forward_over_the_kept_tokens(name):
    model_type, overrides = ROPE_MODELS[name]
    model = tiny_model(model_type, num_layers=2, **overrides)
    rotation = key_rotation_for(model, CAPACITY)
    assert rotation is not None

    assert layer0_key_error(model, rotation) <= KEY_ATOL


@pytest.mark.parametrize("name", list(ROPE_MODELS))
def test_one_layer_logits_after_evictions_equal_a_fresh_forward_over_the_kept_tokens(name):
    model_type, overrides = ROPE_MODELS[name]
    model = tiny_model(model_type, num_layers=1, **overrides)

    assert logits_error(model, key_rotation_for(model, CAPACITY)) <= LOGIT_ATOL


def test_partial_rotary_rotation_covers_only_the_rotary_dims():
    model = tiny_model("phi", num_layers=1, partial_rotary_factor=0.5)
    rotation = key_rotation_for(model, CAPACITY)
    head_dim = TINY["hidden_size"] // TINY["num_attention_heads"]
    assert rotation.rotary_dim == head_dim // 2
    keys = torch.randn(1, 2, 5, head_dim)
    moved = rotation.shift(keys, -7)
    assert torch.equal(moved[..., rotation.rotary_dim :], keys[..., rotation.rotary_dim :])
    assert not torch.allclose(moved[..., : rotation.rotary_dim], keys[..., : rotation.rotary_dim])


# -- the checks above can fail --------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "phi-partial-rotary"])
def test_equivalence_checks_catch_keys_left_unrotated(name):
    model_type, overrides = ROPE_MODELS[name]
    one_layer = tiny_model(model_type, num_layers=1, **overrides)
    two_layers = tiny_model(model_type, num_layers=2, **overrides)

    assert layer0_key_error(two_layers, None) > 1000 * KEY_ATOL
    assert logits_error(one_layer, None) > 1000 * LOGIT_ATOL


class _RotationThatRescales(KeyRotation):
    """The tempting mistake: shift with the rotary module's cos/sin, which carry attention_scaling."""

    scaling: float = 1.0

    def shift(self, keys, delta):
        return super().shift(keys, delta) * self.scaling


@pytest.mark.parametrize("name", ["llama-yarn", "phi3-longrope"])
def test_equivalence_checks_catch_attention_scaling_applied_on_every_shift(name):
    model_type, overrides = ROPE_MODELS[name]
    one_layer = tiny_model(model_type, num_layers=1, **overrides)
    two_layers = tiny_model(model_type, num_layers=2, **overrides)
    scaling = find_rotary_embedding(one_layer).attention_scaling
    assert scaling > 1.05, "the variant must scale cos/sin, or this guard proves nothing"
    right = key_rotation_for(one_layer, CAPACITY)
    wrong = _RotationThatRescales(inv_freq=right.inv_freq, rotary_dim=right.rotary_dim)
    wrong.scaling = scaling

    assert layer0_key_error(two_layers, wrong) > 1000 * KEY_ATOL
    assert logits_error(one_layer, wrong) > 10 * LOGIT_ATOL


# -- ALiBi: relative by construction ---------------------------------------------------


@pytest.mark.parametrize("name", list(ALIBI_MODELS))
def test_alibi_one_layer_logits_after_evictions_equal_a_fresh_forward_without_rotation(name):
    model_type, overrides = ALIBI_MODELS[name]
    model = tiny_model(model_type, num_layers=1, **overrides)
    assert key_rotation_for(model, CAPACITY) is None

    assert logits_error(model, None) <= LOGIT_ATOL


# -- refusals ---------------------------------------------------------------------------


def test_refuses_models_mixing_sliding_and_full_attention_layers():
    model = tiny_model("gemma2", num_layers=2, head_dim=16)
    assert set(model.config.layer_types) == {"sliding_attention", "full_attention"}
    with pytest.raises(UnsupportedModelError, match=r"mixes attention layer types.*sliding_attention"):
        key_rotation_for(model, CAPACITY)


def test_refuses_a_sliding_window_shorter_than_the_cache_and_names_the_limit():
    model = tiny_model("mistral", num_layers=1, sliding_window=CAPACITY - 1)
    with pytest.raises(UnsupportedModelError, match=rf"sliding-window attention of {CAPACITY - 1} tokens") as refusal:
        key_rotation_for(model, CAPACITY)
    assert "sink_tokens + cache.window_tokens" in str(refusal.value)
    assert key_rotation_for(model, CAPACITY - 1) is not None


def test_refuses_absolute_learned_positions():
    model = tiny_model("gpt2", num_layers=1)
    with pytest.raises(UnsupportedModelError, match=r"'gpt2' is not supported.*RoPE.*ALiBi"):
        key_rotation_for(model, CAPACITY)


def test_refuses_dynamic_rope_beyond_its_original_length():
    model = tiny_model(
        "llama",
        num_layers=1,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "dynamic", "rope_theta": THETA, "factor": 2.0},
    )
    with pytest.raises(UnsupportedModelError, match=r"'dynamic' RoPE changes its frequencies beyond 64 tokens"):
        key_rotation_for(model, 65)
    assert key_rotation_for(model, 64) is not None


# longrope switches to its long factors once a position passes `original_max_position_embeddings`. Phi3 keeps
# that number as a config attribute too (and it wins over rope_parameters); other families (llama here) keep it
# only in rope_parameters, which is where transformers' longrope update reads it.
@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [("phi3", {"original_max_position_embeddings": 64}), ("llama", {})],
    ids=["phi3", "llama"],
)
def test_refuses_longrope_beyond_its_original_length(model_type, overrides):
    longrope = ROPE_MODELS["phi3-longrope"][1]["rope_parameters"]
    model = tiny_model(model_type, num_layers=1, rope_parameters=longrope, **overrides)
    assert model.config.rope_parameters["original_max_position_embeddings"] == 64
    with pytest.raises(UnsupportedModelError, match=r"'longrope' RoPE changes its frequencies beyond 64 tokens"):
        key_rotation_for(model, 65)
    assert key_rotation_for(model, 64) is not None


# -- bf16 ---------------------------------------------------------------------------------


def test_bf16_keys_after_ten_single_token_evictions_stay_within_a_few_ulps_of_a_fresh_bf16_forward():
    # Decoding one token at a time with evict_chunk=1 after a full prefill: the oldest kept keys have been
    # rotated 10 times, each time rounded back to bf16 once. Measured here (keys up to ~5.5, one bf16 ulp
    # 2**-5 = 0.031 there), max |sink - fresh bf16| over layer-0 keys, for weight seeds 0 / 1 / 2:
    #   after  1 shift:   0.031 / 0.031 / 0.031   (1 ulp)
    #   after 10 shifts:  0.125 / 0.125 / 0.0625  (2-4 ulps)
    #   after 27 shifts:  0.125 / 0.125 / 0.141
    # A fresh bf16 forward is itself 0.02-0.04 from fp32. The error grows with the number of shifts, not the
    # distance moved: on mid/low frequencies one shift turns a key by about an ulp, and each rounding keeps a
    # bias. With evict_chunk=4 over the same 27 tokens (7 shifts) it stays at the fresh bf16 level (0.04 from fp32).
    # Rotating in bf16 instead of fp32 gives the same after 10 shifts but 0.19-0.25 after 27.
    model = tiny_model("llama", num_layers=2).to(torch.bfloat16)
    rotation = key_rotation_for(model, CAPACITY)  # after the cast, as the engine does: inv_freq is bf16 now
    cache, kept = stream_through_sink_cache(model, rotation, chunks=[16, 16] + [1] * 10, evict_chunk=1)
    assert cache.evictions == 10
    _, fresh = fresh_forward(model, kept)
    expected = fresh.layers[0].keys.float()
    ulp = 2.0 ** (math.floor(math.log2(expected.abs().max().item())) - 7)  # bf16 keeps 8 significant bits

    assert (cache.layers[0].keys.float() - expected).abs().max().item() <= 6 * ulp
