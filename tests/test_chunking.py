"""Archive chunks are the same however evictions cut a message (which makes resume idempotent)."""

from __future__ import annotations

import random

import pytest

from streamrag.chunking import Chunker, chunk_id
from streamrag.ledger import EvictedSpan, MessageRef

REF = MessageRef("s1", "m1", "user", 3)


def spans_for(text: str, cuts: list[int], ref: MessageRef = REF) -> list[EvictedSpan]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [
        EvictedSpan(ref, i, i + 1, a, b, text[a:b], (), True)
        for i, (a, b) in enumerate(zip(bounds, bounds[1:]))
        if b > a
    ]


def final_chunks(chunker: Chunker, spans) -> dict[str, str]:
    """Apply upserts in order: the last text written under each id wins, as in Chroma."""
    stored: dict[str, str] = {}
    for span in spans:
        for chunk in chunker.add(span):
            stored[chunk.chunk_id] = chunk.text
    return stored


def reference_grid(text: str, size: int, overlap: int) -> dict[str, str]:
    """Brute force: every grid window that starts inside the text."""
    step = size - overlap
    return {chunk_id("s1", "m1", k): text[k : k + size] for k in range(0, len(text), step)}


@pytest.mark.parametrize("seed", range(40))
def test_any_eviction_boundaries_give_the_reference_grid(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice("abcdefgh ij.\n") for _ in range(rng.randint(50, 3000)))
    size, overlap = rng.choice([(100, 20), (64, 0), (250, 99)])
    cuts = rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 40)))
    got = final_chunks(Chunker(size, overlap), spans_for(text, cuts))
    assert got == reference_grid(text, size, overlap)


def test_evicting_the_same_text_again_after_a_rebuild_changes_nothing():
    text = "".join(f"sentence {i}. " for i in range(200))
    chunker = Chunker(120, 30)
    first = final_chunks(chunker, spans_for(text[:1000], [100, 333, 500]))
    # A resumed process re-feeds the message and evicts it again at other boundaries.
    again = Chunker(120, 30)
    second = final_chunks(again, spans_for(text[:1000], [7, 64, 640, 900]))
    assert first == second


def test_partial_chunks_are_written_at_once_and_grow_under_the_same_id():
    chunker = Chunker(100, 20)
    text = "x" * 60 + "y" * 60
    first = chunker.add(spans_for(text[:60], [])[0])
    assert [(c.char_start, c.char_end, c.complete) for c in first] == [(0, 60, False)]
    grown = chunker.add(EvictedSpan(REF, 1, 2, 60, 120, text[60:], (), True))
    by_id = {c.chunk_id: c for c in grown}
    assert by_id[first[0].chunk_id].text == text[:100] and by_id[first[0].chunk_id].complete
    assert chunk_id("s1", "m1", 80) in by_id  # the next window, overlapping by 20


def test_template_only_and_unarchived_spans_are_not_chunked_here():
    chunker = Chunker(100, 20)
    assert chunker.add(EvictedSpan(REF, 0, 3, 0, 0, "", (1, 2, 3), True)) == []


def test_buffer_memory_is_bounded_by_the_chunk_size():
    chunker = Chunker(100, 20)
    text = "z" * 100_000
    for span in spans_for(text, list(range(37, len(text), 37))):
        chunker.add(span)
    assert len(chunker._buffers[("s1", "m1")].text) < 100


def test_messages_never_share_a_chunk():
    chunker = Chunker(100, 20)
    other = MessageRef("s1", "m2", "assistant", 3)
    chunks = [c for s in spans_for("a" * 50, []) + spans_for("b" * 50, [], other) for c in chunker.add(s)]
    assert {c.message_id for c in chunks} == {"m1", "m2"}
    assert all(set(c.text) == ({"a"} if c.message_id == "m1" else {"b"}) for c in chunks)
