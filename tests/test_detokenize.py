"""Streaming text: multi-byte characters survive token-by-token decoding; stop strings are cut."""

from __future__ import annotations

import pytest

from streamrag.detokenize import StopMatcher, StreamDecoder

TEXTS = [
    "plain ascii words, with punctuation!",
    "Zürich café naïve résumé",
    "東京は日本の首都です。",
    "emoji 🙂🚀 and flags 🇫🇷 mixed in",
    "  leading spaces\n\nand newlines\ttabs",
]


@pytest.mark.parametrize("text", TEXTS)
def test_token_by_token_pieces_join_to_the_full_decode(embedded, text):
    _, tokenizer = embedded
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.step(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)
    # Multi-byte characters split over several tokens come out once, whole.
    if any(ord(c) > 0x7FF for c in text):
        assert pieces.count("") > 0


def test_decoder_memory_stays_bounded(embedded):
    _, tokenizer = embedded
    ids = tokenizer("hello world " * 50, add_special_tokens=False)["input_ids"]
    decoder = StreamDecoder(tokenizer)
    for _ in range(20):
        for i in ids:
            decoder.step(i)
    assert len(decoder._ids) <= decoder.max_pending + 1


@pytest.mark.parametrize(
    ("pieces", "stops", "expected", "stopped"),
    [
        (["Hel", "lo", " wor", "ld"], [], "Hello world", False),
        (["Hello ", "US", "ER:", " more"], ["USER:"], "Hello ", True),
        (["abc", "d"], ["cd"], "ab", True),
        (["a", "b", "c"], ["zz"], "abc", False),
        (["x", "yz", "END", "tail"], ["END", "yz"], "x", True),
    ],
)
def test_stop_strings_split_across_pieces_are_caught(pieces, stops, expected, stopped):
    matcher = StopMatcher(stops)
    out = "".join(matcher.push(p) for p in pieces) + matcher.flush()
    assert out == expected
    assert matcher.stopped is stopped
