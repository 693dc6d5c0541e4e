"""A long, made-up chat history for the examples: one fact early on, then small talk that pushes it out."""

from __future__ import annotations

FACT = "By the way, my sister Margarethe moved to Trondheim last year."

_SMALL_TALK = [
    ("Let's talk about gardening. What should I plant in a shady corner?", "Ferns and hostas do well in shade."),
    ("The weather has been grey all week and the train was late again.", "A short walk at lunch can help."),
    ("I am reading a novel about sailors crossing the Atlantic in winter.", "Sea stories have great atmosphere."),
    ("We might paint the kitchen a pale colour next spring.", "Pale colours make small kitchens feel bigger."),
    ("My neighbour's dog barks every morning at exactly seven o'clock.", "Maybe he greets someone who leaves then."),
]


def long_history(exchanges: int = 40) -> list[tuple[str, str]]:
    """(role, text) pairs: the fact, then ``exchanges`` rounds of small talk (about 2,000 tokens)."""
    history = [("user", FACT), ("assistant", "How exciting for her! Norway is beautiful.")]
    for i in range(exchanges):
        user, assistant = _SMALL_TALK[i % len(_SMALL_TALK)]
        history += [("user", f"{user} (note {i})"), ("assistant", assistant)]
    return history
