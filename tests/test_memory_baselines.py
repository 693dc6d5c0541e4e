"""The every-turn baselines of ``streamrag bench memory``: exact search, budgets, and LlamaIndex's query.

All but one test use a deterministic hashed bag-of-words "embedder" so no model
loads; it sees only alphabetic words, which stands in for the real weakness
BM25 exists to cover (embedders blur codes and numbers). One test loads the
embedded MiniLM to check that a paraphrase finds its turn among distractors.
"""

from __future__ import annotations

import re
import zlib
from datetime import UTC, datetime

import numpy as np
import pytest

from streamrag.bench.memory_baselines import (
    BM25Turns,
    DenseTurns,
    IndexedTurn,
    LlamaIndexStyle,
    TurnBaseline,
    build_baselines,
    document_text,
    fill_budget,
    render_line,
)

DIM = 512
BIG_BUDGET = 10_000


def fake_embed(texts: list[str]) -> np.ndarray:
    """Hashed bag of alphabetic words, L2-normalised (all-zero for a text without such words)."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", text.lower()):
            out[row, zlib.crc32(word.encode()) % DIM] += 1.0
        norm = np.linalg.norm(out[row])
        if norm > 0:
            out[row] /= norm
    return out


def words(text: str) -> int:
    """Whitespace token counter: the budget unit in these tests."""
    return len(text.split())


def make_turns(texts: list[str], speakers: tuple[str, str] = ("Alice", "Bob")) -> list[IndexedTurn]:
    start = datetime(2023, 5, 1, tzinfo=UTC).timestamp()
    return [IndexedTurn(f"t{i}", speakers[i % 2], text, start + 3600 * i) for i, text in enumerate(texts)]


FILLER = [
    "we should paint the kitchen walls a pale green this summer",
    "my brother is training for a marathon in the autumn",
    "the bakery on the corner sells excellent sourdough bread",
    "I finished reading that novel about the lighthouse keeper",
    "the train to the coast was delayed by almost an hour",
    "our neighbours adopted two kittens from the shelter",
    "I need to renew my passport before the end of the year",
    "the garden tomatoes are finally turning red",
    "let us try the new ramen place near the station on friday",
    "the printer at work jammed again during the meeting",
    "my grandmother taught me how to knit scarves",
    "the football match went to penalties last night",
    "I am learning to play the cello with an online teacher",
    "the museum has a new exhibition about ancient maps",
    "we ran out of coffee beans so I bought tea instead",
    "the laptop battery drains quickly when the screen is bright",
    "my cousin is moving to a flat by the river",
    "the snow made the mountain road impossible to drive",
    "I signed up for a pottery class on tuesday evenings",
    "the film had a twist ending that nobody expected",
]


def test_render_line_uses_the_utc_day_month_year():
    late_evening = datetime(2023, 5, 7, 23, 30, tzinfo=UTC).timestamp()
    turn = IndexedTurn("t0", "Alice", "the locker code is 7731", late_evening)
    assert render_line(turn) == "[7 May 2023] Alice: the locker code is 7731"
    assert render_line(IndexedTurn("t1", "Bob", "hi", 0.0)) == "[1 January 1970] Bob: hi"


def test_dense_turns_ranks_exactly_like_a_brute_force_argsort():
    texts = [f"{text} {extra}" for extra in ("today", "again", "kitchen", "coffee") for text in FILLER]
    turns = make_turns(texts)  # 80 turns: past the matrix's first 64 rows and the 50 candidates
    dense = DenseTurns(fake_embed)
    for start in range(0, len(turns), 7):  # incremental adds
        dense.add(turns[start : start + 7])
    question = "what colour for the kitchen walls and coffee"

    vectors = fake_embed([f"{t.speaker}: {t.text}" for t in turns])
    scores = vectors @ fake_embed([question])[0]
    expected = [turns[i].turn_id for i in np.argsort(-scores, kind="stable")[:50]]

    got = dense.retrieve(question, [question], BIG_BUDGET, words)
    assert [t.turn_id for t in got] == expected
    assert expected != [t.turn_id for t in turns[:50]]  # the ranking is not insertion order


def test_bm25_finds_an_exact_code_that_dense_misses():
    turns = make_turns(
        FILLER
        + [
            "the code for the wifi is on a sticker under the router",
            "I forgot the door code again, can you text it",
            "my gym locker combination is 7731",
        ]
    )
    target = turns[-1]
    question = "what was the code 7731"
    dense, bm25 = DenseTurns(fake_embed), BM25Turns()
    dense.add(turns)
    bm25.add(turns)

    assert bm25.retrieve(question, [question], BIG_BUDGET, words)[0] == target
    dense_top = dense.retrieve(question, [question], BIG_BUDGET, words)
    assert dense_top[0] != target
    assert dense_top[0].text.startswith(("the code for the wifi", "I forgot the door code"))


def test_bm25_of_only_stop_words_or_an_empty_question_returns_nothing():
    bm25 = BM25Turns()
    bm25.add(make_turns(FILLER))
    assert bm25.retrieve("what is the", ["what is the"], BIG_BUDGET, words) == []
    assert bm25.retrieve("", [""], BIG_BUDGET, words) == []


def test_every_baseline_returns_nothing_for_an_empty_question_or_archive():
    for baseline in build_baselines(fake_embed):
        assert baseline.retrieve("kitchen walls", ["kitchen walls"], BIG_BUDGET, words) == []
        baseline.add(make_turns(FILLER))
        assert baseline.retrieve("   ", ["   "], BIG_BUDGET, words) == []
        assert baseline.retrieve("kitchen walls", ["kitchen walls"], 0, words) == []


def test_llamaindex_style_queries_with_the_last_five_messages_and_returns_at_most_two():
    turns = make_turns(
        FILLER
        + [
            "what was the name of that cafe again",
            "I adopted a puppy, a dog named Biscuit",
            "my parrot squawks parrot parrot all morning",
        ]
    )
    cafe, dog, parrot = turns[-3:]
    question = "what was its name again"
    recent = [
        "parrot parrot parrot parrot",  # sixth from the end: outside the window, must not pull
        "the dog chewed my shoes",
        "a naughty dog, but a lovely dog",
        "how old is the dog now",
        "the puppy is a dog of six months",
        question,
    ]
    llama, dense = LlamaIndexStyle(fake_embed), DenseTurns(fake_embed)
    llama.add(turns)
    dense.add(turns)

    assert dense.retrieve(question, recent, BIG_BUDGET, words)[0] == cafe  # the question alone
    got = llama.retrieve(question, recent, BIG_BUDGET, words)
    assert len(got) == 2  # plenty of budget left, still two
    assert got[0] == dog
    assert parrot not in got

    # Without the sixth-from-last message in the window, the parrot would win.
    assert llama.retrieve("parrot", ["parrot parrot parrot parrot"], BIG_BUDGET, words)[0] == parrot


@pytest.mark.parametrize("budget", [1, 5, 12, 30, 80])
def test_every_baseline_fits_its_lines_into_the_token_budget(budget):
    long_turn = "kitchen " * 40
    turns = make_turns(FILLER + [long_turn.strip(), "kitchen walls code 7731"])
    question = "kitchen walls paint code 7731"
    for baseline in build_baselines(fake_embed):
        baseline.add(turns)
        got = baseline.retrieve(question, [question], budget, words)
        assert sum(words(render_line(t)) + 1 for t in got) <= budget, baseline.name
        assert len({t.turn_id for t in got}) == len(got)
        if budget >= 30:  # room for several short lines: no baseline leaves it all empty
            assert got, baseline.name


def test_fill_budget_skips_a_turn_too_long_and_keeps_a_shorter_one_after_it():
    short_a, too_long, short_b = make_turns(["one two", "word " * 30, "three four"])
    line_cost = words(render_line(short_a)) + 1  # "[1 May 2023] Alice: one two" -> 6 + 1
    got = fill_budget([short_a, too_long, short_b], 2 * line_cost, words)
    assert got == [short_a, short_b]
    assert fill_budget([short_a, short_b], line_cost - 1, words) == []
    assert fill_budget([short_a, short_b, too_long], BIG_BUDGET, words, limit=1) == [short_a]


def test_adding_a_turn_id_twice_keeps_one_copy():
    turns = make_turns(FILLER[:3])
    for baseline in build_baselines(fake_embed):
        baseline.add(turns)
        baseline.add(turns + [turns[0]])
        question = "kitchen walls marathon bakery"
        got = baseline.retrieve(question, ["x"] * 4 + [question], BIG_BUDGET, words)
        assert len({t.turn_id for t in got}) == len(got) <= 3, baseline.name
        assert got, baseline.name


def test_build_baselines_gives_the_three_systems_sharing_one_embedding_per_turn():
    calls: list[list[str]] = []

    def counting_embed(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return fake_embed(texts)

    baselines = build_baselines(counting_embed)
    assert [b.name for b in baselines] == ["dense_turns", "bm25_turns", "llamaindex_style"]
    assert all(isinstance(b, TurnBaseline) for b in baselines)
    turns = make_turns(FILLER)
    for baseline in baselines:
        baseline.add(turns)
    embedded = [text for call in calls for text in call]
    assert sorted(embedded) == sorted(document_text(t) for t in turns)  # each turn string once


def test_dense_turns_with_minilm_finds_a_paraphrase_among_distractors():
    from streamrag.embedding import StreamragEmbedding

    encoder = StreamragEmbedding()

    def embed(texts: list[str]) -> np.ndarray:
        return np.stack(encoder(texts))

    target_text = "I finally booked the flights for our honeymoon in Kyoto next April"
    turns = make_turns(FILLER[:10] + [target_text] + FILLER[10:])
    dense = DenseTurns(embed)
    dense.add(turns)
    question = "Where are we travelling after the wedding?"
    got = dense.retrieve(question, [question], BIG_BUDGET, words)
    assert got[0].text == target_text
