"""LangChain's standard test suites (langchain-tests) on the embedded model.

Tool calling, tool choice, structured output and JSON mode run (constrained
decoding makes even the 135M model's calls and JSON valid). Capabilities the
adapter does not have are declared, so those tests skip for that reason:
image / PDF / audio inputs, per-call model override (a session's model is fixed).
"""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from conftest import build_resources, filler_history  # noqa: E402
from langchain_streamrag import ChatStreamRAG, StreamRAGRetriever  # noqa: E402
from langchain_tests.integration_tests import ChatModelIntegrationTests, RetrieversIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

_SHARED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _resources(embedded, tmp_path_factory):
    """One set of resources for the module (a roomy cache, replies of at most 8 tokens)."""
    resources = build_resources(
        embedded,
        tmp_path_factory.mktemp("lc-standard"),
        cache={"sink_tokens": 4, "window_tokens": 1020, "evict_chunk": 32},
    )
    _SHARED["resources"] = resources
    yield resources
    resources.close()


class _Declared:
    """What the adapter honestly cannot do."""

    @property
    def chat_model_class(self):
        return ChatStreamRAG

    @property
    def chat_model_params(self) -> dict:
        return {"resources": _SHARED["resources"]}

    @property
    def standard_chat_model_params(self) -> dict:
        return {**super().standard_chat_model_params, "max_tokens": 8}  # short replies keep the suite quick

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True


class TestChatStreamRAGUnit(_Declared, ChatModelUnitTests):
    pass


class TestChatStreamRAGIntegration(_Declared, ChatModelIntegrationTests):
    @pytest.fixture
    def model(self, request):
        """The suite's model, with room for a whole call or JSON value where a test asks for one.

        Tests of plain text only check that a reply arrives and streams: 8 tokens keep them quick.
        A constrained call or JSON value ends itself when complete; 48 tokens (96 for a JSON joke or
        a call with CJK names) is its ceiling.
        """
        name = request.node.originalname or request.node.name
        tokens = 48 if any(word in name for word in ("tool", "structured", "agent")) else 8
        # A joke in JSON; CJK names, about three byte-level tokens a character.
        tokens = 96 if "json_mode" in name or "unicode" in name else tokens
        extra = getattr(request, "param", None) or {}
        return self.chat_model_class(
            **{**self.standard_chat_model_params, **self.chat_model_params, "max_tokens": tokens, **extra}
        )


class TestStreamRAGRetriever(RetrieversIntegrationTests):
    @pytest.fixture(scope="class", autouse=True)
    def _archive(self, embedded, tmp_path_factory):
        """A session (256-token cache) whose early messages left the window: its archive has plenty of chunks."""
        resources = build_resources(embedded, tmp_path_factory.mktemp("lc-retriever"))
        session = resources.session("standard-retriever")
        session.sync(filler_history(windows=3, capacity=resources.config.cache.capacity))
        assert session.flush()  # evicted text is indexed in the background
        assert resources.archive.count("standard-retriever") >= 3
        _SHARED["archive"] = resources.archive
        yield
        resources.close()

    @property
    def retriever_constructor(self):
        return StreamRAGRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"archive": _SHARED["archive"], "session_id": "standard-retriever"}

    @property
    def retriever_query_example(self) -> str:
        return "What should I plant in a shady corner?"
