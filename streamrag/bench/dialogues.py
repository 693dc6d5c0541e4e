"""Long, dated, two-person dialogues with annotated questions, for the memory benchmark.

A memory system is only worth its cost if, weeks of conversation later, it can
bring back the one turn that answers a question. Measuring that needs
conversations whose facts and answers we know turn by turn, long enough that
they cannot sit in a model's window, and the same on every run. LoCoMo, the
public benchmark of this kind, is a few hundred turns between two people over
a few dozen dated sessions, with questions annotated with the turn ids that
hold the evidence. This module builds conversations in its image from a seed,
without a model and without the network, so ``streamrag bench memory`` can
score retrieval (were the evidence turns recalled?) and answers (does the
reply contain an accepted answer?).

What makes the benchmark honest rather than easy:

* Ordinary chat fills the gaps (greetings, work, food, weather, reactions,
  follow-up questions), drawn from many templates and word lists, and it is
  *topically close* to the facts: a dialogue where someone ran a half marathon
  also talks about running clubs and sore legs, a dialogue with a puppy's
  name also talks about other people's pets. Those turns are hard negatives
  for retrieval. No filler turn contains an answer.
* Facts are said in the first person inside chat, often wrapped in other
  words, sometimes as the reply to the other person's question, and the other
  person reacts without repeating the answer.
* Seven kinds of question, each hard in its own way (see ``KINDS``):
  ``single_hop`` (one turn), ``multi_hop`` (two turns from two sessions, the
  answer in one and the link to the question in the other), ``temporal``
  (the answer is a date that only follows from the turn's timestamp and a
  relative expression such as "last Saturday"), ``update`` (a value stated
  and later changed; only the newest counts and the older turns are
  annotated as ``stale``), ``paraphrase`` (the question shares almost no
  words with the evidence), ``exact_code`` (a code said once, which only
  exact matching finds) and ``inference`` (a yes/no judgement from what was
  said, in words far from the question's).

Everything a value touches is checked while the dialogue is built: an answer
occurs only in its own evidence turns, a code occurs exactly once, a stale
turn never contains the newest value, and filler never contains any fact's
value. A dialogue that fails a check is rebuilt from the next attempt's seed,
so the output stays a pure function of the arguments.
"""

from __future__ import annotations

import logging
import random
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from streamrag.bench.conversations import MONTHS

logger = logging.getLogger(__name__)

KINDS = ("single_hop", "multi_hop", "temporal", "update", "paraphrase", "exact_code", "inference")

