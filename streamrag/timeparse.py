"""Find the time a question is about ("last week", "yesterday", "in May") as a range of Unix times.

Recall uses the range to search the text said in it and to rank that text
higher; it never drops text outside it (a question about "last week" may
well be answered by what was said the week before). Expressions are read
relative to when the question is asked (``now``), in the user's time zone.

A general date parser (dateparser, parsedatetime) reads any string *as* a
date; here a question has to be searched *for* the few phrases that name a
period, and words like "may", "march" or "second" are mostly not dates. So
this is a short list of unambiguous patterns, each mapped to a calendar range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

_NUMBERS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "a couple of": 2,
    "couple of": 2,
    "three": 3,
    "a few": 3,
    "few": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
}
_MONTHS = {
    name: number
    for number, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march",),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_COUNT = r"(\d+|" + "|".join(sorted((re.escape(n) for n in _NUMBERS), key=len, reverse=True)) + ")"
_MONTH = r"(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_UNIT = r"(day|week|month|year)s?"


@dataclass(frozen=True)
class TimeRange:
    """A period a question names: ``[start, end)`` in Unix seconds, and the words that named it."""

    start: float
    end: float
    phrase: str


def _day_start(day: date, zone: tzinfo) -> float:
    return datetime.combine(day, time(0), tzinfo=zone).timestamp()


def _days(first: date, count: int, zone: tzinfo, phrase: str) -> TimeRange:
    return TimeRange(_day_start(first, zone), _day_start(first + timedelta(days=count), zone), phrase)


def _month(year: int, month: int, zone: tzinfo, phrase: str) -> TimeRange:
    first = date(year, month, 1)
    following = date(year + (month == 12), month % 12 + 1, 1)
    return TimeRange(_day_start(first, zone), _day_start(following, zone), phrase)


def _count(word: str) -> int:
    return int(word) if word.isdigit() else _NUMBERS[word]


def find_time_range(text: str, now: float, zone: tzinfo) -> TimeRange | None:
    """The first period ``text`` names, relative to ``now`` in ``zone``; None when it names none."""
    lowered = " ".join(text.lower().split())
    today = datetime.fromtimestamp(now, zone).date()
    for pattern, build in _RULES:
        match = pattern.search(lowered)
        if match:
            found = build(match, today, zone)
            if found is not None:
                return TimeRange(found.start, found.end, match.group(0))
    return None


def _ago(match: re.Match, today: date, zone: tzinfo) -> TimeRange | None:
    count, unit = _count(match.group(1)), match.group(2)
    if unit == "day":
        return _days(today - timedelta(days=count), 1, zone, "")
    if unit == "week":
        return _days(today - timedelta(days=7 * count + 3), 7, zone, "")
    if unit == "month":
        return _days(today - timedelta(days=30 * count + 10), 21, zone, "")
    return _days(today - timedelta(days=365 * count + 60), 121, zone, "")


def _last(match: re.Match, today: date, zone: tzinfo) -> TimeRange | None:
    which, unit = match.group(1), match.group(2)
    this_week = today - timedelta(days=today.weekday())
    if which == "past":  # "the past week": the days just gone, not a calendar period
        length = {"week": 7, "weekend": 3, "month": 31, "year": 366}[unit]
        return _days(today - timedelta(days=length), length + 1, zone, "")
    if unit == "week":
        return _days(this_week - timedelta(days=7 if which == "last" else 0), 7, zone, "")
    if unit == "weekend":
        saturday = this_week - timedelta(days=2) if which == "last" else this_week + timedelta(days=5)
        return _days(saturday, 2, zone, "")
    if unit == "month":
        year, month = (
            (today.year, today.month)
            if which == "this"
            else ((today.year - 1, 12) if today.month == 1 else (today.year, today.month - 1))
        )
        return _month(year, month, zone, "")
    if unit == "year":
        year = today.year - (which == "last")
        return TimeRange(_day_start(date(year, 1, 1), zone), _day_start(date(year + 1, 1, 1), zone), "")
    return None


def _weekday(match: re.Match, today: date, zone: tzinfo) -> TimeRange | None:
    back = (today.weekday() - _WEEKDAYS.index(match.group(2))) % 7 or 7
    return _days(today - timedelta(days=back), 1, zone, "")


def _named_month(match: re.Match, today: date, zone: tzinfo) -> TimeRange | None:
    month = _MONTHS[match.group(1)]
    year = int(match.group(2)) if match.group(2) else (today.year if month <= today.month else today.year - 1)
    return _month(year, month, zone, "")


def _day_of_month(match: re.Match, today: date, zone: tzinfo) -> TimeRange | None:
    groups = match.groupdict()
    month = _MONTHS[groups["month"]]
    day = int(groups["day"])
    year = int(groups["year"]) if groups.get("year") else None
    try:
        if year is None:
            year = today.year if (month, day) <= (today.month, today.day) else today.year - 1
        return _days(date(year, month, day), 1, zone, "")
    except ValueError:  # "31 February"
        return None


def _iso(match: re.Match, today: date, zone: tzinfo) -> TimeRange | None:
    try:
        return _days(date(int(match.group(1)), int(match.group(2)), int(match.group(3))), 1, zone, "")
    except ValueError:
        return None


_RULES = [
    (re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b"), _iso),
    (
        re.compile(
            r"\b(?P<day>\d{1,2})(?:st|nd|rd|th)?(?: of)? "
            + _MONTH.replace("(", "(?P<month>", 1)
            + r"(?:,? (?P<year>\d{4}))?\b"
        ),
        _day_of_month,
    ),
    (
        re.compile(
            _MONTH.replace("(", "(?P<month>", 1) + r" (?P<day>\d{1,2})(?:st|nd|rd|th)?(?:,? (?P<year>\d{4}))?\b"
        ),
        _day_of_month,
    ),
    (re.compile(r"\bday before yesterday\b"), lambda m, today, zone: _days(today - timedelta(days=2), 1, zone, "")),
    (re.compile(r"\byesterday\b|\blast night\b"), lambda m, today, zone: _days(today - timedelta(days=1), 1, zone, "")),
    (
        re.compile(r"\b(?:today|this morning|this afternoon|this evening|tonight|earlier today)\b"),
        lambda m, today, zone: _days(today, 1, zone, ""),
    ),
    (re.compile(r"\b" + _COUNT + r" " + _UNIT + r" ago\b"), _ago),
    (re.compile(r"\b(last|this|past) (week|weekend|month|year)\b"), _last),
    (re.compile(r"\b(last|on|this past) (" + "|".join(_WEEKDAYS) + r")\b"), _weekday),
    (re.compile(r"\b(?:in|during|since|back in) " + _MONTH + r"(?: (\d{4}))?\b"), _named_month),
    (
        re.compile(r"\b(?:recently|lately|the other day)\b"),
        lambda m, today, zone: _days(today - timedelta(days=7), 8, zone, ""),
    ),
]
