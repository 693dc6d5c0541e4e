"""Weight-only quantisation of a model's linear layers, for fast decoding on CPU.

Decoding one token reads every weight once, so on a CPU its speed is set by
how many bytes the weights take: fp32 SmolLM2-135M reads ~540 MB per token,
the 4-bit GGUF llama.cpp runs reads ~85 MB. This module swaps each
``nn.Linear`` for one that keeps its weight as int4 (32-wide groups, a scale
and an offset each) or int8 (one scale per output row) and multiplies with
PyTorch's own CPU kernels (``aten._weight_int4pack_mm_for_cpu``,
``aten._weight_int8pack_mm``), which take bf16 activations. Everything else
(embeddings, norms, attention, the KV cache) stays in the model's dtype.

Why these kernels and not torchao's tensor subclasses: on this path they are
the same kernels, but a subclass dispatches every call through Python
(measured: int8 weight-only through torchao decoded 2x *slower* than fp32
eager), while a module calls the op directly.

Quality: the embedded model comes from a Q4_1 GGUF, whose weights already sit
on a 4-bit grid of 32-wide groups with a scale and a minimum each: exactly
what the int4 layout stores, so re-packing them is nearly lossless (the
scales become bf16). Its output layer (tied to the Q8_0 embedding) stays
int8 with Q8_0's scale per 32 inputs (:class:`Int8GroupedLinear`): int4
there cost 4.8% perplexity; the whole model costs +0.27%. ``streamrag bench decode`` measures
both speed and perplexity against fp32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

GROUP_SIZE = 32
"""Int4 group width: GGUF's block size, so a Q4_1/Q4_K weight maps onto the int4 grid one to one."""

QUANTIZE_MODES = ("auto", "none", "int8", "int4")

PREFILL_ROWS = 64
"""From this many rows at once (a prefill chunk), a layer dequantises its weight to bf16 and runs one bf16
matmul: the weight-only kernels are built for decoding's single row, and at 512 rows they ran at fp32's speed
(10.9 ms for a 1536x576 int4 weight, one thread) while unpacking plus bf16 took 4.9 ms."""


class QuantizeError(ValueError):
    """The requested quantisation cannot run here (wrong device, no kernel); the message says what to use."""


