"""Long synthetic conversations with planted facts, for the recall benchmark.

A benchmark of memory needs conversations whose facts we know, long enough
that the facts leave the cache, and the same every time. So they are built in
code from a seed: everyday filler chat (templates filled from word lists)
with, here and there, a user message that states a fact (a *probe*) and, many
tokens later, a question about it.

Probes come in four kinds, each with its own way of being hard for a small
model and for retrieval: ``name`` (a rare surname), ``date`` (a day and a
month), ``code`` (passwords and numbers that only exact matching finds) and
``preference`` (a liked or disliked thing). Every probe has a *key*, the
string an answer must contain; keys never occur in the question or in any
filler message, so finding one in a reply means the fact was used.

Sessions reuse the same probe templates with different values ("my dentist
is called Dr. Okonkwo" in one, "Dr. Haverkamp" in another), so a recall that
leaks across sessions gets caught.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

KINDS = ("name", "date", "code", "preference")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

# -- filler ---------------------------------------------------------------------

SLOTS: dict[str, tuple[str, ...]] = {
    "dish": (
        "lentil soup",
        "a mushroom risotto",
        "a vegetable curry",
        "banana bread",
        "a tomato salad",
        "roast potatoes",
        "pancakes",
        "a bean chilli",
        "fried rice",
        "apple crumble",
        "a pasta bake",
        "an onion tart",
        "a leek and potato pie",
        "flatbreads",
    ),
    "plant": (
        "the tomatoes",
        "the basil",
        "the roses",
        "the ferns",
        "the apple tree",
        "the hedge",
        "the runner beans",
        "the sunflowers",
        "the rhubarb",
    ),
    "show": (
        "a detective series",
        "a cooking show",
        "a nature documentary",
        "an old western",
        "a space drama",
        "a quiz programme",
        "a sitcom about nurses",
        "a baking competition",
    ),
    "book": (
        "a novel about sailors",
        "a biography of a chess player",
        "a history of bridges",
        "a mystery set in a lighthouse",
        "a book about sleep",
        "a travel memoir about deserts",
        "a collection of short stories",
    ),
    "place": (
        "the coast",
        "the mountains",
        "my parents' village",
        "the lakes",
        "a small island",
        "the old harbour town",
        "the countryside",
        "a city we have never visited",
    ),
    "chore": (
        "fixing the leaking tap",
        "clearing out the garage",
        "repainting the fence",
        "sorting the recycling",
        "washing the windows",
        "assembling a bookshelf",
        "cleaning the oven",
        "ironing a pile of shirts",
    ),
    "sport": ("running", "swimming", "cycling", "yoga", "tennis", "climbing", "rowing", "hiking"),
    "weather": ("rainy", "windy", "foggy", "unusually warm", "cold and wet", "sunny but chilly", "stormy", "humid"),
    "pet": ("the dog", "our cat", "the neighbour's parrot", "my rabbit", "the old tomcat next door"),
    "feeling": ("tired", "a bit stressed", "pretty relaxed", "restless", "cheerful", "distracted", "sleepy"),
    "time": (
        "this morning",
        "last night",
        "over the weekend",
        "yesterday afternoon",
        "earlier today",
        "on the way home",
        "after lunch",
    ),
    "work": (
        "a long meeting",
        "a tricky spreadsheet",
        "a presentation",
        "a deadline",
        "a call with a client",
        "a budget review",
        "an office move",
    ),
}

USER_TEMPLATES = (
    "I went {sport} {time} and now I feel {feeling}.",
    "The weather has been {weather} all week, so {plant} are struggling.",
    "Do you have tips for {chore}? I keep putting it off.",
    "I cooked {dish} {time}; it turned out better than I expected.",
    "We are thinking about a short trip to {place} soon.",
    "I watched {show} {time} and could not stop.",
    "I'm reading {book} at the moment.",
    "{pet} woke me up really early {time}.",
    "Work was busy today: {work} took most of the afternoon.",
    "Any idea what to cook with leftover vegetables? Maybe {dish}?",
    "I spent {time} {chore}, and it took forever.",
    "How do I keep {plant} healthy when it is {weather}?",
    "Should I take up {sport} more seriously?",
    "It was {weather} {time}, so I stayed in and watched {show}.",
    "My friend recommended {book}. Is it worth it?",
    "I feel {feeling} today, probably because of {work}.",
    "We had {dish} for dinner and talked about going to {place}.",
    "Do you think {pet} gets bored when we are out?",
)
USER_OPENERS = ("", "", "", "Honestly, ", "So, ", "Anyway, ", "Hey, ", "Quick one: ")
USER_CLOSERS = ("", "", "", " What do you think?", " Any advice?", " Just thinking out loud.", " Does that sound odd?")

ASSISTANT_TEMPLATES = (
    "That sounds nice; {sport} is a great way to clear your head.",
    "When it is {weather}, water {plant} in the evening and mulch the soil around them.",
    "For {chore}, break it into small steps and start with the easiest part.",
    "Making {dish} is a good choice; a little lemon at the end brightens it up.",
    "A trip to {place} could be lovely; going midweek usually avoids the crowds.",
    "Lots of people enjoy {show}; it is easy to get hooked on an evening in.",
    "Reading {book} sounds interesting. Do you usually read before bed?",
    "Animals keep their own schedules. Maybe {pet} just wanted breakfast.",
    "Days with {work} can drain you. Try a short walk before the next task.",
    "It is fine to feel {feeling} after a week like that; rest helps more than people think.",
    "Good question. Keep it simple and do not be too hard on yourself.",
    "If it was {weather}, staying in with {show} sounds like the right call.",
    "Taking up {sport} more seriously could be fun; start with two sessions a week.",
    "Leftovers are perfect for {dish}; almost any vegetable works.",
)
ASSISTANT_CLOSERS = ("", "", " Let me know how it goes.", " I hope the rest of the day is calmer.", " Enjoy!")

ACKS = (
    "Thanks, I'll remember that.",
    "Got it, noted.",
    "Okay, I've made a note of that.",
    "Good to know, thank you.",
)
FACT_OPENERS = ("", "By the way, ", "Oh, before I forget: ", "Just so you know, ")


def _fill(template: str, rng: random.Random) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: rng.choice(SLOTS[m.group(1)]), template)


def _join(opener: str, sentence: str) -> str:
    """``opener + sentence`` with the sentence's first letter in the right case ("I" stays upper)."""
    if opener and not re.match(r"I\b", sentence):
        sentence = sentence[0].lower() + sentence[1:]
    text = opener + sentence
    return text[0].upper() + text[1:]


