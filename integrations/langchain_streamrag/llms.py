"""``StreamRAG``: plain text completion (no chat template) on the same local model, as a LangChain LLM.

Each call is a fresh context, like any completion API: the engine is reset,
the prompt prefilled and its continuation streamed. Conversations that should
persist belong to :class:`~langchain_streamrag.ChatStreamRAG`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LLM
from langchain_core.outputs import GenerationChunk
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_streamrag._common import model_label, resolve_resources
from streamrag.engine import StreamingLM
from streamrag.session import Resources


class StreamRAG(LLM):
    """Completion on a local LM with an attention-sink cache (prompts longer than the window stream through).

    >>> llm = StreamRAG(max_tokens=32)
    >>> llm.invoke("The capital of France is")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    config: Any = None
    """A ``StreamRAGConfig``, a YAML path, or ``None`` for the defaults (embedded model)."""
    resources: Any = Field(default=None, exclude=True)
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None

    _lm: StreamingLM | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "streamrag"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": model_label(self.resources.config) if self.resources else "streamrag",
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }

    def _engine(self) -> tuple[StreamingLM, Resources]:
        if self.resources is None:
            self.resources = resolve_resources(None, self.config)
        if self._lm is None:
            self._lm = StreamingLM(self.resources.model, self.resources.tokenizer, self.resources.config)
        return self._lm, self.resources

    def _generation(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        settings = {
            "temperature": kwargs.get("temperature", self.temperature),
            "max_new_tokens": kwargs.get("max_tokens", self.max_tokens),
            "top_p": kwargs.get("top_p", self.top_p),
            "top_k": kwargs.get("top_k", self.top_k),
            "repetition_penalty": kwargs.get("repetition_penalty", self.repetition_penalty),
            "seed": kwargs.get("seed", self.seed),
            "stop": stop if stop is not None else self.stop,
        }
        return {k: v for k, v in settings.items() if v is not None}

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        lm, resources = self._engine()
        with resources.lock:
            lm.reset()
            pieces = lm.stream_completion(prompt, **self._generation(stop, kwargs))
            try:
                for piece in pieces:
                    chunk = GenerationChunk(text=piece)
                    if run_manager:
                        run_manager.on_llm_new_token(piece, chunk=chunk)
                    yield chunk
            finally:
                pieces.close()
            turn = pieces.stats
        yield GenerationChunk(
            text="",
            generation_info={
                "finish_reason": turn.stop_reason,
                "prompt_tokens": turn.prefilled_tokens,
                "completion_tokens": turn.generated_tokens,
            },
        )

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return "".join(chunk.text for chunk in self._stream(prompt, stop, run_manager, **kwargs))
