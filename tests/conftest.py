"""Shared fixtures: the embedded model is loaded once per test session.

Everything a test writes goes under pytest's temporary directories: the
GGUF-to-safetensors conversion of the embedded model included.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

from streamrag.config import ModelSettings, StreamRAGConfig  # noqa: E402
from streamrag.engine import StreamingLM  # noqa: E402
from streamrag.models import load_model  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> os.PathLike:
    """One data directory for the whole session, so the embedded model is converted once."""
    return tmp_path_factory.mktemp("streamrag-data")


@pytest.fixture(scope="session")
def embedded(data_dir):
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct in fp32 on CPU."""
    model, tokenizer, _ = load_model(ModelSettings(device="cpu", dtype="float32"), data_dir)
    return model, tokenizer


@pytest.fixture
def make_lm(embedded, data_dir):
    """Build a StreamingLM around the shared model with the given cache and generation settings."""
    model, tokenizer = embedded

    def build(sink_tokens=4, window_tokens=252, evict_chunk=16, prefill_chunk=512, **generation) -> StreamingLM:
        generation = {"temperature": 0.0, "max_new_tokens": 32, **generation}
        config = StreamRAGConfig(
            data_dir=data_dir,
            cache={
                "sink_tokens": sink_tokens,
                "window_tokens": window_tokens,
                "evict_chunk": evict_chunk,
                "prefill_chunk": prefill_chunk,
            },
            generation=generation,
        )
        return StreamingLM(model, tokenizer, config)

    return build
