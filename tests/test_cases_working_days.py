from __future__ import annotations

from datetime import date

import pytest

from cases.working_days import add_working_days, is_working_day, parse_holidays
from jiefen.errors import ConfigurationError

NONE: frozenset[date] = frozenset()
# 2026-11-23 is a Monday.
MON, TUE, WED, THU, FRI, SAT, SUN = (date(2026, 11, 23 + i) for i in range(7))
NEXT_MON, NEXT_TUE, NEXT_WED, NEXT_THU = (
    date(2026, 11, 30),
    *(date(2026, 12, i) for i in (1, 2, 3)),
)


def test_the_filing_day_is_not_counted() -> None:
    assert add_working_days(MON, 3, NONE) == THU
    assert add_working_days(MON, 1, NONE) == TUE


def test_weekends_are_skipped() -> None:
    assert add_working_days(THU, 3, NONE) == NEXT_TUE
    assert add_working_days(FRI, 1, NONE) == NEXT_MON


def test_filed_on_saturday_counts_as_filed_on_monday() -> None:
    assert add_working_days(SAT, 3, NONE) == NEXT_THU
    assert add_working_days(SUN, 3, NONE) == NEXT_THU
    assert add_working_days(SAT, 0, NONE) == NEXT_MON


def test_holidays_are_skipped_and_a_holiday_filing_moves_on() -> None:
    holidays = frozenset({TUE, WED})
    assert add_working_days(MON, 3, holidays) == NEXT_MON
    assert add_working_days(TUE, 1, holidays) == FRI  # counts as filed Thursday


def test_national_day_week_and_a_make_up_saturday() -> None:
    # National Day: Oct 1-7 off; Saturday Oct 10 declared a working day (调休上班).
    holidays = parse_holidays([f"2026-10-0{day}" for day in range(1, 8)])
    make_up = frozenset({date(2026, 10, 10)})
    filed = date(2026, 9, 30)  # a Wednesday
    assert add_working_days(filed, 3, holidays) == date(2026, 10, 12)
    assert add_working_days(filed, 3, holidays, extra_working_days=make_up) == date(2026, 10, 10)
    assert is_working_day(date(2026, 10, 10), holidays, make_up)
    assert not is_working_day(date(2026, 10, 5), holidays, make_up)


def test_negative_days_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        add_working_days(MON, -1, NONE)


def test_parse_holidays() -> None:
    assert parse_holidays([" 2026-10-01", "2026-10-02"]) == {date(2026, 10, 1), date(2026, 10, 2)}
    assert parse_holidays([]) == frozenset()
    with pytest.raises(ConfigurationError, match="2026-13-01"):
        parse_holidays(["2026-13-01"])