def filler_exchange(rng: random.Random) -> tuple[str, str]:
    """One everyday user message and an assistant reply (no digits, no months, no probe keys)."""
    user = _join(rng.choice(USER_OPENERS), _fill(rng.choice(USER_TEMPLATES), rng)) + rng.choice(USER_CLOSERS)
    reply = _join("", _fill(rng.choice(ASSISTANT_TEMPLATES), rng)) + rng.choice(ASSISTANT_CLOSERS)
    return user, reply


# -- probes ---------------------------------------------------------------------

SURNAMES = (
    "Okonkwo",
    "Haverkamp",
    "Szczepanik",
    "Abernethy",
    "Nakashima",
    "Lindqvist",
    "Castellanos",
    "Oyelaran",
    "Kowalczyk",
    "Rautenbach",
    "Delacroix",
    "Thorvaldsen",
    "Achterberg",
    "Quenneville",
    "Barraclough",
    "Mwangi",
    "Fairweather",
    "Petrakis",
    "Ostrowski",
    "Halloran",
    "Moravec",
    "Eriksen",
    "Valdivia",
    "Ramaswamy",
    "Okafor",
    "Kettering",
    "Ashdown",
    "Pemberton",
    "Villeneuve",
    "Grimaldi",
    "Fenwick",
    "Drummond",
    "Yilmaz",
    "Carvalho",
    "Brannigan",
    "Westerhuis",
    "Lachowicz",
    "Oduya",
    "Tremblay",
    "Sandoval",
)


@dataclass(frozen=True)
class ProbeTemplate:
    """A way to state a fact and ask about it; ``{value}`` is the fact, ``key`` what an answer must say."""

    kind: str
    name: str
    statement: str
    question: str
    values: Callable[[random.Random], str]

    def key(self, value: str) -> str:
        return value.removeprefix("The ")


def _pool(*values: str) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(values)


def _surname(rng: random.Random) -> str:
    return rng.choice(SURNAMES)


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)}"


def _digits(count: int) -> Callable[[random.Random], str]:
    return lambda rng: str(rng.randint(10 ** (count - 1), 10**count - 1))


def _letters(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(count))