# -- public types -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """One thing one person said.

    ``turn_id`` is ``D{dialogue}:S{session}:T{index}`` (all 1-based, as in LoCoMo's ``D1:3``), unique across
    every dialogue that ``build_dialogues`` returns. ``role`` is ``"user"`` for the dialogue's first speaker and
    ``"assistant"`` for the second, so a chat template can replay the dialogue as it is: turns alternate over the
    whole dialogue, session boundaries included.
    """

    turn_id: str
    speaker: str
    role: str
    text: str
    timestamp: float


@dataclass(frozen=True)
class DatedSession:
    """One sitting of the conversation: its start (timezone-aware UTC) and its turns, about a minute apart."""

    index: int
    started: datetime
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Question:
    """A question about the dialogue, its accepted answers and the turns that hold the evidence.

    ``answers`` are aliases: a reply is correct when any of them occurs in it (see ``answer_is_correct``).
    ``evidence`` lists the turn ids that hold the answer (for ``multi_hop`` one per session involved; for
    ``inference`` the turns that justify the judgement). ``stale`` (``update`` only) lists the turns with older
    values that the newest one replaced: a system that recalls them and not the evidence answers wrongly.
    """

    question_id: str
    kind: str
    text: str
    answers: tuple[str, ...]
    evidence: tuple[str, ...]
    stale: tuple[str, ...] = ()
    asked_at: float = 0.0


@dataclass(frozen=True)
class Dialogue:
    """A long conversation between two people over dated sessions, and the questions asked after it."""

    dialogue_id: int
    speakers: tuple[str, str]
    sessions: tuple[DatedSession, ...]
    questions: tuple[Question, ...]

    def turns(self) -> list[Turn]:
        """Every turn of every session, in the order they were said."""
        return [turn for session in self.sessions for turn in session.turns]


# -- dates said relatively -----------------------------------------------------------------------------------------

_MONTHS = MONTHS
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DAYS_AGO = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
# Longest alternatives first, so "the day before yesterday" is one expression, not a "yesterday".
_RELATIVE_RE = re.compile(
    r"\b(?:today|this morning|the day before yesterday|yesterday|(?:two|three|four|five|six) days ago|a week ago"
    r"|last (?:monday|tuesday|wednesday|thursday|friday|saturday|sunday))\b",
    re.IGNORECASE,
)


def find_relative_expressions(text: str) -> list[str]:
    """The relative day expressions in ``text`` ("yesterday", "last saturday", ...), lower-cased, in order."""
    return [match.group(0).lower() for match in _RELATIVE_RE.finditer(text)]


def days_back(expression: str, said_on: date) -> int:
    """How many days before ``said_on`` the day that ``expression`` names is.

    "last <weekday>" is the most recent such weekday strictly before the day it was said, which is how the
    generator uses it (always two to six days back, so it never means "yesterday" or "a week ago").
    """
    expression = expression.lower()
    if expression in ("today", "this morning"):
        return 0
    if expression == "yesterday":
        return 1
    if expression == "the day before yesterday":
        return 2
    if expression == "a week ago":
        return 7
    words = expression.split()
    if expression.endswith(" days ago") and words[0] in _DAYS_AGO:
        return _DAYS_AGO[words[0]]
    if words[0] == "last" and len(words) == 2:
        target = [day.lower() for day in _WEEKDAYS].index(words[1])
        return (said_on.weekday() - target - 1) % 7 + 1
    raise ValueError(f"not a relative day expression: {expression!r}")


def resolve_relative_date(text: str, said_at: float) -> date:
    """The calendar day (UTC) that the one relative expression in ``text``, said at ``said_at``, refers to.

    This is how a temporal question's answer follows from its evidence turn; it raises ``ValueError`` unless
    the text holds exactly one relative expression.
    """
    found = find_relative_expressions(text)
    if len(found) != 1:
        raise ValueError(f"expected one relative day expression, found {found!r} in {text!r}")
    said_on = datetime.fromtimestamp(said_at, UTC).date()
    return said_on - timedelta(days=days_back(found[0], said_on))


def date_answers(day: date) -> tuple[str, ...]:
    """The written forms of ``day`` that count as a correct answer ("7 May 2023", "May 7, 2023", "May 7", ...)."""
    month = _MONTHS[day.month - 1]
    n = day.day
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return (
        f"{n} {month} {day.year}",
        f"{month} {n}, {day.year}",
        f"{month} {n}",
        f"{n} {month}",
        f"{n}{suffix} {month}",
        f"{n}{suffix} of {month}",
        day.isoformat(),
    )


# -- scoring ------------------------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u2013", "-").replace("\u2014", "-")
    return re.sub(r"\s+", " ", text.lower()).strip()


def _answer_pattern(answer: str) -> re.Pattern[str]:
    """A case-insensitive pattern for ``answer`` that respects word starts.

    A bare substring test would find "no" in "know" and "May 1" in "May 17", so the answer must start a word
    and, when it ends in a digit or is a word of three letters or fewer ("yes", "no"), end one too. Longer
    words may run on ("beagle" in "beagles", "swim" in "swimming"). Spaces and hyphens inside an answer match
    any run of spaces and hyphens, or none, so "QX7-2291" also matches "QX7 2291".
    """
    answer = _normalise(answer)
    pieces = [re.escape(piece) for piece in re.split(r"[\s-]+", answer) if piece]
    body = r"[\s-]*".join(pieces)
    left = r"(?<![a-z0-9])" if answer[:1].isalnum() else ""
    if answer[-1:].isdigit():
        right = r"(?![0-9])"
    elif len(answer) <= 3 and answer[-1:].isalpha():
        right = r"(?![a-z])"
    else:
        right = ""
    return re.compile(left + body + right)


def answer_is_correct(reply: str, question: Question) -> bool:
    """Whether ``reply`` contains any of ``question``'s accepted answers (case-insensitive, at a word start)."""
    text = _normalise(reply)
    return any(_answer_pattern(answer).search(text) for answer in question.answers if answer.strip())


# -- fact templates -----------------------------------------------------------------------------------------------
# Placeholders: {v} the value, {V} the value capitalised, {av} the value with "a"/"an", {n} a second name
# (multi_hop), {old} the value an update replaces, {when}/{When} a relative day (temporal, filled once the turn's
# time is known). Questions use {P} (the person's name) and {pos} (her/his).


@dataclass(frozen=True)
class _StatementTemplate:
    """A fact stated once (single_hop, paraphrase, exact_code, temporal)."""

    key: str
    topic: str
    mood: str
    question: str
    says: tuple[str, ...]
    pool: str = ""
    # (lead said first by the owner or "", the other person's question, the owner's reply holding the fact)
    asked: tuple[tuple[str, str, str], ...] = ()
    follow: tuple[tuple[str, str], ...] = ()
    group: str = ""
    with_surname: bool = False  # also accept the last word of the value ("Pratchett" for "Terry Pratchett")
    clash_value: bool = False  # the owner must not be heard enjoying the value elsewhere (a disliked food)


@dataclass(frozen=True)
class _BridgeTemplate:
    """A multi_hop fact: the first turn holds the answer, the second links it to what the question asks."""

    key: str
    topic: str
    question: str
    pool: str
    first: tuple[str, ...]
    second: tuple[str, ...]
    name_pool: str = ""
    second_mood: str = "good"
    follow_first: tuple[tuple[str, str], ...] = ()
    follow_second: tuple[tuple[str, str], ...] = ()
    group: str = ""
    with_surname: bool = False


@dataclass(frozen=True)
class _UpdateTemplate:
    """A value stated, then changed once or twice in later sessions, each time in other words."""

    key: str
    topic: str
    question: str
    pool: str
    first: tuple[str, ...]
    changes: tuple[str, ...]
    follow: tuple[tuple[str, str], ...] = ()
    group: str = ""


@dataclass(frozen=True)
class _InferenceTemplate:
    """A yes/no judgement that follows from one or two turns worded far from the question."""

    key: str
    topic: str
    question: str
    answer: str
    phrase: str  # a short phrase of the first evidence turn, accepted as an answer too
    parts: tuple[tuple[str, ...], ...]
    clash: tuple[str, ...] = ()  # words the owner must not be heard saying elsewhere (they would contradict)
    mood: str = "info"
    follow: tuple[tuple[str, str], ...] = ()
    group: str = ""


_SINGLE_HOP = (
    _StatementTemplate(
        key="puppy_name",
        topic="pets",
        mood="good",
        pool="pet_name",
        group="dog",
        question="What is the name of {P}'s puppy?",
        says=(
            "We brought home a puppy at the weekend and named him {v}, he has already eaten a sock.",
            "Our new puppy is called {v}, he's a tiny ball of chaos and I adore him.",
        ),
        asked=(
            (
                "We brought home a puppy from my aunt's farm, he has already chewed through a shoe.",
                "A puppy! I need all the details. What did you call him?",
                "{v}! My partner picked it and honestly it suits him.",
            ),
        ),
        follow=(
            ("How is the house-training going?", "Slowly. Very slowly. We have bought a lot of kitchen roll."),
            ("Is he sleeping through the night yet?", "Almost, he only cries once before dawn now, which is progress."),
        ),
    ),
    _StatementTemplate(
        key="holiday_place",
        topic="travel",
        mood="good",
        pool="island",
        question="Where did {P} go on holiday?",
        says=(
            "Just got back from ten days in {v}, I'm still unpacking and still a bit sunburnt.",
            "We spent our holiday in {v} and I already want to go back.",
        ),
        asked=(
            (
                "",
                "You're back! Where did you end up going on holiday?",
                "{v}! Ten days of hiking and far too much bread.",
            ),
        ),
        follow=(
            (
                "What was the best thing you ate?",
                "Some little honey pastries from the harbour, I still dream about them.",
            ),
            ("Would you go back?", "In a heartbeat, we're already looking at next summer."),
        ),
    ),
    _StatementTemplate(
        key="favourite_author",
        topic="books_tv",
        mood="info",
        pool="author",
        with_surname=True,
        question="Who is {P}'s favourite author?",
        says=(
            "My favourite author is {v}, I have read everything they wrote at least twice.",
            "I'm rereading {v} for the third time, nobody else comes close for me.",
        ),
        asked=(
            (
                "",
                "Who is your all-time favourite writer? I need something new to read.",
                "Easy, {v}. Start with anything, you can't go wrong.",
            ),
        ),
        follow=(
            ("Which book should I start with?", "The early ones, honestly, they're shorter and a bit funnier."),
            ("What do you love about the writing?", "The way small everyday moments suddenly hit you really hard."),
        ),
    ),
    _StatementTemplate(
        key="potluck_dish",
        topic="food",
        mood="good",
        pool="potluck",
        question="What dish is {P} bringing to the street potluck?",
        says=("I'm bringing {v} to the street potluck, it's my grandmother's recipe so no pressure at all.",),
        asked=(
            (
                "",
                "Are you cooking something for the street potluck?",
                "Yes, {v}, my grandmother's recipe. Wish me luck.",
            ),
        ),
        follow=(
            ("Is it hard to make?", "Not really, it just takes forever and makes a huge mess of the kitchen."),
            ("Will you save me some?", "If there's any left over, but I'm not promising anything."),
        ),
    ),
    _StatementTemplate(
        key="night_course",
        topic="learning",
        mood="good",
        pool="course",
        question="What night course did {P} sign up for?",
        says=("I signed up for a night course in {v} at the community college, the first session was great.",),
        asked=(
            (
                "",
                "Did you end up signing up for an evening class?",
                "I did! {V}, once a week at the community college.",
            ),
        ),
        follow=(
            (
                "Are the other people in the class nice?",
                "Really nice, a proper mix of ages, and the teacher is hilarious.",
            ),
            ("Was it hard to get started?", "A little, I felt very clumsy at first, but it gets easier each week."),
        ),
    ),
    _StatementTemplate(
        key="partner_name",
        topic="family",
        mood="info",
        pool="kin_name",
        question="What is the name of {P}'s partner?",
        says=(
            "My partner {v} is cooking tonight, which means we're having pasta again.",
            "{v}, my partner, has decided we're doing a jigsaw every night this month.",
        ),
        asked=(
            (
                "",
                "I don't think I ever asked, what's your partner's name?",
                "{v}! We've been together about six years now.",
            ),
        ),
        follow=(
            (
                "How did you two meet?",
                "At a friend's terrible birthday party, we were the only two who stayed to help tidy up.",
            ),
        ),
    ),
    _StatementTemplate(
        key="football_team",
        topic="fitness",
        mood="good",
        pool="team",
        question="What is the name of {P}'s five-a-side football team?",
        says=(
            "I play five-a-side with a team called the {v} every week, we lose a lot but the pub afterwards is great.",
        ),
        asked=(
            ("", "What's your football team called again?", "The {v}. Don't laugh, somebody's kid came up with it."),
        ),
        follow=(("Did you win this week?", "We drew, which for us is basically a trophy."),),
    ),
    _StatementTemplate(
        key="binge_show",
        topic="books_tv",
        mood="good",
        pool="show",
        question="Which series has {P} been binge-watching?",
        says=("I'm completely hooked on {v}, I watched the whole season in two nights.",),
        asked=(
            (
                "",
                "Watching anything good? I've completely run out of things.",
                "You have to watch {v}. I finished it in two nights.",
            ),
        ),
        follow=(("Is it scary? I'm a total wimp.", "Not scary, just tense. You'll be absolutely fine."),),
    ),
    _StatementTemplate(
        key="brother_fiance",
        topic="family",
        mood="good",
        pool="kin_name",
        question="Who is {P}'s brother engaged to?",
        says=("My brother just got engaged to {v}, we all knew it was coming but I still cried.",),
        asked=(
            (
                "My brother finally proposed at the weekend, I'm so happy for him!",
                "Oh my goodness! Remind me, who is the lucky one?",
                "{v}! They've been together forever, everyone is thrilled.",
            ),
        ),
        follow=(("Have they set a date?", "Not yet, but my mum is already looking at hats."),),
    ),
)

_PARAPHRASE = (
    _StatementTemplate(
        key="adopted_breed",
        topic="pets",
        mood="good",
        pool="breed",
        group="dog",
        question="What breed of pet did {P} bring home?",
        says=("I finally adopted a little {v} from the shelter, he sleeps on my feet every night.",),
        follow=(("Is he settling in okay?", "Slowly, he's still suspicious of the hoover, but he's getting braver."),),
    ),
    _StatementTemplate(
        key="heirloom_instrument",
        topic="music",
        mood="info",
        pool="heirloom",
        group="instrument",
        question="What instrument did {P} inherit?",
        says=("My grandmother left me her old {v}, it takes up half the living room.",),
        follow=(("Do you know how to play it?", "Barely, but I've started watching tutorials in the evenings."),),
    ),
    _StatementTemplate(
        key="evening_language",
        topic="learning",
        mood="info",
        pool="language",
        question="Which foreign language is {P} picking up?",
        says=("I've been going to evening classes in {v}, my pronunciation is still tragic.",),
        follow=(
            ("Is the teacher patient with you?", "Incredibly, she just smiles and makes me repeat it five times."),
        ),
    ),
    _StatementTemplate(
        key="knee_sport",
        topic="fitness",
        mood="bad",
        pool="sport",
        question="Which activity did {P} take up on medical advice?",
        says=("My physio says concrete is wrecking my knees, so it's only {v} for me until the summer.",),
        follow=(
            ("Are you missing your old routine?", "A bit, but my knees have stopped clicking, so I can't complain."),
        ),
    ),
    _StatementTemplate(
        key="gift_tickets",
        topic="music",
        mood="good",
        pool="band",
        group="crowds",
        question="Which act will {P} watch perform thanks to a present?",
        says=("My partner surprised me with tickets to see {v} live, I actually screamed.",),
        follow=(("When is it?", "Not for ages, which is torture, but I'm counting down."),),
    ),
    _StatementTemplate(
        key="secondhand_vessel",
        topic="hobbies",
        mood="good",
        pool="vessel",
        group="boats",
        question="What kind of vessel does {P} own?",
        says=("I bought a secondhand {v} off a neighbour, it's taking up the whole garage.",),
        follow=(("Have you taken it out yet?", "Once, on the reservoir, and I only fell in a little bit."),),
    ),
    _StatementTemplate(
        key="disliked_food",
        topic="food",
        mood="info",
        pool="disliked",
        clash_value=True,
        question="Which food does {P} refuse to eat?",
        says=("I honestly can't stand {v}, even the smell makes me gag.",),
        follow=(("Since you were a kid?", "Forever. My parents gave up trying when I was about six."),),
    ),
    _StatementTemplate(
        key="thesis_topic",
        topic="learning",
        mood="good",
        pool="thesis",
        question="What was the subject of {P}'s dissertation?",
        says=("I finally submitted my thesis on {v}, four years of my life in one file.",),
        follow=(("How are you celebrating?", "Sleeping for a week, then a very long lunch."),),
    ),
    _StatementTemplate(
        key="weekend_pastime",
        topic="hobbies",
        mood="good",
        pool="pastime",
        question="Which pastime fills {P}'s Saturdays and Sundays?",
        says=("My uncle got me into {v}, now I'm out at dawn most weekends.",),
        follow=(("Is it hard to learn?", "Easy to start, impossible to get good at, which is the fun of it."),),
    ),
    _StatementTemplate(
        key="balcony_crop",
        topic="home",
        mood="good",
        pool="veg",
        question="What is {P} cultivating outside {pos} flat?",
        says=("I've got {v} coming up in pots on the balcony, first harvest any day now.",),
        follow=(("Do the pigeons leave them alone?", "Mostly, I've hung old CDs everywhere and it seems to work."),),
    ),
    _StatementTemplate(
        key="volunteering",
        topic="work",
        mood="info",
        pool="volunteer",
        question="Where does {P} help out without pay?",
        says=("I spend my Thursday evenings sorting donations at the {v}, it's a nice way to end the week.",),
        follow=(("How did you get involved?", "A friend dragged me along once and I just kept going back."),),
    ),
)

_EXACT_CODE = (
    _StatementTemplate(
        key="cottage_reference",
        topic="travel",
        mood="info",
        pool="booking_ref",
        question="What is the booking reference for {P}'s cottage stay?",
        says=("The cottage is booked for the end of the month! The reference is {v} in case you need to call them.",),
        asked=(
            (
                "",
                "Did you manage to book that cottage in the end?",
                "Yes! Booking reference {v}, I'll forward you the email.",
            ),
        ),
    ),
    _StatementTemplate(
        key="phone_number",
        topic="money",
        mood="info",
        pool="digits4",
        question="What are the last four digits of {P}'s new phone number?",
        says=("New phone, new number, it ends in {v}, I'll text you the full thing later.",),
        asked=(
            ("", "Did you get your phone sorted out in the end?", "Finally, yes. New number though, it ends in {v}."),
        ),
    ),
    _StatementTemplate(
        key="flight_number",
        topic="travel",
        mood="info",
        pool="flight",
        question="What is the number of the flight {P} is taking on Friday?",
        says=("I'm on flight {v} on Friday, landing around nine if you fancy meeting for a coffee.",),
        asked=(
            (
                "",
                "What flight are you on Friday? I'll keep an eye on the arrivals board.",
                "It's {v}, meant to land around nine in the evening.",
            ),
        ),
    ),
    _StatementTemplate(
        key="parcel_tracking",
        topic="money",
        mood="bad",
        pool="tracking",
        question="What is the tracking number of {P}'s delayed parcel?",
        says=("The tracking number for my parcel is {v} and it has been stuck in a depot for days.",),
        asked=(
            (
                "",
                "Did your parcel ever turn up?",
                "No! The tracking number is {v} and it has been stuck in a depot for days.",
            ),
        ),
    ),
    _StatementTemplate(
        key="number_plate",
        topic="cars",
        mood="info",
        pool="plate",
        question="What is {P}'s new number plate?",
        says=("Got my new number plate, it's {v}, took me ages to memorise it.",),
    ),
    _StatementTemplate(
        key="gate_code",
        topic="home",
        mood="info",
        pool="digits4",
        question="What is the gate code at {P}'s building?",
        says=("If you get to ours before me, the gate code is {v}, just let yourself in.",),
        asked=(
            (
                "",
                "What's the code for your gate again? I'll probably be early.",
                "It's {v}, then straight up the stairs.",
            ),
        ),
    ),
    _StatementTemplate(
        key="membership_number",
        topic="fitness",
        mood="info",
        pool="membership",
        question="What is {P}'s leisure centre membership number?",
        says=("My leisure centre membership number is {v}, they make you recite it at the desk every time.",),
    ),
    _StatementTemplate(
        key="client_invoice",
        topic="work",
        mood="info",
        pool="invoice",
        question="What is the number of the invoice {P} sent the client?",
        says=("I've sent the client invoice {v}, fingers crossed they pay on time for once.",),
    ),
    _StatementTemplate(
        key="pharmacy_reference",
        topic="health",
        mood="info",
        pool="prescription",
        question="Which reference does {P} need to quote at the pharmacy?",
        says=("The pharmacy told me to quote {v} when I pick up my prescription.",),
        asked=(
            (
                "",
                "Did the pharmacy sort out your prescription in the end?",
                "Nearly, I just have to quote {v} when I pick it up.",
            ),
        ),
    ),
    _StatementTemplate(
        key="office_wifi",
        topic="work",
        mood="info",
        pool="wifi",
        question="What is the guest Wi-Fi password at {P}'s office?",
        says=("The guest Wi-Fi at our office is {v}, all lowercase, in case you come by.",),
        asked=(
            (
                "",
                "What's the guest Wi-Fi at your office? I'm coming in for that meeting.",
                "It's {v}, all lowercase, no spaces.",
            ),
        ),
    ),
    _StatementTemplate(
        key="bike_lock",
        topic="fitness",
        mood="info",
        pool="digits4",
        question="What is {P}'s bike lock combination?",
        says=("My bike lock combination is {v}, don't tell anyone.",),
        asked=(
            ("", "What's your bike lock code, in case I need to move it for you?", "It's {v}, just don't tell anyone."),
        ),
    ),
)

_TEMPORAL = (
    _StatementTemplate(
        key="half_marathon",
        topic="running",
        mood="good",
        question="When did {P} run {pos} first half marathon?",
        says=(
            "I ran my first half marathon {when}, and I'm walking like a baby giraffe.",
            "{When} I finished my first ever half marathon! My legs have filed a complaint.",
        ),
        follow=(
            ("How did you feel at the finish line?", "Like crying and eating everything in sight, in that order."),
            ("Would you do another one?", "Ask me in a week, right now the answer is absolutely not."),
        ),
    ),
    _StatementTemplate(
        key="driving_test",
        topic="cars",
        mood="good",
        group="car",
        question="When did {P} pass {pos} driving test?",
        says=(
            "I passed my driving test {when}, third time lucky!",
            "{When} I finally passed my driving test, the examiner even smiled at the end.",
        ),
        follow=(
            ("Are you going to get a car now?", "Eventually, for now I'm just enjoying being allowed on the road."),
        ),
    ),
    _StatementTemplate(
        key="nephew_born",
        topic="family",
        mood="good",
        question="When was {P}'s nephew born?",
        says=(
            "My nephew was born {when}, everyone is exhausted and completely smitten.",
            "My brother's baby arrived {when}, a little boy, and he's perfect.",
        ),
        follow=(("Have you held him yet?", "Not yet, I'm going round soon with far too many presents."),),
    ),
    _StatementTemplate(
        key="resigned",
        topic="work",
        mood="info",
        group="job",
        question="When did {P} resign from {pos} job?",
        says=(
            "I handed in my notice {when}, and my manager took it surprisingly well.",
            "{When} I finally resigned, it feels terrifying and brilliant at the same time.",
        ),
        follow=(("Do you know what's next?", "Not exactly, but I have some savings and a lot of ideas."),),
    ),
    _StatementTemplate(
        key="pottery_class",
        topic="hobbies",
        mood="good",
        question="When did {P} have {pos} first pottery class?",
        says=("I had my very first pottery class {when}, my bowl looks like an ashtray.",),
        follow=(("Are you going back?", "Definitely, I've already paid for the whole term."),),
    ),
    _StatementTemplate(
        key="basement_flood",
        topic="home",
        mood="bad",
        question="When did {P}'s basement flood?",
        says=(
            "Our basement flooded {when}, we were up half the night with buckets.",
            "{When} the basement flooded, so everything we own is drying on the radiators.",
        ),
        follow=(("Did you lose anything important?", "Mostly old boxes, but my school yearbooks are ruined."),),
    ),
    _StatementTemplate(
        key="sprained_ankle",
        topic="health",
        mood="bad",
        question="When did {P} sprain {pos} ankle?",
        says=("I sprained my ankle {when} stepping off a kerb, very heroic.",),
        follow=(("Can you walk on it?", "Sort of, I'm hobbling around like a pirate."),),
    ),
    _StatementTemplate(
        key="allotment",
        topic="home",
        mood="good",
        question="When did {P} get {pos} allotment plot?",
        says=("I finally got an allotment plot {when}, after three years on the waiting list!",),
        follow=(("What are you going to grow?", "Everything, probably badly, but I'm so excited."),),
    ),
    _StatementTemplate(
        key="conference_talk",
        topic="work",
        mood="good",
        question="When did {P} give a talk at the regional conference?",
        says=("I gave my talk at the regional conference {when}, and nobody fell asleep.",),
        follow=(("Were you nervous?", "Very, my hands were shaking for the first few minutes."),),
    ),
    _StatementTemplate(
        key="salsa_lesson",
        topic="hobbies",
        mood="good",
        question="When did {P} take {pos} first salsa lesson?",
        says=("We had our first salsa lesson {when}, I stepped on everyone's feet.",),
        follow=(("Did you enjoy it?", "Loved it, even though I was hopeless."),),
    ),
    _StatementTemplate(
        key="first_tattoo",
        topic="hobbies",
        mood="good",
        question="When did {P} get {pos} first tattoo?",
        says=("I got my first tattoo {when}, a tiny swallow on my wrist.",),
        follow=(("Did it hurt?", "Less than I expected, more than I would like."),),
    ),
    _StatementTemplate(
        key="grandmother_ninety",
        topic="family",
        mood="good",
        group="grandmother",
        question="When did {P}'s grandmother turn ninety?",
        says=("My grandmother turned ninety {when}, and she still out-danced everyone at the party.",),
        follow=(("What did you get her?", "A framed photo of all the grandkids, she cried, obviously."),),
    ),
)

_MULTI_HOP = (
    _BridgeTemplate(
        key="sister_city",
        topic="travel",
        pool="city",
        name_pool="kin_name",
        group="sister",
        question="Which city is {P} flying to in order to visit {pos} sister?",
        first=(
            "My sister {n} just moved to {v} for work, she keeps sending me photos of the food.",
            "{n}, my little sister, has officially moved to {v}, the flat is tiny but the view is amazing.",
        ),
        second=(
            "I booked flights to go and see my sister next month, I'm counting down the days.",
            "I'm flying out to visit my sister in a few weeks, my first trip since she moved.",
        ),
        follow_first=(("Do you miss having her close by?", "Loads, but it's good for her, she needed a change."),),
        follow_second=(("How long will you stay?", "Just over a week, long enough to eat my way around the place."),),
    ),
    _BridgeTemplate(
        key="dentist_in_law",
        topic="health",
        pool="kin_name",
        group="dentist",
        second_mood="bad",
        question="Who repaired {P}'s cracked tooth?",
        first=("My brother-in-law {v} is a dentist, which is handy and also slightly terrifying at family dinners.",),
        second=("I cracked a molar on a cherry stone, luckily my brother-in-law squeezed me in the same afternoon.",),
        follow_first=(("Does that mean free check-ups?", "Sadly not, but at least I get very honest advice."),),
        follow_second=(("Does it still hurt?", "A bit when I chew on that side, but it's so much better."),),
    ),
    _BridgeTemplate(
        key="favourite_restaurant",
        topic="food",
        pool="restaurant",
        question="Where did {P} celebrate {pos} anniversary?",
        first=("My favourite place to eat is a tiny family-run restaurant called {v}, the dumplings are unreal.",),
        second=("We celebrated our anniversary at my favourite restaurant, I ate far too much and regret nothing.",),
        follow_first=(("Do they take bookings?", "Only for big groups, otherwise you just turn up and hope."),),
        follow_second=(("How many years is it now?", "Seven, somehow. Time is fake."),),
    ),
    _BridgeTemplate(
        key="university_friend",
        topic="travel",
        pool="kin_name",
        question="Who is {P} spending the long weekend with?",
        first=("My best friend from university, {v}, lives by the coast now and runs a little surf school.",),
        second=("I'm spending the long weekend with my best friend from university, it has been two years.",),
        follow_first=(("Do you ever get to visit?", "Not often enough, it's a very long drive."),),
        follow_second=(("What are you two planning?", "Absolutely nothing, which is the whole point."),),
    ),
    _BridgeTemplate(
        key="car_make",
        topic="cars",
        pool="car_make",
        group="car",
        second_mood="bad",
        question="What make of car broke down on {P} on the motorway?",
        first=("I drive an ancient green {v}, it has more miles on it than a space shuttle.",),
        second=("My car died on the motorway on the way to work, I had to get towed and I was an hour late.",),
        follow_first=(("Is it reliable at least?", "Surprisingly, yes. It just sounds like it's dying."),),
        follow_second=(("Can they fix it?", "The mechanic says yes, my bank account says we'll see."),),
    ),
    _BridgeTemplate(
        key="work_mentor",
        topic="work",
        pool="mentor",
        with_surname=True,
        question="Who recommended {P} for the team lead role?",
        first=("My mentor at work is {v}, she has been there twenty years and knows absolutely everyone.",),
        second=("My mentor put my name forward for the team lead role, I had no idea she was going to.",),
        follow_first=(("Is she a good mentor?", "The best, she tells me when I'm being an idiot, kindly."),),
        follow_second=(("Do you want the role?", "I think so? Terrified, but yes."),),
    ),
    _BridgeTemplate(
        key="hometown",
        topic="travel",
        pool="town",
        group="grandmother",
        question="Which town is {P} travelling to for {pos} grandmother's birthday?",
        first=("I grew up in {v}, a small place where everyone knows your business before you do.",),
        second=("I'm heading back to my hometown for my grandmother's ninetieth birthday, the whole family is going.",),
        follow_first=(("Do you miss it?", "Sometimes, mostly the quiet and the long walks."),),
        follow_second=(("What are you getting her?", "A framed photo of all the grandkids, she'll cry, guaranteed."),),
    ),
    _BridgeTemplate(
        key="brother_band",
        topic="music",
        pool="band",
        group="crowds",
        question="Which band is {P} going to see perform?",
        first=("My little brother plays drums in a band called {v}, they're actually pretty good.",),
        second=("I'm going to see my brother play at a club downtown on Saturday, first time I've seen them live.",),
        follow_first=(("What kind of music do they play?", "Sort of scrappy indie rock, very loud, very sweaty."),),
        follow_second=(("Are you nervous for him?", "More than he is, probably."),),
    ),
    _BridgeTemplate(
        key="neighbour_teacher",
        topic="music",
        pool="kin_name",
        group="son",
        question="Who is teaching {P}'s son music?",
        first=(
            "Our neighbour {v} used to teach music at the conservatory, you can hear the practising every evening.",
        ),
        second=("My son started lessons with our neighbour this week, he practised scales all evening.",),
        follow_first=(("Do you mind the noise?", "Not at all, it's like living next to a radio station."),),
        follow_second=(
            ("Is he enjoying it?", "He says it's boring, but he keeps playing when he thinks nobody is listening."),
        ),
    ),
    _BridgeTemplate(
        key="roommate_company",
        topic="work",
        pool="company",
        name_pool="kin_name",
        second_mood="good",
        question="At which company does {P} have a job interview?",
        first=("My old roommate {n} works at {v} now, she is doing really well there.",),
        second=("My old roommate got me an interview at her company, it's on Thursday and I'm so nervous.",),
        follow_first=(("Do you still see her much?", "Every couple of months, we pick up exactly where we left off."),),
        follow_second=(("What's the role?", "Operations, which is vague, but the team sounds lovely."),),
    ),
)

_UPDATE = (
    _UpdateTemplate(
        key="gym_locker",
        topic="fitness",
        pool="digits4",
        question="What is {P}'s current gym locker code?",
        first=("My gym finally gave me a locker, the code is {v}, which I will definitely forget.",),
        changes=(
            "They reassigned all the lockers at the gym, so my combination is {v} now.",
            "The gym shuffled the lockers around, my new combo is {v}, apparently for good this time.",
        ),
        follow=(("Do you actually remember it?", "I've written it on my hand more times than I'd like to admit."),),
    ),
    _UpdateTemplate(
        key="employer",
        topic="work",
        pool="company",
        group="job",
        question="Which company does {P} work for now?",
        first=("I work as a project coordinator at {v}, mostly spreadsheets and herding people.",),
        changes=(
            "I accepted the offer from {v}! I start there at the beginning of next month.",
            "Plot twist: I've changed jobs, I'm at {v} now and so far it's great.",
        ),
        follow=(
            ("Do you like the people there?", "Mostly, there's one guy who replies all to everything, but mostly."),
        ),
    ),
    _UpdateTemplate(
        key="neighbourhood",
        topic="home",
        pool="neighbourhood",
        question="Which neighbourhood does {P} live in now?",
        first=("We live over in {v}, right by the river, it floods a bit but it's lovely.",),
        changes=(
            "We finally moved! We're in {v} now, and the boxes are everywhere.",
            "The landlord sold the building, so we had to move, we're in {v} now.",
        ),
        follow=(("Do you like the area?", "Love it, there's a great little market on the corner."),),
    ),
    _UpdateTemplate(
        key="coffee_order",
        topic="food",
        pool="coffee",
        question="What is {P}'s usual coffee order these days?",
        first=("My usual order is {av}, every single day without fail.",),
        changes=(
            "I've switched my coffee order to {av}, don't judge me.",
            "New obsession: {av}. The barista starts making it the moment I walk in.",
        ),
        follow=(("Where do you get it?", "The little kiosk by the station, the owner knows everyone's order."),),
    ),
    _UpdateTemplate(
        key="car_model",
        topic="cars",
        pool="car_model",
        group="car",
        question="What car does {P} drive now?",
        first=("I drive a little {v}, it's old but it never lets me down.",),
        changes=(
            "Sold the old car and bought {av}, I feel very grown up.",
            "Traded the car in, I'm driving {av} now.",
        ),
        follow=(
            ("Is it comfortable on long drives?", "Comfortable enough, and the heating actually works, which is new."),
        ),
    ),
    _UpdateTemplate(
        key="manager",
        topic="work",
        pool="colleague",
        group="job",
        question="Who is {P}'s manager now?",
        first=("My manager is {v}, lovely but far too into spreadsheets.",),
        changes=(
            "{old} left the company, so my new boss is {v}.",
            "There was a reshuffle at work, I report to {v} now.",
        ),
        follow=(("Do you get on with them?", "So far so good, they actually listen in meetings."),),
    ),
    _UpdateTemplate(
        key="book_club",
        topic="books_tv",
        pool="book",
        question="Which book is {P}'s book club reading now?",
        first=("Our book club picked {v} for this month, I'm about halfway through.",),
        changes=(
            "Book club gave up on that one, we're reading {v} instead.",
            "We switched books at book club, it's {v} now.",
        ),
        follow=(("Are you enjoying it?", "More than I expected, the middle drags but the ending is worth it."),),
    ),
    _UpdateTemplate(
        key="learning_instrument",
        topic="music",
        pool="instrument",
        group="instrument",
        question="Which instrument is {P} learning now?",
        first=("I've been learning the {v}, my neighbours must hate me.",),
        changes=(
            "I gave up and switched to the {v}, it's much more my speed.",
            "New plan, I've swapped to the {v} and I'm actually improving.",
        ),
        follow=(("Do you practise every day?", "I try to, even if it's just ten minutes before bed."),),
    ),
    _UpdateTemplate(
        key="home_wifi",
        topic="home",
        pool="wifi",
        question="What is the Wi-Fi password at {P}'s place now?",
        first=("Our Wi-Fi password is {v}, write it down for when you visit.",),
        changes=(
            "We changed the Wi-Fi password, it's {v} now.",
            "Somebody was using our internet, so the password is {v} now.",
        ),
        follow=(("Will you remember it?", "No, that's why I'm telling you."),),
    ),
)

_INFERENCE = (
    _InferenceTemplate(
        key="camping",
        topic="travel",
        answer="yes",
        phrase="under the stars",
        mood="good",
        question="Would {P} enjoy a week of camping?",
        parts=(
            ("Honestly nothing beats sleeping under the stars, I'd swap every hotel for a sleeping bag.",),
            ("The bugs never bother me, I just zip myself up and sleep through anything.",),
        ),
        clash=("hate camping", "can't stand bugs"),
    ),
    _InferenceTemplate(
        key="seasick",
        topic="travel",
        answer="no",
        phrase="seasick",
        question="Would {P} enjoy a week-long sailing holiday?",
        parts=(
            ("I get seasick just looking at waves, even the pedal boats on the lake are too much for me.",),
            ("The one time I took a ferry I spent the whole crossing lying on the floor.",),
        ),
        clash=("boat", "ferry", "sail", "sailing", "cruise", "kayak", "canoe", "paddleboard", "yacht", "dinghy"),
        group="boats",
    ),
    _InferenceTemplate(
        key="no_meat",
        topic="food",
        answer="no",
        phrase="meat",
        question="Would a steakhouse voucher be a good gift for {P}?",
        parts=(
            ("I haven't eaten meat since I was twelve, not even at Christmas.",),
            ("Lentils, beans, chickpeas, I've got a hundred ways to make them taste amazing.",),
        ),
        clash=("chicken", "beef", "bacon", "steak", "burger", "lamb", "pork", "salmon", "tuna", "sausage", "fish"),
    ),
    _InferenceTemplate(
        key="crowds",
        topic="music",
        answer="no",
        phrase="crowds",
        question="Would {P} like to spend New Year's Eve in Times Square?",
        parts=(("Big crowds make my chest go tight, I left the parade after ten minutes.",),),
        clash=("festival", "packed", "gig", "concert", "stadium", "crowded", "karaoke"),
        group="crowds",
    ),
    _InferenceTemplate(
        key="bookworm",
        topic="books_tv",
        answer="yes",
        phrase="novels",
        mood="good",
        question="Would a bookshop voucher make a good present for {P}?",
        parts=(("I get through about three novels a week, the librarians know me by name.",),),
        clash=("never read", "gave up on a book"),
    ),
    _InferenceTemplate(
        key="cat_allergy",
        topic="pets",
        answer="no",
        phrase="eyes swell",
        mood="bad",
        question="Would {P} be comfortable house-sitting for a neighbour with kittens?",
        parts=(
            ("Every time I visit my aunt my eyes swell shut, it's her two cats.",),
            ("Antihistamines are my best friend whenever I visit anyone with fur babies.",),
        ),
        clash=("cat", "kitten", "cats", "kittens"),
    ),
    _InferenceTemplate(
        key="heights",
        topic="fitness",
        answer="no",
        phrase="glass floor",
        mood="bad",
        question="Would {P} sign up for a skydiving trip?",
        parts=(("I couldn't even stand on the glass floor at the observation tower, my legs turned to jelly.",),),
        clash=("climb", "climbing", "rooftop", "summit", "abseil", "bungee", "ladder"),
        group="heights",
    ),
    _InferenceTemplate(
        key="sweet_tooth",
        topic="food",
        answer="yes",
        phrase="sweet tooth",
        mood="good",
        question="Would {P} appreciate a box of pastries as a thank-you?",
        parts=(
            ("I have the world's worst sweet tooth, I can't walk past a bakery without buying something with icing.",),
        ),
        clash=("cutting out sugar", "hate cake"),
    ),
    _InferenceTemplate(
        key="early_riser",
        topic="health",
        answer="no",
        phrase="without an alarm",
        question="Would a dawn start be a struggle for {P}?",
        parts=(("I'm up before five every day without an alarm, my body just does it.",),),
        clash=("slept in", "lie-in", "night owl", "overslept"),
    ),
    _InferenceTemplate(
        key="always_cold",
        topic="travel",
        answer="no",
        phrase="freezing",
        mood="bad",
        question="Would {P} enjoy a winter holiday above the Arctic Circle?",
        parts=(("I'm always freezing, anything below fifteen degrees and I'm in two jumpers and complaining.",),),
        clash=("ski", "skiing", "snow", "winter swim"),
    ),
    _InferenceTemplate(
        key="babysitter",
        topic="family",
        answer="yes",
        phrase="babysitter",
        mood="good",
        question="Would {P} enjoy helping out at a children's summer camp?",
        parts=(
            ("I'm the designated babysitter for all my cousins' kids and I secretly love it.",),
            ("Give me a room full of shouting five-year-olds and I'm in my element.",),
        ),
        clash=("can't stand kids",),
    ),
)


def _split(text: str) -> tuple[str, ...]:
    """A word list written as one comma-separated string, so the lists read as prose and stay short."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


# -- values -------------------------------------------------------------------------------------------------------

_FEMALE_NAMES = _split("Maya, Priya, Hannah, Chloe, Amara, Sofia, Elena, Leila, Nadia, Tessa, Naomi, Freya")
_MALE_NAMES = _split(
    "Daniel, Omar, Lucas, Theo, Marcus, Jonah, Felix, Samir, Kenji, Rafael, Tobias, Owen, Arjun, Mateo"
)
_SPEAKERS = tuple((name, "f") for name in _FEMALE_NAMES) + tuple((name, "m") for name in _MALE_NAMES)

_POOLS: dict[str, tuple[str, ...]] = {
    "pet_name": _split(
        "Biscuit, Pickles, Waffles, Juniper, Mochi, Pretzel, Clementine, Bramble, Pistachio, Crumpet, Nutmeg"
    ),
    "kin_name": _split(
        "Tomasz, Ottilie, Benedikt, Rosalind, Casimir, Henrietta, Lorcan, Philippa, Evander, Marisol, "
        "Ignatius, Wilhelmina, Ambrose, Cordelia, Leopold, Saoirse, Dagny, Florian, Imogen, Lysander"
    ),
    "colleague": _split(
        "Beatrix, Rupert, Anneliese, Horatio, Marguerite, Ezekiel, Percival, Sunniva, Thaddeus, Winifred"
    ),
    "city": _split(
        "Porto, Ljubljana, Valparaiso, Tbilisi, Halifax, Adelaide, Krakow, Bergen, Cusco, Seville, Nagoya, "
        "Galway, Tallinn, Marrakesh, Antwerp, Dunedin"
    ),
    "town": _split(
        "Tampere, Ballarat, Ghent, Kilkenny, Bayeux, Trondheim, Cuenca, Matsumoto, Whanganui, Lucca, Tromso, Zadar"
    ),
    "island": _split("Madeira, Crete, Zanzibar, Lofoten, Sardinia, Tasmania, Menorca, Santorini, Mallorca, Gozo"),
    "restaurant": _split(
        "Supra, Casa Amapola, Osteria Bruna, The Copper Kettle, Saffron Lane, Little Hanoi, Bar Celeste, Kombu House"
    ),
    "band": _split(
        "The Velvet Hours, Paper Lanterns, Northbound Static, The Marigold Effect, Glass Harbour, "
        "Saltwater Choir, Midnight Orchard, The Quiet Comets"
    ),
    "car_make": _split("Volvo, Subaru, Skoda, Peugeot, Hyundai, Renault, Citroen, Fiat"),
    "car_model": _split("Corolla, Civic, Yaris, Octavia, Qashqai, Outback, Clio, Prius, Mondeo, Fiesta"),
    "company": _split(
        "Brightwell Labs, Northwind Logistics, Harbor & Pine, Lumen Health, Cedar Analytics, "
        "Bluefin Studios, Oakridge Bank, Tidewater Media, Kestrel Robotics, Fernhill Publishing"
    ),
    "neighbourhood": _split(
        "Millbrook, Ashgrove, Kingsbury, Fenwick Park, Harrowgate, Larkspur Hill, Elmsworth, Copperfield, "
        "Thornbury, Wrenfield"
    ),
    "coffee": _split(
        "oat flat white, cortado, iced americano, chai latte, double espresso, matcha latte, cold brew, "
        "macchiato, mocha"
    ),
    "book": _split(
        "Piranesi, Station Eleven, Klara and the Sun, The Overstory, Circe, Pachinko, Middlemarch, "
        "Shuggie Bain, Lincoln in the Bardo, The Remains of the Day"
    ),
    "instrument": _split("ukulele, banjo, harmonica, saxophone, accordion, mandolin, trombone, clarinet"),
    "heirloom": _split("piano, harp, cello, double bass, harpsichord"),
    "language": _split("Japanese, Portuguese, Korean, Turkish, Swahili, Dutch, Greek, Polish, Icelandic, Welsh"),
    "breed": _split("beagle, whippet, dachshund, corgi, greyhound, spaniel, schnauzer, border collie, lurcher"),
    "veg": _split("courgettes, cherry tomatoes, chillies, strawberries, peppers, aubergines, runner beans, radishes"),
    "disliked": _split("olives, coriander, mushrooms, liquorice, blue cheese, okra, marzipan, celery"),
    "thesis": _split(
        "coral reefs, medieval maps, urban beekeeping, glacier melt, sleep and memory, tidal energy, "
        "Roman roads, bird migration"
    ),
    "pastime": _split(
        "fly fishing, birdwatching, woodturning, orienteering, metal detecting, kite surfing, geocaching"
    ),
    "sport": _split("cycling, swimming, rowing, pilates, aqua aerobics"),
    "vessel": _split("kayak, canoe, paddleboard, dinghy"),
    "volunteer": _split("food bank, charity shop, refugee centre, hospice, repair cafe, soup kitchen"),
    "potluck": _split(
        "shakshuka, spanakopita, jollof rice, pierogi, dal makhani, ratatouille, tiramisu, focaccia, baklava"
    ),
    "author": _split(
        "Terry Pratchett, Kazuo Ishiguro, Toni Morrison, Haruki Murakami, Hilary Mantel, "
        "Chimamanda Adichie, Jhumpa Lahiri, Italo Calvino"
    ),
    "mentor": _split(
        "Ruth Okafor, Helga Lindqvist, Carmen Castellanos, Joan Abernathy, Adaeze Oyelaran, "
        "Fiona Marchetti, Ingrid Solberg, Miriam Achterberg"
    ),
    "course": _split(
        "bookbinding, sign language, watercolour painting, furniture restoration, stand-up comedy, "
        "calligraphy, upholstery, glassblowing"
    ),
    "show": _split("Slow Horses, Severance, Shetland, Fleabag, Succession, Derry Girls, Detectorists, Bluey"),
    "team": _split("Red Kites, Bluebell Rovers, Harbour Hawks, Real Sociable, Sporting Chance, Athletico Lentils"),
}

_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I or O: they read as 1 and 0
_AIRLINES = ("KL", "BA", "LH", "AF", "IB", "TP", "SK", "AY", "EI", "OS")
_WIFI_WORDS = _split(
    "orchid, tractor, lantern, pebble, walrus, comet, thimble, hazel, quartz, falcon, tundra, cobalt, nectar, pylon"
)


def _letters(rng: random.Random, k: int) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(k))


def _digits(rng: random.Random, k: int) -> str:
    return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(k - 1))


# Codes are made, not listed, so each dialogue has its own and none can be guessed from another.
_CODES: dict[str, Callable[[random.Random], str]] = {
    "booking_ref": lambda rng: f"{_letters(rng, 2)}{rng.randint(2, 9)}-{_digits(rng, 4)}",
    "digits4": lambda rng: _digits(rng, 4),
    "flight": lambda rng: f"{rng.choice(_AIRLINES)}{_digits(rng, rng.choice((3, 4)))}",
    "tracking": lambda rng: f"{_letters(rng, 2)}{_digits(rng, 8)}{_letters(rng, 2)}",
    "plate": lambda rng: f"{_letters(rng, 2)}{rng.randint(10, 79)} {_letters(rng, 3)}",
    "membership": lambda rng: f"M-{_digits(rng, 6)}",
    "invoice": lambda rng: f"INV-{_digits(rng, 5)}",
    "prescription": lambda rng: f"RX-{_digits(rng, 6)}",
    "wifi": lambda rng: f"{'-'.join(rng.sample(_WIFI_WORDS, 2))}-{rng.randint(12, 98)}",
}

# -- filler -------------------------------------------------------------------------------------------------------
# Every topic has statements (said about oneself, with a mood the other person reacts to), openers (questions to
# the other person, answered with one of the topic's statements) and follow-ups (asked after a statement).

_FILLER_SLOTS: dict[str, tuple[str, ...]] = {
    "run": _split(
        "an easy three miles, a slow forty minutes, a few laps of the park, a hilly six miles, "
        "some sprint intervals, a long slow ten miles"
    ),
    "route": _split(
        "along the canal, around the park, by the river, through the woods, "
        "up the hill behind the station, round the reservoir"
    ),
    "day": _split(
        "on Sunday, after work, over the weekend, yesterday, this morning, on Tuesday night, "
        "earlier this week, on Friday"
    ),
    "later": _split(
        "next month, in a few weeks, this weekend, at the end of the month, in the spring, after the holidays"
    ),
    "city": _split(
        "Lisbon, Vienna, Prague, Chicago, Denver, Oslo, Dublin, Madrid, Boston, Kyoto, Toronto, Glasgow, "
        "Munich, Athens, Budapest"
    ),
    "coworker": _split("Brenda, Kevin, Dolores, Martin, Yusuf, Agnes, Stefan, Irene, Gordon, Pauline, Trevor, Lydia"),
    "relative": _split("my mum, my dad, my aunt, my cousin, my grandad, my uncle, my godmother"),
    "dish": _split(
        "a lentil soup, a mushroom risotto, a vegetable curry, banana bread, a big tomato salad, "
        "vegetable fried rice, a pasta bake, an onion tart, veggie dumplings, a chickpea stew, "
        "flatbreads from scratch"
    ),
    "show_genre": _split(
        "a detective series, a baking competition, a nature documentary, an old western, a space drama, "
        "a true crime series, a Danish crime drama"
    ),
    "weather": _split(
        "grey and drizzly, weirdly warm, really windy, bright but cold, muggy, pouring with rain, "
        "foggy every morning, gorgeous and sunny"
    ),
    "chore": _split(
        "sorting out the attic, painting the hallway, fixing a leaky tap, assembling a bookcase, "
        "clearing out the garage, re-grouting the bathroom, scrubbing the oven"
    ),
    "pet": _split(
        "my cousin's terrier, the neighbour's cat, my parents' old labrador, a friend's very loud parrot, "
        "my aunt's rabbit, a friend's two guinea pigs"
    ),
    "exercise": _split(
        "a spin class, a yoga class, a circuit class, some weights at the gym, a long bike ride, a boxing class"
    ),
    "genre": _split(
        "old jazz records, old soul records, folk music, eighties pop, film soundtracks, "
        "a Brazilian playlist, nineties hip hop"
    ),
    "reason": _split(
        "dinner won't cook itself, I have a call in a few minutes, the laundry is calling, "
        "I promised to help a friend move a sofa, my battery is about to die, I really need some sleep, "
        "I'm meeting someone in ten minutes"
    ),
}


@dataclass(frozen=True)
class _Topic:
    statements: tuple[tuple[str, str], ...]  # (text, mood)
    openers: tuple[str, ...]
    follow_ups: tuple[tuple[str, str], ...]  # (question, the answer it gets)


_TOPICS: dict[str, _Topic] = {
    "running": _Topic(
        statements=(
            ("I did {run} {route} {day} and my legs are still complaining about it.", "info"),
            ("I've been trying to run three times a week, but the hills round here are brutal.", "info"),
            ("My running club is doing a relay {later} and I somehow got volunteered for the last leg.", "good"),
            ("I finally bought proper running shoes, the old pair was held together by hope and tape.", "good"),
            ("Got a stitch halfway round the park {day} and had to walk home, so embarrassing.", "bad"),
            (
                "I keep watching race videos online, there's something hypnotic about people crossing a finish line.",
                "info",
            ),
            ("My watch says I was quicker {day}, but I think the GPS was just being generous.", "good"),
        ),
        openers=(
            "Have you been out running at all lately?",
            "Are you training for anything at the moment?",
            "Do you ever run with other people, or always on your own?",
        ),
        follow_ups=(
            ("Do you have a race in mind yet?", "Not yet, maybe something small in the autumn, nothing with hills."),
            (
                "How are your knees holding up with all that?",
                "Surprisingly well, I've been stretching like a responsible adult.",
            ),
            (
                "Do you listen to anything while you run?",
                "Podcasts mostly, something slow enough that I forget I'm running.",
            ),
        ),
    ),
    "fitness": _Topic(
        statements=(
            ("I tried {exercise} {day} and I could barely lift my arms afterwards.", "info"),
            ("The gym near work has started opening at six, which is dangerous because now I have no excuse.", "info"),
            ("I joined a Sunday tennis group, I'm terrible but it's really good fun.", "good"),
            ("My shoulder has been stiff since {exercise} {day}, I think I overdid it.", "bad"),
            ("I'm trying to stretch every evening, it's boring but my back is thanking me.", "good"),
            ("There's a new climbing wall opening near us, everyone at work is talking about it.", "info"),
            ("I've started going to the gym before work, it's the only time it's quiet in there.", "good"),
        ),
        openers=(
            "Are you still going to the gym regularly?",
            "Have you tried any new classes recently?",
            "Do you do any sport at the weekend these days?",
        ),
        follow_ups=(
            ("How long have you been doing that?", "Only a couple of months, so I'm still at the enthusiastic stage."),
            ("Is it hard to fit around work?", "Some weeks, yes, but I feel so much better when I manage it."),
            ("Do you go on your own or with friends?", "Mostly on my own, it's the only quiet hour of my day."),
        ),
    ),
    "pets": _Topic(
        statements=(
            ("We looked after {pet} {day} and somehow a phone charger got chewed to bits in ten minutes.", "bad"),
            ("I keep sending you animal videos because the alternative is actually doing my work.", "info"),
            ("The vet near us has a waiting list now, apparently everyone got a pet at the same time.", "info"),
            ("I walked past the pet shop {day} and very nearly came out with a hamster.", "good"),
            ("My friend's dog learned to open the fridge, so now they have a lock on the fridge.", "info"),
            ("I'm pet-sitting {pet} {later}, wish me luck with that.", "info"),
            ("A stray has been sitting on our doorstep all week, I think we've been adopted.", "good"),
        ),
        openers=(
            "Any funny animal stories from your week?",
            "Have you met any nice dogs on your walks lately?",
            "Are you more of a dog person or a cat person?",
        ),
        follow_ups=(
            ("Was it at least cute about it?", "Extremely, which is how it gets away with everything."),
            ("Did it behave itself in the end?", "More or less, after a lot of bribery with treats."),
            ("Is it good with strangers?", "Too good, it would happily leave with anyone who has a snack."),
        ),
    ),
    "travel": _Topic(
        statements=(
            ("I've been looking at flights to {city}, maybe for a trip {later}, prices are wild right now.", "info"),
            ("My friend just got back from {city} and I'm so jealous of her photos.", "info"),
            ("I'm trying to plan a short trip somewhere with good food and no early alarms.", "good"),
            ("Our train got cancelled {day} and we sat in a station café for three hours.", "bad"),
            ("I found my old passport while tidying and it expires soon, so that's another job for the list.", "info"),
            ("I've never been to {city}, but it keeps coming up, maybe it's a sign.", "info"),
            ("The airport queue was so long {day} that I nearly missed my connection.", "bad"),
        ),
        openers=(
            "Have you got any trips planned this year?",
            "Where's the best place you've been recently?",
            "Do you prefer beach holidays or city breaks?",
        ),
        follow_ups=(
            ("How long would you go for?", "A week, maybe a bit longer if work lets me."),
            ("Would you go on your own or with someone?", "Probably with a friend, I'm terrible at reading maps."),
            ("Have you been there before?", "Once, years ago, and I barely remember any of it."),
        ),
    ),
    "family": _Topic(
        statements=(
            ("{Relative} called {day} and we talked for two hours about absolutely nothing.", "good"),
            ("We had a big family lunch {day}, far too much food and at least one argument about board games.", "good"),
            ("{Relative} is visiting {later}, so I need to tidy the spare room, which is mostly boxes.", "info"),
            ("My cousin's wedding is {later} and the group chat is already out of control.", "info"),
            ("{Relative} has been unwell, nothing serious, but I've been popping round most evenings.", "bad"),
            ("My parents finally learned how to video call, so now they call at every possible moment.", "info"),
            ("I dug out some old family photos {day}, the haircuts were a crime.", "good"),
        ),
        openers=(
            "How's your family doing these days?",
            "Have you seen your parents recently?",
            "Any news from your family this week?",
        ),
        follow_ups=(
            ("Do you get on well with them?", "Mostly, as long as nobody brings up politics at dinner."),
            ("Do they live close by?", "About an hour away, close enough for Sunday lunch."),
            ("Are you all doing anything special for it?", "Just a big meal, which in my family is the whole event."),
        ),
    ),
    "food": _Topic(
        statements=(
            ("I made {dish} {day} and for once it actually looked like the picture.", "good"),
            ("I tried a new recipe {day}, it was edible, which is the most I can say.", "info"),
            ("There's a new café on my street and I've been in there every day this week.", "good"),
            ("I've been trying to cook more at home instead of grabbing something on the way back from work.", "info"),
            ("I burnt {dish} {day}, the smoke alarm had opinions.", "bad"),
            ("We found a tiny noodle bar near the station, no sign outside, best broth I've had in ages.", "good"),
            ("I'm on a soup kick at the moment, I've made a different one every few days.", "info"),
        ),
        openers=(
            "Have you cooked anything good lately?",
            "What did you have for dinner last night?",
            "Have you tried any new places to eat?",
        ),
        follow_ups=(
            ("Would you make it again?", "Definitely, maybe with a bit less salt next time."),
            ("Can you send me the recipe?", "Of course, I'll dig it out and send you a photo of the page."),
            ("Is it somewhere you'd go back to?", "Definitely, we waited ages for a table but it was worth it."),
        ),
    ),
    "work": _Topic(
        statements=(
            ("Work has been chaos this week, three deadlines landed on the same afternoon.", "bad"),
            ("{Coworker} brought in homemade cookies {day} and the whole office went quiet.", "good"),
            ("We had a training day {day} about a new system nobody asked for.", "info"),
            ("I finally cleared my inbox, it lasted about twelve minutes.", "good"),
            ("My team is moving to a different floor {later}, so I'm losing my window seat.", "bad"),
            ("I've been working from home more, my commute is now twelve steps and a kettle.", "info"),
            ("The printer at work jammed {day} and somehow it became my problem.", "bad"),
        ),
        openers=(
            "How's work treating you this week?",
            "Has it been a busy week at the office?",
            "Are you still working those long hours?",
        ),
        follow_ups=(
            ("Is your boss being reasonable about it?", "Mostly, they know it's a silly amount for one person."),
            ("Do you think it'll calm down soon?", "Hopefully after this month, but I've said that before."),
            (
                "How's the rest of the team coping?",
                "Lots of coffee and dark jokes, so about as well as can be expected.",
            ),
        ),
    ),
    "music": _Topic(
        statements=(
            ("I've had {genre} on repeat all week, my neighbours probably know every song by now.", "info"),
            ("I dug my old guitar out {day}, my fingers have completely forgotten everything.", "info"),
            ("There's a record shop near the station doing a clear-out, I came home with far too many.", "good"),
            ("I tried singing at a karaoke night {day}, it was not my finest moment.", "bad"),
            ("A busker near work plays the same three songs every day and I've grown weirdly attached.", "good"),
            ("I made a playlist for the drive to my parents' and it's mostly songs from school.", "info"),
        ),
        openers=(
            "Are you listening to anything good at the moment?",
            "Have you been to any gigs recently?",
            "Do you still play any music yourself?",
        ),
        follow_ups=(
            ("Who got you into that?", "My dad, he played it in the car every single weekend."),
            ("Do you listen to it while working?", "All the time, it helps me concentrate somehow."),
            ("Would you go and see them live?", "Maybe, if I can find someone to come with me."),
        ),
    ),
    "home": _Topic(
        statements=(
            ("I spent the whole weekend {chore} and I'm still finding dust in my hair.", "info"),
            ("Our boiler made a terrible noise {day}, I'm pretending I didn't hear it.", "bad"),
            ("I finally put some shelves up, they're only slightly wonky.", "good"),
            ("The upstairs neighbours got a new sofa delivered at eleven at night, very dramatic.", "info"),
            ("I've been moving furniture around again, the living room looks completely different.", "good"),
            ("The garden is a jungle after all the rain, I need a free weekend and a machete.", "info"),
            ("Our landlord finally fixed the window, it only took four months.", "good"),
        ),
        openers=(
            "Have you got any home projects on the go?",
            "Any big plans for the weekend at home?",
            "How's the flat treating you these days?",
        ),
        follow_ups=(
            ("Did you do it all yourself?", "Mostly, with a lot of help from online videos."),
            ("How long did that take you?", "Way longer than it should have, most of a weekend."),
            ("Are you happy with how it turned out?", "Pretty happy, as long as nobody looks too closely."),
        ),
    ),
    "health": _Topic(
        statements=(
            ("I've had a cold since {day}, I sound like a foghorn.", "bad"),
            ("I'm trying to drink more water and less coffee, it's going about as well as you'd expect.", "info"),
            ("I finally booked a check-up at the doctor's, which I'd been avoiding for ages.", "info"),
            ("Slept really badly {day}, a car alarm went off at three.", "bad"),
            ("I've been going to bed earlier and honestly I feel like a new person.", "good"),
            ("I've been given stretches to do every day for my back and I've done them about twice.", "info"),
        ),
        openers=(
            "How are you feeling these days?",
            "Are you sleeping any better lately?",
            "Have you been getting enough rest?",
        ),
        follow_ups=(
            ("Have you seen anyone about it?", "Not yet, I'm giving it another week before I give in."),
            ("Is it getting any better?", "Slowly, every day is a little bit easier."),
            ("Are you taking it easy at least?", "Trying to, but the washing up doesn't do itself."),
        ),
    ),
    "books_tv": _Topic(
        statements=(
            ("I started {show_genre} {day} and accidentally watched four episodes in a row.", "good"),
            (
                "I'm reading a mystery at the moment, I've guessed the killer three times and been wrong every time.",
                "info",
            ),
            ("The library near me has a little café now, so I basically live there on Sundays.", "good"),
            ("I abandoned a book halfway through for the first time in years, life's too short.", "info"),
            ("We're rewatching an old sitcom from when we were kids, it has aged strangely.", "info"),
            ("I keep buying books faster than I read them, the pile by my bed is a hazard.", "info"),
        ),
        openers=(
            "Are you watching anything good at the moment?",
            "Have you read any good books lately?",
            "Any recommendations for something to watch tonight?",
        ),
        follow_ups=(
            ("Would I like it, do you think?", "I think so, it's right up your street."),
            ("Is it worth sticking with?", "Yes, it gets much better after a slow start."),
            ("Who's in it, anyone I'd know?", "Nobody famous, which is part of the charm honestly."),
        ),
    ),
    "hobbies": _Topic(
        statements=(
            ("I've been doing jigsaw puzzles in the evenings, very calming, very nerdy.", "good"),
            ("I signed up for a life drawing class and my first attempt looked like a potato.", "info"),
            ("I've been trying to learn to knit, so far I've produced one very long, very uneven scarf.", "info"),
            ("We went to a pub quiz {day} and came second, robbed on the music round.", "good"),
            ("I've got really into photographing old doorways, it's a whole thing now.", "good"),
            ("I went to a candle-making workshop {day}, the whole flat smells of cinnamon.", "info"),
            ("My board game collection has officially outgrown the cupboard.", "info"),
        ),
        openers=(
            "Have you got any new hobbies on the go?",
            "What have you been doing to unwind lately?",
            "Are you doing anything fun this weekend?",
        ),
        follow_ups=(
            ("How did you get into that?", "A friend talked me into it, and now I'm the one talking people into it."),
            ("Is it expensive to get started?", "Not really, you can start with almost nothing."),
            ("Do you do it with other people?", "Sometimes, there's a little group that meets once a month."),
        ),
    ),
    "cars": _Topic(
        statements=(
            ("My car has started making a rattling noise, I'm hoping it goes away if I ignore it.", "bad"),
            ("Traffic was a nightmare {day}, it took forty minutes to go two miles.", "bad"),
            ("I got a parking ticket {day} for being two minutes late back to the meter.", "bad"),
            ("I've been taking the bus more and I've actually started to enjoy reading on it.", "good"),
            ("We drove out to the coast {day} just to get chips and drive back, no regrets.", "good"),
            ("Filling up the car costs a small fortune these days, it's ridiculous.", "info"),
        ),
        openers=(
            "How's the commute treating you these days?",
            "Do you still drive to work most days?",
            "Have you been on any road trips lately?",
        ),
        follow_ups=(
            ("Have you thought about getting it looked at?", "I have thought about it, which is as far as I've got."),
            ("Is there a quicker way round?", "Not really, every route seems to have roadworks at the moment."),
            ("Would you ever go completely car-free?", "Maybe one day, if the buses were a bit more reliable."),
        ),
    ),
    "learning": _Topic(
        statements=(
            ("I'm doing an online course in the evenings, it's interesting but the quizzes are humbling.", "info"),
            ("I've been practising my handwriting, it got so bad I couldn't read my own shopping lists.", "info"),
            ("I watched a documentary about old shipwrecks and now I can't stop talking about it.", "good"),
            ("I signed up for a public lecture series at the university, the first one was about volcanoes.", "good"),
            (
                "I keep starting language apps and abandoning them after a week, the owl is very disappointed in me.",
                "info",
            ),
            ("I borrowed a chemistry textbook from my niece and it turns out I remember nothing.", "info"),
        ),
        openers=(
            "Are you learning anything new at the moment?",
            "Have you ever thought about going back to study?",
            "What's the most interesting thing you've read this week?",
        ),
        follow_ups=(
            ("Is it hard to keep up with?", "A little, but I try to do a bit every evening."),
            ("What made you pick that?", "Pure curiosity, I kept reading about it and wanted to know more."),
            ("Would you recommend it to me?", "Absolutely, I think you'd enjoy it even more than me."),
        ),
    ),
    "money": _Topic(
        statements=(
            ("I went in for milk {day} and came out with a lamp, I don't know how it happens.", "info"),
            ("I'm trying a no-spend month and it's going terribly.", "bad"),
            ("I sold some old clothes online and made enough for a very nice dinner.", "good"),
            ("Our energy bill came in {day} and I had to sit down for a minute.", "bad"),
            ("I finally replaced my phone case, the old one was cracked in four places.", "info"),
            ("There's a flea market on the first Sunday of the month, I always find something weird there.", "good"),
        ),
        openers=(
            "Have you bought anything fun recently?",
            "Are you saving up for anything at the moment?",
            "How's the budget holding up this month?",
        ),
        follow_ups=(
            ("Was it worth it in the end?", "Completely, I use it every single day."),
            ("Where did you find it?", "A little shop near the station, I'll take you some time."),
            ("Are you going to keep it up?", "I'll try, but I'm not making any promises."),
        ),
    ),
}

_GREETINGS = (
    "{hello} {other}! How has your week been?",
    "{hello} {other}! Sorry I went quiet, the last few days have been a blur.",
    "{hello} {other}, have you got a minute to catch up?",
    "{hello} {other}! It feels like ages since we talked, what's new with you?",
    "{hello} {other}, I've been meaning to message you all week.",
    "{hello} {other}! How are things on your end?",
    "{hello} {other}. Quick break at last, how are you doing?",
    "{hello} {other}! I hope your week has been kinder than mine.",
)
_GREETING_REPLIES = (
    "Hi {other}! Pretty good, thanks. It's been {weather} here all week, so I've mostly stayed in.",
    "Hey! Not bad at all, a bit tired but hanging in there.",
    "Good to hear from you, {other}! Busy, but the good kind of busy.",
    "Hey {other}! Honestly a bit of a mixed bag, but better now.",
    "Hi! All good here, the weather has been {weather}, so apart from the usual complaining, fine.",
    "Oh hey {other}! I was literally just about to message you.",
    "Hi {other}! I can't complain. Well, I can, but I won't.",
    "Hello! Surviving, just about, it's been {weather} and I've been glued to the kettle.",
)
_CLOSINGS = (
    "Anyway, I should get going, {reason}. Talk soon!",
    "Right, I'd better go, {reason}. Speak later!",
    "I have to run, {reason}, but this was lovely.",
    "Okay, {reason}, so I'll leave it there for now. Let's catch up properly soon.",
    "Oh, look at the time, {reason}. Lovely chatting as always.",
)
_CLOSING_REPLIES = (
    "Of course! Good luck with everything, talk soon.",
    "No worries, it was great to catch up. Take care!",
    "Sounds good, speak soon and enjoy the rest of your day!",
    "Bye for now! Let me know how it all goes.",
    "Definitely, this was fun. Have a good one!",
    "Go, go! We'll catch up properly another time.",
)
_HELLO = {
    "morning": ("Morning", "Good morning", "Hey"),
    "afternoon": ("Hi", "Hey", "Afternoon"),
    "evening": ("Evening", "Hey", "Hi"),
}
_REACTIONS = {
    "good": (
        "That's amazing!",
        "Oh, that's brilliant!",
        "Congratulations, that's huge!",
        "No way, that's so exciting!",
        "I love that for you!",
        "That's wonderful news!",
        "Oh nice, good for you!",
    ),
    "bad": (
        "Oh no, I'm sorry to hear that.",
        "Ugh, that sounds rough.",
        "Oh no, that's awful.",
        "That sounds really stressful.",
        "Oh dear, what a week.",
        "I'm sorry, that's no fun at all.",
    ),
    "info": (
        "Oh, interesting!",
        "Ha, fair enough.",
        "Oh really?",
        "That makes sense.",
        "Huh, I didn't know that.",
        "Oh, nice.",
        "Ah, good to know.",
    ),
    "change": (
        "Wait, really? That's a change!",
        "Oh, since when?",
        "Ha, I can't keep up with you!",
        "Oh, that's new!",
        "Huh, didn't see that coming!",
    ),
}
_COMMENTS = {
    "good": (
        "You completely deserve it.",
        "Honestly, that made my day.",
        "We need to celebrate next time I see you.",
        "I'm really happy for you.",
        "That's the best thing I've heard all week.",
    ),
    "bad": (
        "Take it easy on yourself this week.",
        "Let me know if there's anything I can do.",
        "Fingers crossed things calm down soon.",
        "That's a lot to deal with at once.",
        "I hope the rest of the week is kinder to you.",
    ),
    "info": (
        "I'll keep that in mind.",
        "You learn something new every day.",
        "That sounds like a sensible plan.",
        "Keep me posted on how it goes.",
        "I would never have thought of that.",
    ),
    "change": (
        "Keep me posted on how it goes.",
        "Change is good, I think.",
        "I'll update my mental notes.",
        "I hope it works out well this time.",
    ),
}
_ANSWER_LEADS = (
    "Funny you should ask.",
    "Hmm, let me think.",
    "Good question.",
    "Oh, where do I start.",
    "Well, let me see.",
    "Ha, okay, so.",
    "Honestly?",
)
_TOPIC_SHIFTS = ("", "", "", "Anyway,", "Oh, also,", "Completely unrelated, but", "Random thought, but")
_SAME_TOPIC = ("That reminds me.", "Funny you mention it.", "Same sort of thing here.", "Ha, relatable.")
_FACT_PREFIXES = {
    "good": ("Big news!", "Guess what?", "Okay, I have to tell you something.", "Small personal milestone:"),
    "bad": ("Ugh, what a week.", "So, slightly rubbish news.", "Okay, vent incoming.", "Well, things went sideways."),
    "info": ("Oh, by the way,", "Random update:", "Not sure if I mentioned it, but", "Before I forget,"),
    "change": ("Update for you!", "Oh, news on that front,", "Quick update,", "So, things have changed."),
}
_FACT_SUFFIXES = {
    "good": ("Still buzzing about it.", "I can't stop smiling.", "Honestly so happy."),
    "bad": ("Not my finest moment.", "What a mess.", "Anyway, it is what it is."),
    "info": ("Just thought you'd like to know.", "Anyway, that's my news.", "Thought you'd find that funny."),
    "change": ("Keep up, I know.", "Just so you're up to date.", "Hopefully it sticks this time."),
}
# Extra lines with no slots: the last resort when every drawn filler line would touch a fact's value.
_SAFE_LINES = (
    "Honestly, not much to report, it's been a quiet one.",
    "It's been one of those weeks where nothing happens and everything takes ages.",
    "I spent most of the evening doing nothing at all, and it was great.",
    "Not a lot going on here, just the usual routine.",
)
_STOP_LOWER = re.compile(r"^(?!I\b|I'|\{(?!When|Relative)\w+\})")


# -- building -----------------------------------------------------------------------------------------------------


@dataclass
class _Line:
    """A planned turn of a fact episode, before it has a place and a time."""

    speaker: int  # 0 or 1
    text: str
    mark: str = ""  # "evidence" or "stale"
    when: str = ""  # temporal evidence: "today" or "relative"; {when} is filled once the time is known
    turn_id: str = ""
    timestamp: float = 0.0


@dataclass
class _Fact:
    """A question with the episodes (one per session) that make it answerable."""

    kind: str
    owner: int
    question: str
    answers: tuple[str, ...]
    parts: list[list[_Line]]
    topic: str
    values: tuple[str, ...]  # strings that may occur only in this fact's own lines
    clash: re.Pattern[str] | None = None
    group: str = ""
    sessions: list[int] = field(default_factory=list)

    def lines(self) -> list[_Line]:
        return [line for part in self.parts for line in part]


def _fill(template: str, values: dict[str, str]) -> str:
    """Replace ``{key}`` placeholders that ``values`` knows; leave the others for later."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def _after(prefix: str, sentence: str) -> str:
    """``prefix`` then ``sentence``, lower-casing the sentence's first letter after a comma or "but"."""
    if not prefix:
        return sentence
    if prefix.endswith((",", "but")) and _STOP_LOWER.match(sentence):
        if sentence.startswith("{"):
            sentence = "{" + sentence[1].lower() + sentence[2:]
        else:
            sentence = sentence[0].lower() + sentence[1:]
    return f"{prefix} {sentence}"


def _article(value: str) -> str:
    return f"{'an' if value[:1].lower() in 'aeiou' else 'a'} {value}"


def _value_forms(value: str) -> dict[str, str]:
    """The placeholders a value fills: as is, capitalised (at a sentence start) and with its article."""
    return {"v": value, "V": value[:1].upper() + value[1:], "av": _article(value)}


def _clash_pattern(words: Sequence[str]) -> re.Pattern[str] | None:
    words = [w for w in words if w]
    if not words:
        return None
    body = "|".join(re.escape(w.lower()) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{body})(?:s|es)?\b", re.IGNORECASE)


def _word_count(text: str) -> int:
    return len(text.split())


def _question_counts(sessions: int, turns_per_session: int) -> dict[str, int]:
    """How many questions of each kind fit: about 41 at the default size, fewer when sessions are few or short."""
    base = {
        "single_hop": 6,
        "multi_hop": 5,
        "temporal": 7,
        "update": 6,
        "paraphrase": 6,
        "exact_code": 6,
        "inference": 5,
    }
    parts = {
        "single_hop": 1.0,
        "multi_hop": 2.0,
        "temporal": 1.0,
        "update": 2.4,
        "paraphrase": 1.0,
        "exact_code": 1.0,
        "inference": 1.5,
    }
    needed = sum(base[k] * parts[k] for k in KINDS) * 3.8  # slots per episode, with its parity spare
    available = sessions * (turns_per_session - 4)
    factor = min(1.0, 0.8 * available / needed)
    counts = {kind: max(1, int(base[kind] * factor)) for kind in KINDS}
    if sessions < 2:
        counts["multi_hop"] = counts["update"] = 0
    return counts


class _DialogueBuilder:
    """Builds one dialogue from one ``random.Random``; see the module docstring for what it guarantees."""

    def __init__(self, dialogue_id: int, rng: random.Random, sessions: int, turns_per_session: int) -> None:
        self.dialogue_id = dialogue_id
        self.rng = rng
        self.n_sessions = sessions
        self.n_turns = turns_per_session
        first, second = rng.sample(_SPEAKERS, 2)
        self.names = (first[0], second[0])
        self.genders = (first[1], second[1])
        self.facts: list[_Fact] = []
        self.used: list[str] = []  # lower-cased values already taken in this dialogue
        self.groups: tuple[set[str], set[str]] = (set(), set())

    # ---- values and lines

    def _value(self, pool: str, taken: Sequence[str] = ()) -> str:
        """A value from ``pool`` that no other value of this dialogue contains or is contained in."""
        taken_lower = [t.lower() for t in (*self.used, *taken)]

        def free(value: str) -> bool:
            low = value.lower()
            return not any(low in t or t in low for t in taken_lower)

        if pool in _CODES:
            for _ in range(200):
                value = _CODES[pool](self.rng)
                if free(value):
                    return value
            raise RuntimeError(f"could not draw a fresh {pool} code")
        choices = [v for v in _POOLS[pool] if free(v)]
        if not choices:
            raise LookupError(pool)
        return self.rng.choice(choices)

    def _wrap(self, sentence: str, mood: str) -> str:
        """Say a fact inside a longer turn sometimes, as people do ("Big news! ... Still buzzing about it.")."""
        rng = self.rng
        if rng.random() < 0.45:
            sentence = _after(rng.choice(_FACT_PREFIXES[mood]), sentence)
        if rng.random() < 0.3:
            sentence = f"{sentence} {rng.choice(_FACT_SUFFIXES[mood])}"
        return sentence

    def _episode(
        self,
        owner: int,
        says: Sequence[str],
        values: dict[str, str],
        mood: str,
        mark: str,
        asked: Sequence[tuple[str, str, str]] = (),
        follow: Sequence[tuple[str, str]] = (),
        when: str = "",
        wrap: bool = True,
    ) -> list[_Line]:
        """The turns around one statement: maybe a question that prompts it, then the other person's reaction."""
        rng = self.rng
        other = 1 - owner
        lines: list[_Line] = []
        if asked and rng.random() < 0.6:
            lead, ask, reply = rng.choice(asked)
            if lead:
                lines.append(_Line(owner, _fill(lead, values)))
            lines.append(_Line(other, _fill(ask, values)))
            lines.append(_Line(owner, _fill(reply, values), mark, when))
        else:
            said = rng.choice(says)
            lines.append(_Line(owner, _fill(self._wrap(said, mood) if wrap else said, values), mark, when))
        reaction = rng.choice(_REACTIONS[mood])
        if follow and len(lines) < 3 and rng.random() < 0.5:
            question, answer = rng.choice(follow)
            lines.append(_Line(other, f"{reaction} {_fill(question, values)}"))
            lines.append(_Line(owner, _fill(answer, values)))
        else:
            lines.append(_Line(other, f"{reaction} {rng.choice(_COMMENTS[mood])}"))
        return lines

    def _ask(self, template: str, owner: int) -> str:
        pos = "her" if self.genders[owner] == "f" else "his"
        return _fill(template, {"P": self.names[owner], "pos": pos})

    # ---- one fact per kind

    def _statement_fact(self, kind: str, tpl: _StatementTemplate, owner: int, today: bool) -> _Fact:
        values: dict[str, str] = {}
        answers: tuple[str, ...] = ()
        if tpl.pool:
            value = self._value(tpl.pool)
            values = _value_forms(value)
            answers = (value, value.split()[-1]) if tpl.with_surname else (value,)
        when = ("today" if today else "relative") if kind == "temporal" else ""
        part = self._episode(owner, tpl.says, values, tpl.mood, "evidence", tpl.asked, tpl.follow, when)
        clash = None
        if tpl.clash_value and answers:
            clash = _clash_pattern([answers[0].removesuffix("s")])
        return _Fact(
            kind=kind,
            owner=owner,
            question=self._ask(tpl.question, owner),
            answers=answers,
            parts=[part],
            topic=tpl.topic,
            values=answers,
            clash=clash,
            group=tpl.group,
        )

    def _bridge_fact(self, tpl: _BridgeTemplate, owner: int) -> _Fact:
        value = self._value(tpl.pool)
        values = _value_forms(value)
        extra: tuple[str, ...] = ()
        if tpl.name_pool:
            values["n"] = self._value(tpl.name_pool, taken=(value,))
            extra = (values["n"],)
        answers = (value, value.split()[-1]) if tpl.with_surname else (value,)
        first = self._episode(owner, tpl.first, values, "info", "evidence", follow=tpl.follow_first)
        second = self._episode(owner, tpl.second, values, tpl.second_mood, "evidence", follow=tpl.follow_second)
        return _Fact(
            kind="multi_hop",
            owner=owner,
            question=self._ask(tpl.question, owner),
            answers=answers,
            parts=[first, second],
            topic=tpl.topic,
            values=answers + extra,
            group=tpl.group,
        )

    def _update_fact(self, tpl: _UpdateTemplate, owner: int, changes: int) -> _Fact:
        chain: list[str] = []
        for _ in range(changes + 1):
            chain.append(self._value(tpl.pool, taken=chain))
        phrasings = self.rng.sample(tpl.changes, changes)
        parts = [self._episode(owner, tpl.first, _value_forms(chain[0]), "info", "stale")]
        for i, phrasing in enumerate(phrasings, start=1):
            values = {**_value_forms(chain[i]), "old": chain[i - 1]}
            mark = "evidence" if i == changes else "stale"
            parts.append(self._episode(owner, (phrasing,), values, "change", mark, follow=tpl.follow))
        return _Fact(
            kind="update",
            owner=owner,
            question=self._ask(tpl.question, owner),
            answers=(chain[-1],),
            parts=parts,
            topic=tpl.topic,
            values=tuple(chain),
            group=tpl.group,
        )

    def _inference_fact(self, tpl: _InferenceTemplate, owner: int) -> _Fact:
        parts = [
            self._episode(owner, says, {}, tpl.mood, "evidence", follow=tpl.follow if i == 0 else (), wrap=False)
            for i, says in enumerate(tpl.parts)
        ]
        return _Fact(
            kind="inference",
            owner=owner,
            question=self._ask(tpl.question, owner),
            answers=(tpl.answer, tpl.phrase),
            parts=parts,
            topic=tpl.topic,
            values=(tpl.phrase,),
            clash=_clash_pattern(tpl.clash),
            group=tpl.group,
        )

    def _fits(self, new: _Fact) -> bool:
        """Whether ``new`` can join the dialogue without any value leaking into a turn it does not belong to."""
        own_lines = new.lines()
        for answer in new.answers:
            low = answer.lower()
            if low in ("yes", "no"):
                continue
            if low in new.question.lower():
                return False
            if any(low in line.text.lower() for line in own_lines if line.mark != "evidence"):
                return False
            if new.kind != "temporal" and not any(
                low in line.text.lower() for line in own_lines if line.mark == "evidence"
            ):
                return False
        new_keys = [v.lower() for v in new.values]
        for line in own_lines:
            if line.speaker == new.owner and line.mark != "evidence" and new.clash and new.clash.search(line.text):
                return False
        for fact in self.facts:
            keys = [v.lower() for v in fact.values]
            if any(k in line.text.lower() for line in fact.lines() for k in new_keys):
                return False
            if any(k in line.text.lower() for line in own_lines for k in keys):
                return False
            if any(k in fact.question.lower() for k in new_keys) or any(k in new.question.lower() for k in keys):
                return False
            if new.clash and any(new.clash.search(line.text) for line in fact.lines() if line.speaker == new.owner):
                return False
            if fact.clash and any(fact.clash.search(line.text) for line in own_lines if line.speaker == fact.owner):
                return False
        return True

    def _plan_facts(self, counts: dict[str, int]) -> None:
        rng = self.rng
        templates: dict[str, Sequence[object]] = {
            "single_hop": _SINGLE_HOP,
            "multi_hop": _MULTI_HOP,
            "temporal": _TEMPORAL,
            "update": _UPDATE,
            "paraphrase": _PARAPHRASE,
            "exact_code": _EXACT_CODE,
            "inference": _INFERENCE,
        }
        for kind in KINDS:
            wanted = counts[kind]
            pool = list(templates[kind])
            rng.shuffle(pool)
            owner = rng.randrange(2)
            made = 0
            for tpl in pool:
                if made >= wanted:
                    break
                placed = False
                for who in (owner, 1 - owner):
                    group = getattr(tpl, "group", "")
                    if group and group in self.groups[who]:
                        continue
                    for _ in range(6):
                        try:
                            fact = self._make(kind, tpl, who, made, wanted)
                        except LookupError:
                            break
                        if self._fits(fact):
                            self.facts.append(fact)
                            self.used.extend(v.lower() for v in fact.values)
                            if group:
                                self.groups[who].add(group)
                            placed = True
                            break
                    if placed:
                        break
                if placed:
                    made += 1
                    owner = 1 - owner
            if made < wanted:
                logger.debug("dialogue %d: only %d of %d %s questions fit", self.dialogue_id, made, wanted, kind)

    def _make(self, kind: str, tpl: object, owner: int, index: int, wanted: int) -> _Fact:
        if kind == "multi_hop":
            assert isinstance(tpl, _BridgeTemplate)
            return self._bridge_fact(tpl, owner)
        if kind == "update":
            assert isinstance(tpl, _UpdateTemplate)
            changes = 2 if index < 2 and self.n_sessions >= 3 else 1
            return self._update_fact(tpl, owner, changes)
        if kind == "inference":
            assert isinstance(tpl, _InferenceTemplate)
            return self._inference_fact(tpl, owner)
        assert isinstance(tpl, _StatementTemplate)
        # A couple of temporal facts are said "today" (the answer is the session's date), but never all of them.
        today = kind == "temporal" and index < min(2, wanted // 2)
        return self._statement_fact(kind, tpl, owner, today=today)

    # ---- sessions

    def _place_facts(self) -> list[list[list[_Line]]]:
        """Give every episode a session: a fact's episodes go to strictly later sessions, spread evenly."""
        rng = self.rng
        capacity = self.n_turns - 4
        load = [0] * self.n_sessions
        episodes: list[list[list[_Line]]] = [[] for _ in range(self.n_sessions)]
        # Round-robin over the kinds, so when room is short every kind still gets questions; in each round the
        # facts with the fewest episodes go first, so a small dialogue gets many questions rather than one update.
        by_kind = [[f for f in self.facts if f.kind == kind] for kind in KINDS]
        order: list[_Fact] = []
        for round_ in range(max((len(facts) for facts in by_kind), default=0)):
            batch = [facts[round_] for facts in by_kind if round_ < len(facts)]
            order.extend(sorted(batch, key=lambda f: len(f.parts)))
        kept: list[_Fact] = []
        for fact in order:
            sizes = [len(part) + 1 for part in fact.parts]
            k = len(sizes)
            if k > self.n_sessions:
                continue
            min_gap = 2 if self.n_sessions >= 3 * k else 1
            best: tuple[float, list[int]] | None = None
            for _ in range(60):
                chosen = sorted(rng.sample(range(self.n_sessions), k))
                if any(b - a < min_gap for a, b in zip(chosen, chosen[1:])):
                    continue
                if any(load[s] + size > capacity for s, size in zip(chosen, sizes)):
                    continue
                score = sum(load[s] for s in chosen) + rng.random()
                if best is None or score < best[0]:
                    best = (score, chosen)
            if best is None:
                logger.debug("dialogue %d: no room for a %s question", self.dialogue_id, fact.kind)
                continue
            fact.sessions = best[1]
            for s, size, part in zip(best[1], sizes, fact.parts):
                load[s] += size
                episodes[s].append(part)
            kept.append(fact)
        self.facts = [f for f in self.facts if f in kept]
        return episodes

    def build(self) -> Dialogue:
        rng = self.rng
        self._plan_facts(_question_counts(self.n_sessions, self.n_turns))
        episodes = self._place_facts()
        filler = _Filler(rng, self.names, self.facts)
        start_day = datetime(2023, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(0, 640))
        day = start_day
        sessions: list[DatedSession] = []
        n = self.n_turns
        for s in range(self.n_sessions):
            if s:
                day = day + timedelta(days=rng.randint(2, 9))
            started = day.replace(hour=rng.randint(8, 21), minute=rng.randrange(0, 60))
            slots: list[_Line | None] = [None] * n
            offset = s * n  # turns alternate over the whole dialogue
            eps = episodes[s]
            rng.shuffle(eps)
            cursor, end = 2, n - 2
            for i, ep in enumerate(eps):
                free = end - cursor - sum(len(e) + 1 for e in eps[i:])
                gap = rng.randint(0, max(0, 2 * free // (len(eps) - i + 1)))
                start = cursor + min(gap, free)
                if (offset + start) % 2 != ep[0].speaker:
                    start += 1
                for j, line in enumerate(ep):
                    slots[start + j] = line
                cursor = start + len(ep)
            texts = filler.session(slots, offset, started)
            turns = []
            for t in range(n):
                timestamp = started.timestamp() + 60 * t + rng.randint(0, 40)
                speaker = (offset + t) % 2
                line = slots[t]
                text = texts[t]
                if line is not None:
                    text = self._say_when(line, timestamp)
                    line.turn_id = f"D{self.dialogue_id}:S{s + 1}:T{t + 1}"
                    line.timestamp = timestamp
                    line.text = text
                turns.append(
                    Turn(
                        turn_id=f"D{self.dialogue_id}:S{s + 1}:T{t + 1}",
                        speaker=self.names[speaker],
                        role="user" if speaker == 0 else "assistant",
                        text=text,
                        timestamp=timestamp,
                    )
                )
            sessions.append(DatedSession(index=s + 1, started=started, turns=tuple(turns)))
        last = sessions[-1].turns[-1].timestamp
        asked_at = float(int(last) + rng.randint(1, 4) * 86400 + rng.randint(0, 8 * 3600))
        questions = self._questions(asked_at)
        return Dialogue(
            dialogue_id=self.dialogue_id,
            speakers=self.names,
            sessions=tuple(sessions),
            questions=questions,
        )

    def _say_when(self, line: _Line, timestamp: float) -> str:
        """Fill a temporal fact's {when} now that the turn's time is known ("this morning" only after noon)."""
        if "{when}" not in line.text.lower():
            return line.text
        said = datetime.fromtimestamp(timestamp, UTC)
        if line.when == "today":
            expression = "today"
        else:
            options = ["yesterday", "yesterday", "last", "last", "days", "the day before yesterday", "a week ago"]
            if said.hour >= 12:
                options.append("this morning")
            expression = self.rng.choice(options)
            if expression == "last":
                back = self.rng.randint(2, 6)
                expression = f"last {_WEEKDAYS[(said.weekday() - back) % 7]}"
            elif expression == "days":
                expression = f"{self.rng.choice(('two', 'three', 'four'))} days ago"
        return line.text.replace("{when}", expression).replace("{When}", expression[0].upper() + expression[1:])

    def _questions(self, asked_at: float) -> tuple[Question, ...]:
        order = {kind: i for i, kind in enumerate(KINDS)}
        facts = sorted(self.facts, key=lambda f: (order[f.kind], f.lines()[0].timestamp))
        questions = []
        for i, fact in enumerate(facts, start=1):
            evidence = tuple(line.turn_id for line in fact.lines() if line.mark == "evidence")
            stale = tuple(line.turn_id for line in fact.lines() if line.mark == "stale")
            answers = fact.answers
            if fact.kind == "temporal":
                line = next(line for line in fact.lines() if line.mark == "evidence")
                answers = date_answers(resolve_relative_date(line.text, line.timestamp))
            questions.append(
                Question(
                    question_id=f"D{self.dialogue_id}:Q{i}",
                    kind=fact.kind,
                    text=fact.question,
                    answers=answers,
                    evidence=evidence,
                    stale=stale,
                    asked_at=asked_at,
                )
            )
        return tuple(questions)


class _Filler:
    """Ordinary chat between the facts: greetings, topic chains of statement, reaction and follow-up, goodbyes."""

    def __init__(self, rng: random.Random, names: tuple[str, str], facts: Sequence[_Fact]) -> None:
        self.rng = rng
        self.names = names
        self.forbidden = sorted({v.lower() for fact in facts for v in fact.values})
        patterns: list[list[re.Pattern[str]]] = [[], []]
        for fact in facts:
            if fact.clash is not None:
                patterns[fact.owner].append(fact.clash)
        self.clash = patterns
        # Topics of the facts come up three times as often: the hard negatives for retrieval.
        weights = dict.fromkeys(_TOPICS, 1)
        for fact in facts:
            if fact.topic in weights:
                weights[fact.topic] += 3
        self.topics = list(weights)
        self.weights = [weights[t] for t in self.topics]
        self.last_topic = ""
        # Templates said lately (about the last four sessions' worth), so the same line does not come back soon.
        self.recent: deque[str] = deque(maxlen=60)

    def _ok(self, speaker: int, text: str) -> bool:
        low = text.lower()
        if any(value in low for value in self.forbidden):
            return False
        return not any(p.search(text) for p in self.clash[speaker])

    def _draw(self, speaker: int, make: Callable[[], tuple[str, str]]) -> str:
        """A text from ``make`` (which returns its template and text) that is allowed and, if possible, fresh."""
        for attempt in range(40):
            template, text = make()
            if (attempt >= 25 or template not in self.recent) and self._ok(speaker, text):
                self.recent.append(template)
                return text
        for text in self.rng.sample(_SAFE_LINES, len(_SAFE_LINES)):
            if self._ok(speaker, text):
                return text
        raise RuntimeError("no filler line avoids every fact value")

    def _slots(self, template: str, speaker: int) -> str:
        values = {"other": self.names[1 - speaker]}

        def pick(match: re.Match[str]) -> str:
            key = match.group(1)
            if key in values:
                return values[key]
            lower = key[0].lower() + key[1:]
            if lower in _FILLER_SLOTS:
                word = self.rng.choice(_FILLER_SLOTS[lower])
                return word[0].upper() + word[1:] if key[0].isupper() else word
            return match.group(0)

        return re.sub(r"\{(\w+)\}", pick, template)

    def _topic(self) -> str:
        for _ in range(5):
            topic = self.rng.choices(self.topics, weights=self.weights)[0]
            if topic != self.last_topic:
                break
        self.last_topic = topic
        return topic

    def _choose(self, speaker: int, options: Sequence[str], head: str = "", prefix: str = "") -> str:
        """One of ``options`` with its slots filled, after ``head`` and ``prefix``, that passes ``_ok``."""

        def make() -> tuple[str, str]:
            template = self.rng.choice(options)
            text = self._slots(_after(prefix, template), speaker)
            return template, f"{head} {text}" if head else text

        return self._draw(speaker, make)

    def _statement(self, speaker: int, topic: str, prefix: str = "") -> tuple[str, str]:
        mood = "info"

        def make() -> tuple[str, str]:
            nonlocal mood
            template, mood = self.rng.choice(_TOPICS[topic].statements)
            return template, self._slots(_after(prefix, template), speaker)

        return self._draw(speaker, make), mood

    def _follow_up(self, speaker: int, topic: str) -> tuple[str, str] | None:
        """A follow-up question for ``speaker`` to ask and the answer the other person gives, both allowed."""
        pairs = list(_TOPICS[topic].follow_ups)
        self.rng.shuffle(pairs)
        for question, answer in pairs:
            if question not in self.recent and self._ok(speaker, question) and self._ok(1 - speaker, answer):
                self.recent.append(question)
                return question, answer
        return None

    def session(self, slots: Sequence[_Line | None], offset: int, started: datetime) -> list[str]:
        """Texts for the empty slots of one session (fact slots get "" and are filled by the caller)."""
        rng = self.rng
        n = len(slots)
        out = [""] * n
        part = "morning" if started.hour < 12 else "afternoon" if started.hour < 17 else "evening"
        speaker = offset % 2
        hello = rng.choice(_HELLO[part])
        greetings = [g.replace("{hello}", hello) for g in _GREETINGS]
        out[0] = self._choose(speaker, greetings)
        out[1] = self._choose(1 - speaker, _GREETING_REPLIES)
        last = (offset + n - 2) % 2
        out[n - 2] = self._choose(last, _CLOSINGS)
        out[n - 1] = self._choose(1 - last, _CLOSING_REPLIES)
        t = 2
        while t < n - 2:
            if slots[t] is not None:
                t += 1
                continue
            end = t
            while end < n - 2 and slots[end] is None:
                end += 1
            after_fact = slots[t - 1] is not None
            for i, text in enumerate(self._gap(offset + t, end - t, after_fact)):
                out[t + i] = text
            t = end
        return out

    def _gap(self, first: int, length: int, after_fact: bool) -> list[str]:
        """``length`` turns of chat starting at global turn ``first``; the last one never asks a question.

        A small state machine keeps the chat coherent: a question is answered in the next turn, a statement
        gets a reaction (with a follow-up question, a matching story of one's own, or a comment), and a new
        topic starts when a chain ends.
        """
        rng = self.rng
        texts: list[str] = []
        # ("open", topic, "") after an open question, ("answer", topic, text) after a follow-up question,
        # ("said", topic, mood) after a statement, None when the next turn starts a topic.
        state: tuple[str, str, str] | None = None
        chain = 0
        for i in range(length):
            speaker = (first + i) % 2
            last = i == length - 1
            if state is not None and state[0] == "open":
                text, mood = self._statement(speaker, state[1])
                text = f"{rng.choice(_ANSWER_LEADS)} {text}"
                state = ("said", state[1], mood)
            elif state is not None and state[0] == "answer":
                text = state[2]
                state = ("said", state[1], "info")
            elif state is not None and state[0] == "said" and chain < 3:
                _, topic, mood = state
                reaction = rng.choice(_REACTIONS[mood])
                roll = rng.random()
                pair = self._follow_up(speaker, topic) if not last and roll < 0.45 else None
                if pair is not None:
                    text = f"{reaction} {pair[0]}"
                    state = ("answer", topic, pair[1])
                elif mood != "bad" and roll < 0.75:
                    own, own_mood = self._statement(speaker, topic)
                    text = f"{reaction} {rng.choice(_SAME_TOPIC)} {own}"
                    state = ("said", topic, own_mood)
                else:
                    text = self._choose(speaker, _COMMENTS[mood], head=reaction)
                    state = None
                chain += 1
            else:
                topic = self._topic()
                chain = 0
                shift = rng.choice(_TOPIC_SHIFTS) if (texts or after_fact) else ""
                if not last and rng.random() < 0.35:
                    text = self._choose(speaker, _TOPICS[topic].openers, prefix=shift)
                    state = ("open", topic, "")
                else:
                    text, mood = self._statement(speaker, topic, shift)
                    state = ("said", topic, mood)
            texts.append(text)
        return texts


def _check(dialogue: Dialogue) -> str:
    """The first broken guarantee of a built dialogue, or "" when it keeps them all."""
    turns = dialogue.turns()
    by_id = {turn.turn_id: turn for turn in turns}
    allowed: dict[str, set[str]] = {}
    for q in dialogue.questions:
        for answer in q.answers:
            allowed.setdefault(answer.lower(), set()).update(q.evidence, q.stale)
    for q in dialogue.questions:
        if q.kind == "temporal":
            turn = by_id[q.evidence[0]]
            if len(find_relative_expressions(turn.text)) != 1:
                return f"{q.question_id}: evidence needs exactly one relative expression"
        for answer in q.answers:
            low = answer.lower()
            if low in ("yes", "no"):
                continue
            for turn in turns:
                if turn.turn_id not in allowed[low] and low in turn.text.lower():
                    return f"{q.question_id}: {answer!r} leaks into {turn.turn_id}"
            if q.kind == "update" and any(low in by_id[t].text.lower() for t in q.stale):
                return f"{q.question_id}: newest value in a stale turn"
        if q.kind == "exact_code":
            count = sum(turn.text.count(q.answers[0]) for turn in turns)
            if count != 1:
                return f"{q.question_id}: code occurs {count} times"
    for turn in turns:
        if not 5 <= _word_count(turn.text) <= 60:
            return f"{turn.turn_id}: {_word_count(turn.text)} words"
        if "{" in turn.text:
            return f"{turn.turn_id}: unfilled placeholder"
    return ""


def build_dialogues(count: int = 3, seed: int = 0, sessions: int = 24, turns_per_session: int = 16) -> list[Dialogue]:
    """``count`` dialogues of ``sessions`` dated sessions with ``turns_per_session`` turns each, and their questions.

    Deterministic: the same arguments give the same dialogues, and dialogue ``k`` depends only on ``seed``,
    ``k`` and the sizes, not on ``count``. At the default size a dialogue has 384 turns (about 5,200 words) and
    about 41 questions, at least five of every kind; smaller sizes get fewer questions.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if sessions < 2:
        raise ValueError("sessions must be >= 2 (multi_hop and update questions span sessions)")
    if turns_per_session < 8:
        raise ValueError("turns_per_session must be >= 8 (a greeting, a goodbye and room for facts)")
    dialogues = []
    for dialogue_id in range(1, count + 1):
        for attempt in range(20):
            rng = random.Random(f"streamrag.dialogues:{seed}:{dialogue_id}:{attempt}")
            dialogue = _DialogueBuilder(dialogue_id, rng, sessions, turns_per_session).build()
            problem = _check(dialogue)
            if not problem:
                break
            logger.debug("dialogue %d attempt %d rejected: %s", dialogue_id, attempt, problem)
        else:
            raise RuntimeError(f"could not build dialogue {dialogue_id}: {problem}")
        dialogues.append(dialogue)
    return dialogues
