"""LlamaIndex LLM for streamrag: ``from llama_index.llms.streamrag import StreamRAGLLM``."""

from llama_index.llms.streamrag.base import StreamRAGLLM

__all__ = ["StreamRAGLLM"]
