"""Two `streamrag api` replicas sharing a PostgreSQL transcript and a Chroma server serve one conversation.

Each replica is its own :class:`~streamrag.session.Resources` (its own transcript connection, archive
client, indexer and live sessions) and its own HTTP server; they share only the model's weights in memory
(read-only) and, like replicas on two machines, the two servers. A client alternates between them, as a
load balancer without session affinity would send it.
"""

from __future__ import annotations

import httpx
import pytest
from conftest import PASSPORT_FACT, SMALL_TALK
from openai import OpenAI

from streamrag.api.background import BackgroundServer
from streamrag.config import ServerSettings

MODEL = "SmolLM2-135M-Instruct"

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_a_session_started_on_one_replica_continues_on_the_other(make_resources, postgres_url, chroma_server):
    shared = {
        "transcript_url": postgres_url,
        "archive": {"chroma_url": chroma_server, "collection": "replicas", "chunk_chars": 400, "index_idle_s": 0.2},
        "cache": {"sink_tokens": 4, "window_tokens": 124, "evict_chunk": 16},
        "recall": {"budget_fraction": 0.4},  # a tiny window: let the memory block hold the fact's line
    }
    replicas = [BackgroundServer(make_resources(**shared), ServerSettings()).start() for _ in range(2)]
    try:
        clients = [OpenAI(base_url=r.base_url, api_key="unused", max_retries=0) for r in replicas]
        headers = {"X-Session-Id": "trip"}
        messages: list[dict] = []
        usages = []
        for i, text in enumerate([PASSPORT_FACT, *SMALL_TALK]):
            messages.append({"role": "user", "content": text})
            api = clients[i % 2]  # turn 1 on replica A, turn 2 on B, turn 3 on A again...
            reply = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, extra_headers=headers)
            usages.append(reply.usage)
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
            # The answering replica's cache holds the turn before, which the other replica answered.
            if i:
                live = replicas[i % 2].resources._assistants["trip"]  # not .session(): that would catch up
                stored = [m for m in live.transcript.messages("trip") if m.role in ("user", "assistant")]
                assert all(m.message_id in live.lm.ledger for m in stored[-4:]), f"turn {i + 1}: cache behind"

        # One conversation, in order, every message once, nothing superseded: whichever replica answered,
        # it continued what the other had stored (a stale cache is rebuilt, never forked).
        for resources in (r.resources for r in replicas):
            stored = resources.transcript.messages("trip", include_superseded=True)
            said = [(m.role, m.content) for m in stored if m.role in ("user", "assistant")]
            assert said == [(m["role"], m["content"]) for m in messages]
            assert all(m.superseded_at is None for m in stored)
        # The first turn on B resumed from the transcript; later turns found their cache behind and caught up.
        assert usages[1].prompt_tokens_details.cached_tokens > 0

        # The fact left both windows; indexed by either replica into the shared Chroma server, once.
        for r in replicas:
            assert r.resources.indexer.flush("trip", timeout=60)
        for r in replicas:
            found = httpx.get(
                f"{r.base_url}/sessions/trip/memories", params={"query": "passport number", "k": 3}
            ).json()["data"]
            assert any("X7741" in m["text"] for m in found)
        listed = httpx.get(f"{replicas[0].base_url}/sessions/trip/memories", params={"limit": 1000}).json()["data"]
        spans = [(m["message_id"], m["text"]) for m in listed]
        assert len(spans) == len(set(spans))  # two indexers, one copy of each chunk

        # Asked on the replica that did not hear it, the fact is recalled into the context.
        messages.append({"role": "user", "content": "What is my passport number?"})
        clients[1].chat.completions.create(model=MODEL, messages=messages, max_tokens=12, extra_headers=headers)
        blocks = [m for m in replicas[1].resources.transcript.messages("trip") if m.role == "memory"]
        assert blocks and "X7741" in blocks[-1].content
    finally:
        for r in replicas:
            r.stop()