class _WeightOnlyLinear(nn.Module):
    """What every quantized layer does around its own kernel: bf16 activations in, the model's dtype out.

    Subclasses give ``_rows`` (few rows: the weight-only kernel) and
    ``unpacked`` (the weight in bf16, for a prefill chunk's one matmul).
    """

    in_features: int
    out_features: int
    bias: nn.Parameter | None

    def _keep_bias(self, bias: torch.Tensor | None) -> None:
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if flat.shape[0] >= PREFILL_ROWS:
            out = torch.nn.functional.linear(flat, self.unpacked())
        else:
            out = self._rows(flat)
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def _rows(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unpacked(self) -> torch.Tensor:
        raise NotImplementedError


class Int8WeightLinear(_WeightOnlyLinear):
    """A linear layer with an int8 weight and one scale per output row (symmetric)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        weight = weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("qweight", (weight / scales[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self._keep_bias(bias)

    def _rows(self, flat: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(flat, self.qweight, self.scales)

    def unpacked(self) -> torch.Tensor:
        """The weight in bf16: ``q * scale`` per row."""
        return self.qweight.to(torch.bfloat16) * self.scales[:, None]

    def dequantized(self) -> torch.Tensor:
        """The weight this layer multiplies by, in fp32 (for tests and error measurement)."""
        return self.qweight.float() * self.scales.float()[:, None]


class Int4WeightLinear(_WeightOnlyLinear):
    """A linear layer with an int4 weight in groups of :data:`GROUP_SIZE` inputs, each with a scale and offset.

    A group's values are ``minimum + scale * q`` for ``q`` in 0..15 (GGUF's
    Q4_1 scheme), stored the way the CPU kernel wants: packed nibbles, and per
    group ``(scale, minimum + 8 * scale)`` because the kernel computes
    ``(q - 8) * scale + offset``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        weight = weight.detach().float()
        rows, cols = weight.shape
        groups = weight.reshape(rows, cols // GROUP_SIZE, GROUP_SIZE)
        low = groups.amin(dim=-1, keepdim=True)
        scale = ((groups.amax(dim=-1, keepdim=True) - low) / 15).clamp(min=1e-10)
        q = ((groups - low) / scale).round().clamp(0, 15).reshape(rows, cols).to(torch.int32)
        self.in_features, self.out_features = cols, rows
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q, 1))
        # The same nibbles in a plain layout (two per byte), for the prefill path: the kernel's packing is opaque.
        self.register_buffer("nibbles", (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8))
        offset = low + 8 * scale
        # [groups, rows, 2]: the kernel's layout for per-group scale and offset.
        pairs = torch.stack((scale.squeeze(-1).t(), offset.squeeze(-1).t()), dim=-1).contiguous()
        self.register_buffer("scales_and_offsets", pairs.to(torch.bfloat16))
        # The prefill path's per-group scale and minimum, [rows, groups, 1], from the same rounded values.
        bf16_scale = self.scales_and_offsets[..., 0].t().unsqueeze(-1).contiguous()
        bf16_low = (self.scales_and_offsets[..., 1].t().unsqueeze(-1).float() - 8 * bf16_scale.float()).bfloat16()
        self.register_buffer("group_scale", bf16_scale)
        self.register_buffer("group_low", bf16_low)
        self._keep_bias(bias)

    def _rows(self, flat: torch.Tensor) -> torch.Tensor:
        return torch._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP_SIZE, self.scales_and_offsets)

    def unpacked(self) -> torch.Tensor:
        """The weight in bf16, ``q * scale + minimum`` per group (the kernel's values, up to bf16 rounding)."""
        rows, cols = self.out_features, self.in_features
        q = torch.empty(rows, cols // 2, 2, dtype=torch.uint8)
        torch.bitwise_and(self.nibbles, 15, out=q[..., 0])  # written in place: a stack() took twice as long
        torch.bitwise_right_shift(self.nibbles, 4, out=q[..., 1])
        grouped = q.view(rows, cols // GROUP_SIZE, GROUP_SIZE).to(torch.bfloat16)
        return (grouped * self.group_scale + self.group_low).reshape(rows, cols)

    def dequantized(self) -> torch.Tensor:
        """The weight this layer multiplies by in decoding, in fp32: the kernel applied to the identity."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return torch._weight_int4pack_mm_for_cpu(eye, self.packed, GROUP_SIZE, self.scales_and_offsets).float().t()


class Int8GroupedLinear(_WeightOnlyLinear):
    """An int8 weight with one scale per :data:`GROUP_SIZE` inputs (GGUF's Q8_0), multiplied as two int4 planes.

    For the output layer in int4 mode: int4 there cost 4.8% perplexity, and
    the int8 kernel (one scale per row, 5 GB/s on the 49,152 x 576 output of
    SmolLM2) was the slowest matmul of a token. Writing ``q + 128`` as
    ``16 * high + low`` splits the weight into two 4-bit planes the int4
    kernel multiplies exactly: ``(high - 8) * 16d`` and ``(low - 8) * d + 8d``
    sum to ``d * q``. Two int4 passes took 3.2 ms against 4.3 ms for the int8
    kernel, and a Q8_0 weight keeps its own per-group scales.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        weight = weight.detach().float()
        rows, cols = weight.shape
        groups = weight.reshape(rows, cols // GROUP_SIZE, GROUP_SIZE)
        scale = (groups.abs().amax(dim=-1, keepdim=True) / 127).clamp(min=1e-12).to(torch.bfloat16).float()
        shifted = ((groups / scale).round().clamp(-127, 127) + 128).reshape(rows, cols).to(torch.int32)
        self.in_features, self.out_features = cols, rows
        self.register_buffer("shifted", shifted.to(torch.uint8))  # q + 128, for the prefill path
        self.register_buffer("high", torch._convert_weight_to_int4pack_for_cpu(shifted >> 4, 1))
        self.register_buffer("low", torch._convert_weight_to_int4pack_for_cpu(shifted & 15, 1))
        per_group = scale.squeeze(-1).t()  # [groups, rows]
        self.register_buffer("high_scales", torch.stack((16 * per_group, torch.zeros_like(per_group)), -1).bfloat16())
        self.register_buffer("low_scales", torch.stack((per_group, 8 * per_group), -1).bfloat16())
        self.register_buffer("group_scale", scale.to(torch.bfloat16))
        self._keep_bias(bias)

    def _rows(self, flat: torch.Tensor) -> torch.Tensor:
        high = torch._weight_int4pack_mm_for_cpu(flat, self.high, GROUP_SIZE, self.high_scales)
        return high.float() + torch._weight_int4pack_mm_for_cpu(flat, self.low, GROUP_SIZE, self.low_scales)

    def unpacked(self) -> torch.Tensor:
        """The weight in bf16: ``(shifted - 128) * scale`` per group."""
        rows, cols = self.out_features, self.in_features
        q = self.shifted.view(rows, cols // GROUP_SIZE, GROUP_SIZE).to(torch.bfloat16) - 128
        return (q * self.group_scale).reshape(rows, cols)

    def dequantized(self) -> torch.Tensor:
        """The weight this layer multiplies by, in fp32 (exact: q and its group's bf16 scale)."""
        rows, cols = self.out_features, self.in_features
        q = self.shifted.view(rows, cols // GROUP_SIZE, GROUP_SIZE).float() - 128
        return (q * self.group_scale.float()).reshape(rows, cols)


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_model` did: layers per kind and weight bytes before and after."""

    mode: str
    int4_layers: int
    int8_layers: int
    bytes_before: int
    bytes_after: int


def fits_int4(layer: nn.Linear) -> bool:
    """Whether the int4 kernel takes this layer's shape (whole groups; rows in packs of 16)."""
    return layer.in_features % GROUP_SIZE == 0 and layer.out_features % 16 == 0


def check_supported(mode: str, device: torch.device) -> None:
    """Refuse a mode this device and PyTorch build cannot run, before any weight is touched."""
    if mode not in QUANTIZE_MODES:
        raise QuantizeError(f"unknown model.quantize {mode!r}; use one of {', '.join(QUANTIZE_MODES)}")
    if mode in ("none", "auto"):
        return
    if device.type != "cpu":
        raise QuantizeError(
            f"model.quantize={mode} uses PyTorch's CPU kernels; on {device.type} run bf16 (model.dtype) "
            "with model.quantize=none"
        )
    op = "_weight_int4pack_mm_for_cpu" if mode == "int4" else "_weight_int8pack_mm"
    if not hasattr(torch.ops.aten, op):
        raise QuantizeError(f"this PyTorch ({torch.__version__}) has no aten.{op}; use model.quantize=none")


def quantize_model(model: nn.Module, mode: str, keep_int8: tuple[str, ...] = ("lm_head",)) -> QuantizeReport:
    """Swap the model's linear layers for weight-only int4 or int8 ones, in place.

    In int4 mode the output layer (the model's ``get_output_embeddings()``,
    whatever a family calls it, and any layer named in ``keep_int8``: its
    logits are what sampling reads, and int4 there cost 4.8% perplexity) and
    layers the int4 kernel cannot take become int8 instead.
    """
    getter = getattr(model, "get_output_embeddings", None)
    output_layer = getter() if callable(getter) else None
    if mode not in ("int4", "int8"):
        raise QuantizeError(f"quantize_model needs 'int4' or 'int8', not {mode!r}")
    int4 = int8 = before = after = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            before += child.weight.numel() * child.weight.element_size()
            keep = child is output_layer or name in keep_int8
            if mode == "int4" and not keep and fits_int4(child):
                replacement: nn.Module = Int4WeightLinear(child.weight, child.bias)
                int4 += 1
                after += replacement.packed.numel() * 2 + replacement.scales_and_offsets.numel() * 4
            elif mode == "int4" and fits_int4(child):
                replacement = Int8GroupedLinear(child.weight, child.bias)
                int8 += 1
                after += replacement.shifted.numel() * 2 + replacement.low_scales.numel() * 4
            else:
                replacement = Int8WeightLinear(child.weight, child.bias)
                int8 += 1
                after += replacement.qweight.numel() + replacement.scales.numel() * 2
            setattr(parent, name, replacement)
    report = QuantizeReport(mode, int4, int8, before, after)
    logger.info(
        "quantized %d linear layers to int4 and %d to int8: %.0f MB -> %.0f MB of weights",
        int4,
        int8,
        before / 2**20,
        after / 2**20,
    )
    return report
