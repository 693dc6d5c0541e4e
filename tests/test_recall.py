"""The recall policy on small conversations: one test per behaviour of the memory block.

Each builds a tiny archive and transcript by hand (no language model), so
what is checked is the policy: neighbour turns, newest versions first, dates
and speakers, periods named in the question, names in the question, repeats,
the budget.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streamrag.archive import Archive
from streamrag.chunking import Chunk, chunk_id
from streamrag.config import ArchiveSettings, RecallSettings
from streamrag.recall import RecallPolicy
from streamrag.transcript import NewMessage, Transcript

SESSION = "s1"
FILLER = [
    ("Tom", "The train was late again this morning, so I missed the first meeting."),
    ("Maya", "Lunch was a sandwich with cheese, tomato and a little mustard."),
    ("Tom", "The garden needs watering; the roses look tired in the heat."),
    ("Maya", "My brother plays the cello in an amateur orchestra on Sundays."),
    ("Tom", "We might paint the kitchen a pale green colour next spring."),
    ("Maya", "The football match ended in a draw after a very slow second half."),
]


def day(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


class Conversation:
    """Messages said by two people, stored in a transcript and (as if evicted) in the archive."""

    def __init__(self, tmp_path, **recall):
        self.transcript = Transcript(tmp_path / "t.sqlite3")
        self.archive = Archive(ArchiveSettings(), tmp_path)
        settings = RecallSettings(timezone="UTC", **recall)
        self.policy = RecallPolicy(settings, self.archive, lambda text: len(text.split()), window_tokens=2000)
        self.ids: dict[str, str] = {}

    def say(self, key: str, speaker: str, text: str, when: float, archive: bool = True) -> str:
        role = "user" if speaker == "Maya" else "assistant"
        stored = self.transcript.append_many(
            SESSION, [NewMessage(role, text, 1, meta={"name": speaker}, created_at=when)]
        )[0]
        self.ids[key] = stored.message_id
        if archive:
            context = self.transcript.contexts([stored.message_id], 280, questions_only=True).get(stored.message_id, "")
            chunk = Chunk(chunk_id(SESSION, stored.message_id, 0), text, SESSION, stored.message_id, role, 1, 0,
                          len(text), True, when, speaker, context)  # fmt: skip
            self.archive.upsert([chunk])
        return stored.message_id

    def filler(self, start: float) -> None:
        for i, (speaker, text) in enumerate(FILLER):
            self.say(f"filler{i}", speaker, text, start + 60 * i)

    def recall(self, question: str, now: float, **kwargs):
        return self.policy.recall(
            SESSION, question, now=now, neighbours=self.transcript.neighbours, speakers={"Maya", "Tom"}, **kwargs
        )


def test_a_short_answer_comes_with_the_question_it_answers(tmp_path):
    talk = Conversation(tmp_path)
    talk.filler(day("2023-05-01 09:00"))
    talk.say("ask", "Tom", "What did you end up naming the puppy?", day("2023-05-02 10:00"))
    talk.say("answer", "Maya", "Biscuit! The kids picked it.", day("2023-05-02 10:01"))
    result = talk.recall("What is the name of Maya's dog?", now=day("2023-06-01 12:00"))
    assert talk.ids["answer"] in {m.message_id for m in result.memories}
    lines = result.block.splitlines()
    asked = next(i for i, line in enumerate(lines) if "naming the puppy" in line)
    answered = next(i for i, line in enumerate(lines) if "Biscuit!" in line)
    assert asked == answered - 1  # in conversation order, the question right before its answer


def test_the_newest_version_of_a_fact_ranks_first_and_the_older_is_marked(tmp_path):
    talk = Conversation(tmp_path)
    talk.filler(day("2023-05-01 09:00"))
    talk.say("old", "Maya", "My gym locker code is 4471, by the way.", day("2023-05-03 18:00"))
    talk.filler(day("2023-05-10 09:00"))
    talk.say("new", "Maya", "They reassigned the lockers at the gym, my code is 9902 now.", day("2023-05-20 18:00"))
    result = talk.recall("What is Maya's gym locker code?", now=day("2023-06-01 12:00"))
    ranked = [m.message_id for m in result.memories]
    assert ranked.index(talk.ids["new"]) < ranked.index(talk.ids["old"])
    old_line = next(line for line in result.block.splitlines() if "4471" in line)
    new_line = next(line for line in result.block.splitlines() if "9902" in line)
    assert "(earlier)" in old_line and "(earlier)" not in new_line


def test_a_newer_version_still_in_the_window_marks_the_recalled_one_earlier(tmp_path):
    talk = Conversation(tmp_path)
    talk.filler(day("2023-05-01 09:00"))
    talk.say("old", "Maya", "My gym locker code is 4471, by the way.", day("2023-05-03 18:00"))
    talk.say("new", "Maya", "They reassigned the lockers at the gym, my code is 9902 now.", day("2023-05-20 18:00"),
             archive=False)  # fmt: skip
    window = talk.transcript.messages(SESSION)[-1:]
    result = talk.recall("What is Maya's gym locker code?", now=day("2023-06-01 12:00"), window=window)
    assert "(earlier)" in next(line for line in result.block.splitlines() if "4471" in line)
    plain = talk.recall("What is Maya's gym locker code?", now=day("2023-06-01 12:00"))
    assert "(earlier)" not in plain.block  # nothing newer known: not marked


def test_every_line_says_when_and_who(tmp_path):
    talk = Conversation(tmp_path)
    talk.filler(day("2023-05-01 09:00"))
    talk.say("fact", "Maya", "I ran my first half marathon yesterday, in 1:58!", day("2023-05-08 14:00"))
    result = talk.recall("When did Maya run her first half marathon?", now=day("2023-06-01 12:00"))
    assert "[8 May 2023] Maya: I ran my first half marathon yesterday, in 1:58!" in result.block.splitlines()
    assert all(line.startswith("[") for line in result.block.splitlines()[1:])


def test_a_period_named_in_the_question_brings_what_was_said_then(tmp_path):
    talk = Conversation(tmp_path, top_k=1)
    talk.say("march", "Maya", "We went to the coast and walked for hours.", day("2023-03-05 10:00"))
    talk.say("may", "Maya", "We went to the lake and walked around it twice.", day("2023-05-23 10:00"))
    question = "Where did we go for a walk last week?"
    result = talk.recall(question, now=day("2023-05-31 12:00"))
    assert result.time_range is not None and result.time_range.phrase == "last week"
    assert [m.message_id for m in result.memories] == [talk.ids["may"]]
    earlier = talk.recall("Where did we go for a walk in March?", now=day("2023-05-31 12:00"))
    assert [m.message_id for m in earlier.memories] == [talk.ids["march"]]


def test_a_named_speaker_is_searched_by_content_and_boosted(tmp_path, monkeypatch):
    talk = Conversation(tmp_path)
    talk.filler(day("2023-05-01 09:00"))
    talk.say("maya", "Maya", "Every weekend I am out on the river with my fishing rod.", day("2023-05-02 10:00"))
    talk.say("tom", "Tom", "Every weekend I am out on the river with my kayak.", day("2023-05-02 10:01"))
    asked = []
    search = talk.archive.search_many
    monkeypatch.setattr(
        talk.archive, "search_many", lambda s, qs, *a, **kw: asked.extend(qs) or search(s, qs, *a, **kw)
    )
    found, *_ = talk.policy.candidates(
        SESSION, "Which pastime fills Maya's weekends?", now=day("2023-06-01 12:00"), speakers={"Maya", "Tom"}
    )
    assert asked and all("Maya" not in q and "their weekends" in q for q in asked)
    ranked = [m.message_id for m in found]
    assert ranked.index(talk.ids["maya"]) < ranked.index(talk.ids["tom"])
    score = {m.message_id: m for m in found}
    maya, tom = score[talk.ids["maya"]], score[talk.ids["tom"]]
    assert maya.score - tom.score >= talk.policy.settings.speaker_boost - abs(maya.similarity - tom.similarity)


def test_repeats_are_shown_once_and_the_budget_holds(tmp_path):
    talk = Conversation(tmp_path, budget_fraction=0.02)  # 40 words
    talk.filler(day("2023-05-01 09:00"))
    for i in range(3):
        talk.say(
            f"bye{i}", "Tom", "Bye for now! Let me know how the cello concert goes.", day(f"2023-05-0{i + 2} 10:00")
        )
    result = talk.recall("How did the cello concert go?", now=day("2023-06-01 12:00"))
    assert sum("Bye for now" in line for line in result.block.splitlines()) == 1
    assert sum(len(line.split()) + 1 for line in result.block.splitlines()) <= 40 + 1
    assert result.block_tokens <= talk.policy.budget_tokens


def test_scores_are_absolute_and_unrelated_questions_recall_little(tmp_path):
    talk = Conversation(tmp_path, min_score=0.35)
    talk.filler(day("2023-05-01 09:00"))
    talk.say("fact", "Maya", "My sister Lena moved to Porto last spring.", day("2023-05-02 10:00"))
    right = talk.recall("Where does Maya's sister live now?", now=day("2023-06-01 12:00"))
    assert right.memories[0].message_id == talk.ids["fact"]
    assert right.memories[0].score == pytest.approx(right.memories[0].score) and 0.35 <= right.memories[0].score <= 1.2
    unrelated = talk.recall("Which volcano erupted in 1815?", now=day("2023-06-01 12:00"))
    assert unrelated.memories == [] and unrelated.block == ""