def _wifi(rng: random.Random) -> str:
    return f"{_letters(rng, 2)}{rng.randint(2, 9)}-{rng.randint(1000, 9999)}"


def _tracking(rng: random.Random) -> str:
    return f"{_letters(rng, 2)}{rng.randint(10**7, 10**8 - 1)}"


TEMPLATES: dict[str, tuple[ProbeTemplate, ...]] = {
    "name": (
        ProbeTemplate("name", "dentist", "My dentist is called Dr. {value}.", "What is my dentist called?", _surname),
        ProbeTemplate(
            "name", "landlord", "Our landlord is a man called Mr. {value}.", "What is our landlord called?", _surname
        ),
        ProbeTemplate(
            "name",
            "piano_teacher",
            "My daughter's piano teacher is Mrs. {value}.",
            "What is the name of my daughter's piano teacher?",
            _surname,
        ),
        ProbeTemplate(
            "name",
            "plumber",
            "The plumber who fixed our boiler was called {value}.",
            "What was the plumber who fixed our boiler called?",
            _surname,
        ),
    ),
    "date": (
        ProbeTemplate("date", "wedding", "My sister's wedding is on {value}.", "When is my sister's wedding?", _date),
        ProbeTemplate("date", "passport", "My passport expires on {value}.", "When does my passport expire?", _date),
        ProbeTemplate(
            "date",
            "car_service",
            "The car is booked in for its service on {value}.",
            "When is the car booked in for its service?",
            _date,
        ),
        ProbeTemplate(
            "date", "anniversary", "Our wedding anniversary is on {value}.", "When is our wedding anniversary?", _date
        ),
    ),
    "code": (
        ProbeTemplate(
            "code", "wifi", "The wifi password at home is {value}.", "What is the wifi password at home?", _wifi
        ),
        ProbeTemplate("code", "locker", "My gym locker code is {value}.", "What is my gym locker code?", _digits(4)),
        ProbeTemplate(
            "code",
            "door",
            "The door code for the office is {value}.",
            "What is the door code for the office?",
            _digits(6),
        ),
        ProbeTemplate(
            "code", "parcel", "My parcel tracking number is {value}.", "What is my parcel tracking number?", _tracking
        ),
    ),
    "preference": (
        ProbeTemplate(
            "preference",
            "ingredient",
            "I can't stand {value}, so please never suggest recipes with it.",
            "Which ingredient can't I stand?",
            _pool(
                "coriander",
                "liquorice",
                "anchovies",
                "aubergine",
                "beetroot",
                "marzipan",
                "celery",
                "mayonnaise",
                "oysters",
                "capers",
                "sardines",
                "okra",
                "parsnips",
                "truffle oil",
            ),
        ),
        ProbeTemplate(
            "preference",
            "band",
            "My favourite band of all time is {value}.",
            "What is my favourite band of all time?",
            _pool(
                "The Velvet Lanterns",
                "Copper Owls",
                "The Midnight Ferries",
                "Paper Comets",
                "The Salt Pilots",
                "Glass Orchard",
                "The Lazy Meridians",
                "Neon Tortoise",
                "The Hollow Kites",
                "Marble Giants",
                "The Quiet Harbours",
                "Static Orchids",
            ),
        ),
        ProbeTemplate(
            "preference",
            "allergy",
            "I'm allergic to {value}, so keep that in mind.",
            "What am I allergic to?",
            _pool(
                "penicillin",
                "peanuts",
                "shellfish",
                "latex",
                "sesame",
                "kiwi fruit",
                "walnuts",
                "ibuprofen",
                "wasp stings",
                "hazelnuts",
                "soy",
                "mustard seeds",
            ),
        ),
        ProbeTemplate(
            "preference",
            "colour",
            "My favourite colour is {value}.",
            "What is my favourite colour?",
            _pool(
                "turquoise",
                "maroon",
                "lavender",
                "ochre",
                "crimson",
                "teal",
                "saffron yellow",
                "emerald green",
                "coral",
                "burgundy",
                "mint green",
                "indigo",
            ),
        ),
    ),
}
MAX_FACTS_PER_KIND = min(len(templates) for templates in TEMPLATES.values())
MAX_SESSIONS = 12  # the smallest value pool has 12 entries; keys must be unique across sessions
MIN_GAP_WINDOWS = 1.5  # a question comes at least this many windows of messages after its fact
MIN_WINDOWS = 4 * MIN_GAP_WINDOWS  # facts in the first half, questions after them: room for both


