"""Model resolution and loading: embedded default, GGUF conversion cache, clear offline errors."""

from __future__ import annotations

import pytest

from streamrag import models
from streamrag.config import ModelSettings
from streamrag.models import ModelLoadError, load_model, resolve


def test_nothing_means_the_embedded_gguf():
    resolved = resolve(ModelSettings())
    assert resolved.gguf_file.endswith(".gguf") and "SmolLM2" in resolved.gguf_file


def test_converted_gguf_is_reused_instead_of_dequantised_again(embedded, data_dir, monkeypatch):
    gguf = models.embedded_gguf()
    target = models.converted_gguf_dir(gguf, data_dir)
    assert (target / "model.safetensors").is_file()

    def must_not_convert(*args, **kwargs):
        raise AssertionError("the conversion cache was ignored")

    monkeypatch.setattr(models, "_convert_gguf", must_not_convert)
    model, tokenizer, _ = load_model(ModelSettings(device="cpu"), data_dir)
    assert model.config.model_type == "llama" and tokenizer.chat_template


def test_unavailable_hub_id_offline_says_how_to_use_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSettings(spec="no-such-org/no-such-model", device="cpu"), tmp_path)
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "local folder" in message


@pytest.mark.parametrize("spec", ["./missing/model", "/definitely/not/here", "a/b/c"])
def test_missing_local_paths_are_reported_as_paths(spec):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve(ModelSettings(spec=spec))


def test_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="holds no model"):
        resolve(ModelSettings(spec=str(tmp_path)))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        resolve(ModelSettings(spec=str(weights)))


def test_cuda_requested_without_a_gpu_fails_clearly(monkeypatch):
    monkeypatch.setattr(models.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        models.pick_device("cuda")
    assert models.pick_device("auto").type == "cpu"


def test_auto_dtype_is_fp32_on_cpu_and_explicit_dtypes_are_honoured():
    import torch

    assert models.pick_dtype("auto", torch.device("cpu")) is torch.float32
    assert models.pick_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
