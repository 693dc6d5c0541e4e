"""Periods named in questions, read relative to when the question is asked."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from streamrag.timeparse import find_time_range

NOW = datetime(2023, 5, 10, 15, 0, tzinfo=UTC).timestamp()  # a Wednesday


def span(text: str) -> tuple[date, date] | None:
    found = find_time_range(text, NOW, UTC)
    if found is None:
        return None
    day = lambda t: datetime.fromtimestamp(t, UTC).date()  # noqa: E731
    return day(found.start), day(found.end)


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What did I say yesterday?", (date(2023, 5, 9), date(2023, 5, 10))),
        ("what did we plan this morning", (date(2023, 5, 10), date(2023, 5, 11))),
        ("What did I tell you last week?", (date(2023, 5, 1), date(2023, 5, 8))),
        ("the past week", (date(2023, 5, 3), date(2023, 5, 11))),
        ("What happened two days ago?", (date(2023, 5, 8), date(2023, 5, 9))),
        ("what did she cook last Saturday", (date(2023, 5, 6), date(2023, 5, 7))),
        ("What did we talk about in April?", (date(2023, 4, 1), date(2023, 5, 1))),
        ("What did I say in December?", (date(2022, 12, 1), date(2023, 1, 1))),  # the last December
        ("on 7 May 2023", (date(2023, 5, 7), date(2023, 5, 8))),
        ("on May 3rd", (date(2023, 5, 3), date(2023, 5, 4))),
        ("on 2023-04-01", (date(2023, 4, 1), date(2023, 4, 2))),
        ("last month", (date(2023, 4, 1), date(2023, 5, 1))),
    ],
)
def test_periods(question, expected):
    assert span(question) == expected


@pytest.mark.parametrize(
    "question", ["When did Maya run her first half marathon?", "I may go", "March on!", "on the 31st of February"]
)
def test_no_period(question):
    assert span(question) is None


def test_the_users_time_zone_decides_what_yesterday_is():
    from zoneinfo import ZoneInfo

    late = datetime(2023, 5, 10, 23, 30, tzinfo=ZoneInfo("America/New_York")).timestamp()  # already the 11th in UTC
    found = find_time_range("yesterday", late, ZoneInfo("America/New_York"))
    assert datetime.fromtimestamp(found.start, ZoneInfo("America/New_York")).date() == date(2023, 5, 9)
