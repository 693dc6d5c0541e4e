"""Deciding "auto" for a model that cannot decide for itself: route a request to the tools it asks for.

With ``tool_choice="auto"`` the grammar lets the model either write text or
open a call, and a model trained on tool use (one whose chat template
renders tools: Qwen2.5, Llama 3.x, Mistral, ...) picks well. A model never
trained on tools, like the embedded SmolLM2-135M, practically never opens a
call: asked "What is the weather in San Francisco?" beside a ``get_weather``
tool it describes the weather instead, whatever its instructions say (tried
with several wordings). For such a model the router decides, semantic-router
style: the request and each tool's name and description are embedded with
the archive's sentence-transformers model, and when the best tool is at
least ``tools.router_threshold`` similar the turn must call one of the tools
that close (the model still writes the call and its arguments, under the
grammar). Below the threshold the model decides, as before. The reply that
follows a tool's result answers in text (tool_choice none): left to decide
there, the model called tool after tool.

Measured with all-MiniLM-L6-v2 on a probe of 14 requests for 6 tools and 10
unrelated messages: the best tool was the right one for all 14; requests
scored 0.23-0.53, unrelated messages at most 0.25, so 0.28 routed 11 of 14
requests and none of the 10 others. On a second probe written afterwards
(``tests/test_tool_router.py``) it routed 5 of 6 requests to the right tool,
none to a wrong one, and none of 6 unrelated messages.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from streamrag.tools import Tool

logger = logging.getLogger(__name__)

# Tool descriptions whose vectors are kept: an agent offers the same few tools every turn.
CACHED_TOOLS = 256
# Tools this much less similar than the best one are not offered to a routed call.
RUNNER_UP_MARGIN = 0.05

Embedder = Callable[[list[str]], Sequence[Sequence[float]]]


def tool_text(tool: Tool) -> str:
    """What a tool is compared by: its name in words and its description."""
    name = tool.name.replace("_", " ").replace("-", " ")
    return f"{name}: {tool.description}".strip() if tool.description else name


class ToolRouter:
    """Picks the tools a request clearly asks for, by embedding similarity."""

    def __init__(self, embed: Embedder, threshold: float):
        self._embed = embed
        self.threshold = threshold
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    def scores(self, request: str, tools: Sequence[Tool]) -> list[float]:
        """Cosine similarity of ``request`` to each tool, in the tools' order."""
        texts = [tool_text(t) for t in tools]
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        vectors = [_unit(v) for v in self._embed([request, *missing])]
        for text, vector in zip(missing, vectors[1:]):
            self._vectors[text] = vector
        for text in texts:
            self._vectors.move_to_end(text)
        while len(self._vectors) > CACHED_TOOLS:
            self._vectors.popitem(last=False)
        question = vectors[0]
        return [float(question @ self._vectors[text]) for text in texts]

    def route(self, request: str, tools: Sequence[Tool]) -> tuple[Tool, ...]:
        """The tools ``request`` asks for, best first; empty when none is close enough (the model decides)."""
        if not tools or not request.strip():
            return ()
        scores = self.scores(request, tools)
        best = max(scores)
        if best < self.threshold:
            logger.debug("tool router: best score %.3f below %.3f, the model decides", best, self.threshold)
            return ()
        ranked = sorted(zip(scores, range(len(tools))), reverse=True)
        picked = tuple(tools[i] for score, i in ranked if score >= max(self.threshold, best - RUNNER_UP_MARGIN))
        logger.debug("tool router: %s (best score %.3f)", [t.name for t in picked], best)
        return picked


def _unit(vector: Sequence[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    return array / max(float(np.linalg.norm(array)), 1e-12)
