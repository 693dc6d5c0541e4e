"""Weight-only int4/int8 quantisation: each layer against a brute-force fp32 matmul, the model against fp32."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from transformers import DynamicCache

from streamrag.bench.common import text_token_ids
from streamrag.config import ModelSettings
from streamrag.models import SOURCE_NOTE, converted_gguf_dir, embedded_gguf, pick_quantize, source_weight_bits
from streamrag.quantize import (
    GROUP_SIZE,
    Int4WeightLinear,
    Int8GroupedLinear,
    Int8WeightLinear,
    QuantizeError,
    check_supported,
    quantize_model,
)

CPU = torch.device("cpu")


def q4_1_grid_weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A weight as Q4_1 stores it: per 32-wide group, ``minimum + scale * q`` with q in 0..15 (both ends used)."""
    generator = torch.Generator().manual_seed(seed)
    groups = cols // GROUP_SIZE
    q = torch.randint(0, 16, (rows, groups, GROUP_SIZE), generator=generator)
    q[..., 0], q[..., 1] = 0, 15
    scale = torch.rand(rows, groups, 1, generator=generator) * 0.01 + 0.001
    low = -torch.rand(rows, groups, 1, generator=generator) * 0.08
    return (low + scale * q).reshape(rows, cols)


def bf16_tolerance(x: torch.Tensor, weight: torch.Tensor) -> float:
    """What bf16 activations may cost in a dot product: ~2^-8 relative to the sum of |x_i * w_i|."""
    return float((x.abs() @ weight.abs().t()).max()) * 2**-7


def test_int4_layer_reproduces_a_4bit_grid_weight_up_to_bf16_scales():
    weight = q4_1_grid_weight(64, 4 * GROUP_SIZE)
    layer = Int4WeightLinear(weight, None)
    restored = layer.dequantized()
    # Only the scales and offsets were rounded (to bf16): every value stays within 2^-8 of its group's range.
    assert (restored - weight).abs().max() < weight.abs().max() * 2**-7
    x = torch.randn(3, 4 * GROUP_SIZE)
    reference = x @ weight.t()
    assert (layer(x) - reference).abs().max() < bf16_tolerance(x, weight)


def test_int4_layer_on_an_arbitrary_weight_errs_by_at_most_half_a_step():
    weight = torch.randn(32, 2 * GROUP_SIZE)
    restored = Int4WeightLinear(weight, torch.zeros(32)).dequantized()
    groups = weight.reshape(32, -1, GROUP_SIZE)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    error = (restored - weight).abs().reshape(32, -1, GROUP_SIZE).amax(-1)
    # Half a step of rounding, plus bf16's 2^-8 on the group's largest value (scales, offsets and output are bf16).
    assert (error <= step * 0.5 + groups.abs().amax(-1) * 2**-7).all()
    assert error.mean() < step.mean() * 0.5


def test_int8_layer_matches_a_brute_force_matmul_of_its_weight():
    weight = torch.randn(48, 80)
    bias = torch.randn(48)
    layer = Int8WeightLinear(weight, bias)
    row_step = weight.abs().amax(1, keepdim=True) / 127
    # Half a step of rounding, plus the row scale's own bf16 rounding (2^-9 relative, times |q| <= 127).
    assert ((layer.dequantized() - weight).abs() <= row_step * 0.5 + weight.abs() * 2**-8).all()
    x = torch.randn(2, 5, 80)
    reference = x @ weight.t() + bias
    out = layer(x)
    assert out.shape == (2, 5, 48) and out.dtype == torch.float32
    assert (out - reference).abs().max() < bf16_tolerance(x.reshape(-1, 80), weight) + float(row_step.max()) * 80


