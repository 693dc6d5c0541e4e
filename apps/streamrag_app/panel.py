"""The memory panel: what came back for this turn and how full the cache is.

Two views of one dict: :func:`panel_data` (JSON, what tests and API clients
read) and :func:`panel_html` (the gauge and memory cards a person reads).
"""

from __future__ import annotations

import html

from streamrag.engine import TurnStats
from streamrag.recall import format_date
from streamrag.session import Assistant, Reply


def panel_data(assistant: Assistant | None, reply: Reply | None = None) -> dict:
    """The memory panel's data for one session and its last reply; an empty panel before the first message."""
    if assistant is None:
        return {"session_id": None, "cache": None, "archived_chunks": 0, "recalled": [], "tokens_per_second": 0.0}
    stats = assistant.stats()
    cache = stats.cache
    sinks = min(cache.sink_tokens, cache.cache_tokens)
    turn = reply.stats if reply is not None else TurnStats()
    recall = reply.recall if reply is not None else None
    unavailable = (recall.unavailable if recall else None) or stats.archive_unavailable
    earlier = {line.memory.chunk_id for line in recall.lines if line.earlier and line.memory} if recall else set()
    zone = assistant.recall_policy.zone
    return {
        "session_id": assistant.session_id,
        "turn": assistant.turn,
        "cache": {
            "sink_tokens": sinks,
            "sink_capacity": cache.sink_tokens,
            "window_fill": cache.cache_tokens - sinks,
            "window_tokens": cache.window_tokens,
            "cache_tokens": cache.cache_tokens,
            "capacity": cache.capacity,
            "evicted_tokens": cache.evicted_tokens,
            "evictions": cache.evictions,
        },
        "archived_chunks": stats.archived_chunks,
        "pending_evictions": stats.pending_evictions,
        "archive_unavailable": unavailable,
        "recalled": [
            {
                "text": m.text,
                "turn": m.turn,
                "role": m.role,
                "speaker": m.speaker,
                "said": format_date(m.created_at, zone),
                "earlier": m.chunk_id in earlier,
                "score": round(m.score, 4),
                "similarity": None if m.similarity is None else round(m.similarity, 3),
                "lexical_score": None if m.lexical_score is None else round(m.lexical_score, 2),
                "chunk_id": m.chunk_id,
            }
            for m in (reply.memories if reply is not None else [])
        ],
        "context_lines": sum(1 for line in recall.lines if line.memory is None) if recall else 0,
        "tokens_per_second": round(turn.tokens_per_second, 1),
        "generated_tokens": turn.generated_tokens,
        "prefilled_tokens": turn.prefilled_tokens,
        "stop_reason": turn.stop_reason,
        "settings": assistant.settings,
    }


def panel_html(data: dict) -> str:
    """The gauge (sinks | window fill | free) and the recalled memories as cards."""
    cache = data.get("cache")
    if not cache:
        return (
            "<div class='srag-panel'><p><b>Memory</b></p><p class='srag-dim'>Send a message to start a session. "
            "When the window overflows, old text is archived and recalled here when it matters.</p></div>"
        )
    capacity = max(cache["capacity"], 1)
    sink_pct = 100 * cache["sink_tokens"] / capacity
    fill_pct = 100 * cache["window_fill"] / capacity
    recalled = data["recalled"]
    cards = "".join(
        f"<div class='srag-memory'><div class='srag-dim'>{html.escape(m['said'])} · {html.escape(m['speaker'])} · "
        f"score {m['score']:.2f}{' · earlier version' if m['earlier'] else ''}</div>"
        f"<div>{html.escape(m['text'])}</div></div>"
        for m in recalled
    )
    if not cards:
        cards = "<p class='srag-dim'>Nothing recalled for this turn.</p>"
    if data.get("archive_unavailable"):
        cards = (
            "<p class='srag-warn'>The archive is unavailable: recall searched only text not yet indexed. "
            "Evicted text is kept in the transcript's log and indexed when the archive is back.</p>" + cards
        )
    archived = data["archived_chunks"]
    archived_text = "archive unavailable" if archived is None else f"archived {archived} chunks"
    if data.get("pending_evictions"):
        archived_text += f" ({data['pending_evictions']} evictions waiting to be indexed)"
    return (
        "<div class='srag-panel'>"
        f"<p><b>Cache</b> {cache['cache_tokens']} / {cache['capacity']} tokens "
        f"<span class='srag-dim'>after turn {data['turn']}</span></p>"
        "<div class='srag-gauge'>"
        f"<span class='srag-sinks' style='width:{sink_pct:.2f}%'></span>"
        f"<span class='srag-window' style='width:{fill_pct:.2f}%'></span>"
        "</div>"
        f"<p class='srag-dim'>sinks {cache['sink_tokens']}/{cache['sink_capacity']} · window "
        f"{cache['window_fill']}/{cache['window_tokens']} · evicted {cache['evicted_tokens']} tokens "
        f"({cache['evictions']} evictions) · {archived_text} · "
        f"{data['tokens_per_second']:.1f} tok/s last reply</p>"
        f"<p><b>Recalled this turn</b> ({len(recalled)})</p>{cards}"
        "</div>"
    )


CSS = """
.srag-gauge { display: flex; height: 14px; border-radius: 7px; background: #e5e7eb; overflow: hidden; }
.srag-sinks { background: #f59e0b; }
.srag-window { background: #3b82f6; }
.srag-dim { color: #6b7280; font-size: 0.85em; }
.srag-warn { color: #b45309; font-size: 0.9em; }
.srag-memory { border-left: 3px solid #10b981; padding: 4px 8px; margin: 6px 0; background: rgba(16,185,129,.07); }
"""