@dataclass(frozen=True)
class Probe:
    """A planted fact and the question that tests it."""

    probe_id: str
    session: int
    kind: str
    template: str
    fact: str  # the user message that states it
    ack: str  # the assistant's reply to it
    question: str
    key: str  # what a correct answer contains


@dataclass(frozen=True)
class Step:
    """One step of a scripted conversation: a message to ingest, or (role ``ask``) a question to answer."""

    role: str
    text: str
    probe: str | None = None  # set on a probe's fact message and on its question


@dataclass
class SessionScript:
    """One conversation: its steps in order, its probes, and where each probe sits in tokens."""

    index: int
    steps: list[Step]
    probes: list[Probe]
    tokens: int  # tokens of the ingested messages (questions and replies come on top)
    fact_end: dict[str, int] = field(default_factory=dict)  # probe id -> token position after its fact + ack
    asked_at: dict[str, int] = field(default_factory=dict)  # probe id -> token position of its question

    def gap(self, probe_id: str) -> int:
        """Tokens ingested between the end of a fact's exchange and its question."""
        return self.asked_at[probe_id] - self.fact_end[probe_id]


CountTokens = Callable[[str, str, bool], int]  # (role, text, first message?) -> tokens the engine prefills


def chat_token_counter(tokenizer) -> CountTokens:
    """Exactly what :meth:`StreamingLM.add_message` prefills for a message (template framing included)."""
    from streamrag.prompt import ChatFormat

    chat_format = ChatFormat(tokenizer)
    return lambda role, text, first: len(chat_format.message(role, text, first=first))


def draw_probes(sessions: int, facts_per_kind: int, seed: int) -> list[list[Probe]]:
    """Per session, ``facts_per_kind`` probes of each kind; every key unique across all sessions.

    Session ``s`` uses templates ``s, s+1, ...`` of each kind (rotating), so
    neighbouring sessions share templates with different values.
    """
    if not 1 <= facts_per_kind <= MAX_FACTS_PER_KIND:
        raise ValueError(f"facts per kind must be between 1 and {MAX_FACTS_PER_KIND}, not {facts_per_kind}")
    if not 1 <= sessions <= MAX_SESSIONS:
        raise ValueError(f"sessions must be between 1 and {MAX_SESSIONS}, not {sessions}")
    rng = random.Random(f"probes-{seed}")
    used: set[str] = set()
    result: list[list[Probe]] = []
    for session in range(sessions):
        probes: list[Probe] = []
        for kind in KINDS:
            templates = TEMPLATES[kind]
            for j in range(facts_per_kind):
                template = templates[(session + j) % len(templates)]
                for _ in range(1000):
                    value = template.values(rng)
                    key = template.key(value)
                    if key.lower() not in used:
                        break
                else:  # pragma: no cover - pools are sized for MAX_SESSIONS
                    raise RuntimeError(f"ran out of values for probe template {template.name}")
                used.add(key.lower())
                fact = _join(rng.choice(FACT_OPENERS), template.statement.format(value=value))
                if key.lower() in template.question.lower():
                    raise AssertionError(f"the question of {template.name} gives its answer away")
                probes.append(
                    Probe(
                        probe_id=f"s{session}-{template.name}",
                        session=session,
                        kind=kind,
                        template=template.name,
                        fact=fact,
                        ack=rng.choice(ACKS),
                        question=template.question,
                        key=key,
                    )
                )
        result.append(probes)
    return result


def _mentions_key(text: str, keys: list[str]) -> bool:
    lowered = text.lower()
    return any(key in lowered for key in keys)


def build_conversations(
    count_tokens: CountTokens,
    *,
    sessions: int,
    facts_per_kind: int,
    windows: float,
    capacity: int,
    seed: int = 0,
    min_gap_windows: float = MIN_GAP_WINDOWS,
) -> list[SessionScript]:
    """Scripts of ``sessions`` conversations, each at least ``windows * capacity`` tokens of ingested messages.

    Facts are planted in the first half; each question comes at least
    ``min_gap_windows`` windows of ingested tokens after its fact (so the fact
    has certainly left a cache of ``capacity`` tokens), at a random later point.
    """
    if windows < 4 * min_gap_windows:
        raise ValueError(f"conversations of {windows} windows are too short; use at least {4 * min_gap_windows}")
    all_probes = draw_probes(sessions, facts_per_kind, seed)
    keys = [p.key.lower() for probes in all_probes for p in probes]
    min_gap = math.ceil(min_gap_windows * capacity)
    return [
        _build_session(index, probes, count_tokens, keys, windows * capacity, min_gap, seed)
        for index, probes in enumerate(all_probes)
    ]