def test_grouped_int8_reproduces_a_q8_0_weight_through_two_int4_planes():
    generator = torch.Generator().manual_seed(5)
    q = torch.randint(-127, 128, (32, 4, GROUP_SIZE), generator=generator).float()
    q[..., 0] = 127  # each group reaches its scale's end, as Q8_0 quantizes
    scale = (torch.rand(32, 4, 1, generator=generator) * 0.01 + 0.001).bfloat16().float()
    weight = (q * scale).reshape(32, 4 * GROUP_SIZE)  # a Q8_0 weight whose scales bf16 holds exactly
    layer = Int8GroupedLinear(weight, None)
    assert torch.equal(layer.dequantized(), weight)
    x = torch.randn(1, 4 * GROUP_SIZE)
    # The two planes' products are summed in fp32 from bf16 halves: the bf16 rounding of a dot product, no more.
    assert (layer(x) - x @ weight.t()).abs().max() < bf16_tolerance(x, weight) * 2


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 48), nn.Linear(40, 32))
        self.lm_head = nn.Linear(64, 16, bias=False)


class _OtherFamily(nn.Module):
    """A model whose output layer has another name (GPT-NeoX calls it embed_out): found through the HF getter."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(64, 32)
        self.embed_out = nn.Linear(32, 64, bias=False)

    def get_output_embeddings(self) -> nn.Module:
        return self.embed_out


def test_quantize_model_uses_int4_where_the_kernel_fits_and_int8_for_the_output_layer():
    toy = _Toy()
    report = quantize_model(toy, "int4")
    quantized = (Int4WeightLinear, Int8WeightLinear, Int8GroupedLinear)
    kinds = {name: type(module).__name__ for name, module in toy.named_modules() if isinstance(module, quantized)}
    assert kinds == {
        "block.0": "Int4WeightLinear",  # 64 inputs = two groups, 32 rows
        "block.2": "Int4WeightLinear",
        "block.3": "Int8WeightLinear",  # 40 inputs: not whole groups
        "lm_head": "Int8GroupedLinear",  # kept int8 on purpose
    }
    assert (report.int4_layers, report.int8_layers) == (2, 2)
    assert report.bytes_after * 2 < report.bytes_before
    assert not any(isinstance(m, nn.Linear) for m in toy.modules())
    other = _OtherFamily()
    quantize_model(other, "int4")
    assert isinstance(other.layer, Int4WeightLinear) and isinstance(other.embed_out, Int8GroupedLinear)


def test_modes_are_checked_before_any_weight_is_touched():
    with pytest.raises(QuantizeError, match="CPU kernels"):
        check_supported("int4", torch.device("cuda"))
    with pytest.raises(QuantizeError, match="unknown"):
        check_supported("int3", CPU)
    check_supported("auto", torch.device("cuda"))  # auto simply resolves to none there
    with pytest.raises(ValidationError, match="quantize"):
        ModelSettings(quantize="fp4")
    with pytest.raises(QuantizeError):
        quantize_model(_Toy(), "none")


def test_auto_quantizes_on_cpu_only_as_far_as_the_source_weights_already_were():
    assert pick_quantize("auto", CPU, 4) == "int4"
    assert pick_quantize("auto", CPU, 8) == "int8"
    assert pick_quantize("auto", CPU, 16) == "none"
    assert pick_quantize("auto", CPU, None) == "none"  # a safetensors checkpoint: the user decides
    assert pick_quantize("auto", torch.device("cuda"), 4) == "none"
    assert pick_quantize("int8", CPU, None) == "int8"


def test_the_embedded_gguf_is_recorded_as_4_bit_beside_its_converted_weights(embedded_int4, data_dir):
    gguf = embedded_gguf()
    converted = converted_gguf_dir(gguf, data_dir)
    assert (converted / SOURCE_NOTE).is_file()
    assert source_weight_bits(converted, gguf) == 4
    model, _ = embedded_int4
    assert isinstance(model.lm_head, Int8GroupedLinear)
    assert sum(isinstance(m, Int4WeightLinear) for m in model.modules()) == 7 * model.config.num_hidden_layers


def _perplexity(model, token_ids: list[int], chunk: int = 128) -> float:
    cache, nll = DynamicCache(), 0.0
    with torch.inference_mode():
        for start in range(0, len(token_ids) - 1, chunk):
            piece = token_ids[start : start + chunk]
            logits = model(input_ids=torch.tensor([piece]), past_key_values=cache, use_cache=True).logits[0].float()
            targets = torch.tensor(token_ids[start + 1 : start + 1 + len(piece)])
            logprobs = torch.log_softmax(logits[: len(targets)], dim=-1)
            nll -= float(logprobs[torch.arange(len(targets)), targets].sum())
    return math.exp(nll / (len(token_ids) - 1))


def test_the_quantized_default_stays_within_two_percent_of_fp32_perplexity(embedded, embedded_int4, one_thread):
    fp32_model, tokenizer = embedded
    int4_model, _ = embedded_int4
    tokens = text_token_ids(tokenizer, 768)
    fp32, int4 = _perplexity(fp32_model, tokens), _perplexity(int4_model, tokens)
    assert int4 / fp32 < 1.02, (fp32, int4)


def _quantized_engine(embedded_int4, data_dir, window_tokens: int):
    from streamrag.config import StreamRAGConfig
    from streamrag.engine import StreamingLM

    model, tokenizer = embedded_int4
    cache = {"sink_tokens": 4, "window_tokens": window_tokens, "evict_chunk": 16, "prefill_chunk": 24}
    return StreamingLM(model, tokenizer, StreamRAGConfig(data_dir=data_dir, cache=cache))


def test_a_quantized_engine_predicts_what_a_dense_forward_of_the_same_model_does(embedded_int4, data_dir):
    lm = _quantized_engine(embedded_int4, data_dir, window_tokens=1020)
    lm.chat("Name three colours of the rainbow.", temperature=0, max_new_tokens=24)
    lm.add_message("user", "And one more, please.", generation_prompt=True)
    assert lm.stats().evicted_tokens == 0
    model, _ = embedded_int4
    with torch.inference_mode():
        dense = model(input_ids=torch.tensor([lm.ledger.token_ids()])).logits[0, -1].float()
    # Chunked prefill and one-token steps round their bf16 activations differently from one dense pass:
    # the logits agree to bf16 noise (fp32 agrees to 1e-3, tests/test_engine.py), the prediction exactly.
    assert int(dense.argmax()) == int(lm._last_logits.argmax())
    assert (dense - lm._last_logits).abs().max() < 1.0


def test_a_quantized_engine_rotates_evicted_keys_to_their_cache_positions(embedded_int4, data_dir):
    lm = _quantized_engine(embedded_int4, data_dir, window_tokens=60)
    lm.add_message("user", " ".join(f"item{i} is number {i * 7}." for i in range(60)))
    lm.chat("And one more line to push things along.", temperature=0, max_new_tokens=20)
    assert lm.stats().evictions >= 3
    model, _ = embedded_int4
    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=torch.tensor([lm.ledger.token_ids()]), past_key_values=cache, use_cache=True)
    cached, fresh = lm.cache.layers[0].keys, cache.layers[0].keys
    assert cached.shape == fresh.shape
    # Layer 0's keys depend on the token and its position only: equal up to bf16 rounding of the projection.
    assert (cached - fresh).abs().max() < fresh.abs().max() * 2**-5


@pytest.mark.parametrize("kind", [Int4WeightLinear, Int8WeightLinear, Int8GroupedLinear])
def test_a_prefill_chunk_and_single_rows_multiply_by_the_same_weight(kind):
    from streamrag.quantize import PREFILL_ROWS

    weight = q4_1_grid_weight(48, 3 * GROUP_SIZE, seed=3)
    layer = kind(weight, None)
    x = torch.randn(PREFILL_ROWS + 5, 3 * GROUP_SIZE)
    chunk = layer(x)  # the prefill path: unpack to bf16, one matmul
    rows = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])  # the decode path: the weight-only kernel
    reference = x @ layer.dequantized().t()
    tolerance = bf16_tolerance(x, weight)
    assert (chunk - reference).abs().max() < tolerance
    assert (rows - reference).abs().max() < tolerance
