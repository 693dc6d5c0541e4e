"""Archive chunks are the same however evictions cut a message (which makes resume and re-indexing idempotent)."""

from __future__ import annotations

import random

import pytest

from streamrag.chunking import Chunker, chunk_id
from streamrag.transcript import EvictedText


def pieces_for(text: str, cuts: list[int], message: str = "m1", role: str = "user") -> list[EvictedText]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [EvictedText("s1", message, role, 3, a, b, text[a:b], 1000.0) for a, b in zip(bounds, bounds[1:]) if b > a]


def final_chunks(chunker: Chunker, pieces: list[EvictedText]) -> dict[str, str]:
    """Index the log piece by piece, as the indexer would: the last text written under each id wins (Chroma)."""
    stored: dict[str, str] = {}
    for i, piece in enumerate(pieces):
        for chunk in chunker.chunks(pieces[: i + 1], new_from=piece.char_start):
            stored[chunk.chunk_id] = chunk.text
    return stored


def reference_snap(text: str, position: int, floor: int, look_back: int) -> int:
    """Brute force of the edge rule over the whole text: back to a sentence start, else a word start."""
    if position <= 0 or position >= len(text) or text[position - 1].isspace() or text[position].isspace():
        return position
    lowest = max(floor + 1, position - look_back, 0)
    for q in range(position - 1, lowest, -1):  # latest sentence start: ".!?" or a newline, closers, spaces
        if not text[q - 1].isspace() or text[q].isspace():
            continue
        j = q - 1
        while j >= lowest and text[j].isspace():  # text[j:q] are spaces; what ends just before them?
            i = j - 1
            while i >= lowest and text[i] in "\"')]":
                i -= 1
            if i >= lowest and text[i] in ".!?\n":
                return q
            j -= 1
    for q in range(position - 1, lowest, -1):
        if text[q - 1] in " \n\t":
            return q
    return position


def reference_grid(text: str, size: int, overlap: int) -> dict[str, str]:
    """Brute force: every grid window that starts inside the text, its edges moved back to word starts."""
    step, look_back = size - overlap, size // 4
    chunks = {}
    for k in range(0, len(text), step):
        lo = reference_snap(text, k, k - step, look_back)
        hi = min(reference_snap(text, k + size, k, look_back), len(text))
        chunks[chunk_id("s1", "m1", k)] = text[lo:hi]
    return chunks


@pytest.mark.parametrize("seed", range(40))
def test_any_eviction_boundaries_give_the_reference_grid(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice("abcdefgh ij.\n") for _ in range(rng.randint(50, 3000)))
    size, overlap = rng.choice([(100, 20), (64, 0), (250, 99)])
    cuts = rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 40)))
    assert final_chunks(Chunker(size, overlap), pieces_for(text, cuts)) == reference_grid(text, size, overlap)


@pytest.mark.parametrize("seed", range(10))
def test_indexing_in_batches_of_any_size_gives_the_reference_grid(seed):
    # The indexer takes whatever rows are pending at once; the chunks must not depend on how many.
    rng = random.Random(seed)
    text = "".join(rng.choice("abcdefgh ij.\n") for _ in range(rng.randint(200, 3000)))
    pieces = pieces_for(text, rng.sample(range(1, len(text)), k=30))
    chunker = Chunker(120, 30)
    stored: dict[str, str] = {}
    done = 0
    while done < len(pieces):
        batch = rng.randint(1, 8)
        new_from = pieces[done].char_start
        visible = pieces[: done + batch]
        lookback = [p for p in visible if p.char_end > chunker.first_affected(new_from)]
        for chunk in chunker.chunks(lookback, new_from):
            stored[chunk.chunk_id] = chunk.text
        done += batch
    assert stored == reference_grid(text, 120, 30)


def test_partial_chunks_are_written_at_once_and_grow_under_the_same_id():
    chunker = Chunker(100, 20)
    text = "x" * 60 + "y" * 60
    pieces = pieces_for(text, [60])
    first = chunker.chunks(pieces[:1], new_from=0)
    assert [(c.char_start, c.char_end, c.complete) for c in first] == [(0, 60, False)]
    grown = chunker.chunks(pieces, new_from=60)
    by_id = {c.chunk_id: c for c in grown}
    assert by_id[first[0].chunk_id].text == text[:100] and by_id[first[0].chunk_id].complete
    assert chunk_id("s1", "m1", 80) in by_id  # the next window, overlapping by 20
    assert all(c.spoken_at == 1000.0 and c.turn == 3 for c in grown)


def test_overlapping_log_pieces_are_read_once_and_gaps_are_never_glued():
    chunker = Chunker(100, 20)
    text = "".join(f"w{i:03d} " for i in range(60))
    overlapping = [
        EvictedText("s1", "m1", "user", 1, 0, 50, text[0:50], 0.0),
        EvictedText("s1", "m1", "user", 1, 30, 90, text[30:90], 0.0),
    ]
    assert {c.text for c in chunker.chunks(overlapping, 0)} == {text[0:90], text[80:90]}
    gap = [
        EvictedText("s1", "m1", "user", 1, 0, 40, text[0:40], 0.0),
        EvictedText("s1", "m1", "user", 1, 60, 90, text[60:90], 0.0),
    ]
    # Each run is chunked on its own: no chunk holds text from both sides of the gap.
    assert all(c.text in (text[0:40], text[60:90], text[80:90]) for c in chunker.chunks(gap, 0))


def test_messages_never_share_a_chunk():
    chunker = Chunker(100, 20)
    chunks = chunker.chunks(pieces_for("a" * 50, []), 0) + chunker.chunks(pieces_for("b" * 50, [], "m2"), 0)
    assert {c.message_id for c in chunks} == {"m1", "m2"}
    assert all(set(c.text) == ({"a"} if c.message_id == "m1" else {"b"}) for c in chunks)


@pytest.mark.parametrize("seed", range(10))
def test_chunks_begin_and_end_at_word_boundaries(seed):
    # The grid once cut "enormous" into "enor" / "mous" and both halves reached the prompt.
    rng = random.Random(seed)
    words = ["enormous", "locker", "the", "a", "marathon", "Biscuit", "reference", "QX7-2291", "and", "yesterday"]
    text = " ".join(rng.choice(words) + rng.choice(["", "", ".", ",", "!"]) for _ in range(rng.randint(60, 400)))
    chunker = Chunker(120, 30)
    cuts = rng.sample(range(1, len(text)), k=25)
    chunks = chunker.chunks(pieces_for(text, cuts), new_from=0)
    assert len(chunks) > 2

    def between_words(p: int) -> bool:
        return p in (0, len(text)) or text[p - 1] == " " or text[p] == " "

    for chunk in chunks:
        assert between_words(chunk.char_start) and between_words(chunk.char_end), chunk
        assert text[chunk.char_start : chunk.char_end] == chunk.text
    # Together the chunks still cover every character.
    covered = set()
    for chunk in chunks:
        covered.update(range(chunk.char_start, chunk.char_end))
    assert covered == set(range(len(text)))


def test_a_run_without_spaces_is_cut_hard_and_a_sentence_start_is_preferred():
    chunker = Chunker(100, 0)
    blob = "x" * 250
    assert [c.text for c in chunker.chunks(pieces_for(blob, []), 0)] == [blob[:100], blob[100:200], blob[200:]]
    text = "First part of it. " + "word " * 11 + "word. Second sentencelongwordxx goes on and on"
    first = chunker.chunks(pieces_for(text, []), 0)[0]  # the cell ends inside the long word, at 100
    assert first.text.endswith("word. ") and text[first.char_end :].startswith("Second")
