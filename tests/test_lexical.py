"""Incremental BM25: every write updates the index in place and scores equal a brute-force BM25."""

from __future__ import annotations

import math
import random

import pytest

from streamrag.lexical import LexicalIndex, analyse

WORDS = ["locker", "code", "marathon", "biscuit", "beagle", "porto", "sister", "garden", "train", "cello", "rain"]


def brute_force(docs: dict[str, str], query: str) -> dict[str, float]:
    """BM25 (Lucene idf, k1=1.5, b=0.75) straight from its definition, over the live documents."""
    analysed = {cid: analyse(text) for cid, text in docs.items()}
    count = len(analysed)
    average = sum(len(words) for words in analysed.values()) / count
    scores = {}
    for cid, words in analysed.items():
        score = 0.0
        for term in dict.fromkeys(analyse(query)):
            tf = words.count(term)
            if tf:
                df = sum(term in other for other in analysed.values())
                idf = math.log(1 + (count - df + 0.5) / (df + 0.5))
                score += idf * tf * 2.5 / (tf + 1.5 * (1 - 0.75 + 0.75 * len(words) / average))
        if score > 0:
            scores[cid] = score
    return scores


@pytest.mark.parametrize("seed", range(5))
def test_scores_after_adds_replaces_and_deletes_equal_brute_force(seed):
    rng = random.Random(seed)
    index, docs = LexicalIndex(compact_after=100), {}
    for _step in range(1500):
        action = rng.random()
        if action < 0.6 or not docs:
            cid = f"c{rng.randint(0, 800)}"  # an existing id is replaced
            docs[cid] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
            index.upsert({cid: docs[cid]})
        else:
            cid = rng.choice(sorted(docs))
            del docs[cid]
            index.delete({cid})
    assert len(index) == len(docs) and index.compactions >= 1  # deleted postings were dropped, scores still right
    for query in ("locker code", "beagle sister porto", "rain rain cello", "the and of"):
        expected = brute_force(docs, query)
        hits = index.search(query, k=len(docs))
        assert {h.chunk_id for h in hits} == set(expected)
        for hit in hits:
            assert hit.score == pytest.approx(expected[hit.chunk_id], rel=1e-6)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_coverage_is_the_share_of_the_querys_idf_mass_and_comparable_across_queries():
    index = LexicalIndex()
    index.upsert({"a": "My gym locker code is 4471", "b": "The gym was busy", "c": "I like my new code editor"})
    full = index.search("What is the gym locker code?", k=3)
    assert full[0].chunk_id == "a" and full[0].coverage == pytest.approx(1.0)
    assert all(0.0 <= h.coverage < 1.0 for h in full[1:])
    # A one-word query matched fully also scores 1.0: coverage does not grow with query length.
    assert index.search("locker", k=1)[0].coverage == pytest.approx(1.0)
    partial = index.coverage("gym locker code", ["b", "missing"])  # chunks not held are left out
    assert set(partial) == {"b"} and 0.0 < partial["b"] < 1.0
    # Words no chunk holds still count in the question's mass: nothing covers "passport".
    assert index.search("gym locker passport", k=1)[0].coverage < 1.0


def test_stemming_matches_word_forms_and_stop_words_alone_find_nothing():
    index = LexicalIndex()
    index.upsert({"a": "I ran two marathons and adopted a beagle", "b": "nothing to see"})
    assert index.search("marathon adoption", k=2)[0].chunk_id == "a"
    assert index.search("what did you do", k=2) == []
    index.delete(None)
    assert len(index) == 0 and index.search("marathon", k=1) == []