def _build_session(
    index: int,
    probes: list[Probe],
    count_tokens: CountTokens,
    keys: list[str],
    target_tokens: float,
    min_gap: int,
    seed: int,
) -> SessionScript:
    rng = random.Random(f"conversation-{seed}-{index}")

    def exchange() -> tuple[str, str]:
        while True:  # no filler message may contain any probe's key (of any session)
            user, reply = filler_exchange(rng)
            if not _mentions_key(user + "\n" + reply, keys):
                return user, reply

    exchanges: list[tuple[str, str]] = []
    starts: list[int] = []  # token position where each exchange starts
    total = 0

    def append_exchange() -> None:
        nonlocal total
        user, reply = exchange()
        starts.append(total)
        total += count_tokens("user", user, not exchanges) + count_tokens("assistant", reply, False)
        exchanges.append((user, reply))

    while total < target_tokens:
        append_exchange()
    length = total

    # Events sit between exchanges, at most one per boundary: ("fact", probe) or ("ask", probe).
    events: dict[int, tuple[str, Probe]] = {}

    def free_boundary(position: float) -> int:
        boundary = next((i for i, start in enumerate(starts) if start >= position), len(starts))
        while boundary in events or boundary >= len(exchanges):
            if boundary >= len(exchanges):
                append_exchange()
            else:
                boundary += 1
        return boundary

    order = probes[:]
    rng.shuffle(order)
    plants = sorted(rng.uniform(0.02, 0.5) * length for _ in order)
    for probe, position in zip(order, plants):
        planted = free_boundary(position)
        events[planted] = ("fact", probe)
        earliest = starts[planted] + min_gap
        events[free_boundary(rng.uniform(earliest, max(earliest, 0.97 * length)))] = ("ask", probe)

    steps: list[Step] = []
    for i, (user, reply) in enumerate(exchanges):
        event = events.get(i)
        if event and event[0] == "fact":
            steps += [Step("user", event[1].fact, event[1].probe_id), Step("assistant", event[1].ack)]
        elif event:
            steps.append(Step("ask", event[1].question, event[1].probe_id))
        steps += [Step("user", user), Step("assistant", reply)]

    script = SessionScript(index=index, steps=steps, probes=probes, tokens=0)
    position = 0
    for number, step in enumerate(steps):
        if step.role == "ask":
            script.asked_at[step.probe] = position
            continue
        position += count_tokens(step.role, step.text, number == 0)
        if step.role == "assistant" and number and steps[number - 1].probe:
            script.fact_end[steps[number - 1].probe] = position
    script.tokens = position
    for probe in probes:
        if script.gap(probe.probe_id) < min_gap:  # pragma: no cover - guaranteed by the placement above
            raise AssertionError(f"probe {probe.probe_id} is asked only {script.gap(probe.probe_id)} tokens later")
    return script


# -- answers --------------------------------------------------------------------

_ORDINAL = r"(?:st|nd|rd|th)?"


def answer_pattern(probe: Probe) -> re.Pattern[str]:
    """What counts as stating the key in a reply (case-insensitive).

    Names and preferences: the key as whole words. Dates: the day and month
    in either order, with or without an ordinal suffix or "of" ("14 September",
    "September 14th", "the 14th of September"). Codes: the characters in order,
    optionally separated by spaces or hyphens, not part of a longer code.
    """
    key = probe.key
    if probe.kind == "date":
        day, month = key.split()
        return re.compile(
            rf"(?<!\d){day}{_ORDINAL}\s+(?:of\s+)?{month}\b|\b{month}\s+(?:the\s+)?{day}{_ORDINAL}(?!\d)", re.IGNORECASE
        )
    if probe.kind == "code":
        chars = [c for c in key if c.isalnum()]
        body = r"[\s-]?".join(re.escape(c) for c in chars)
        return re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])", re.IGNORECASE)
    words = r"\s+".join(re.escape(word) for word in key.split())
    return re.compile(rf"\b{words}\b", re.IGNORECASE)


def answer_is_correct(probe: Probe, reply: str) -> bool:
    return answer_pattern(probe).search(reply) is not None
