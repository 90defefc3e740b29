"""Deadlines in working days (人民法院在线调解规则 Arts.10, 12, 15: "within 3 working days").

How a period is counted, following 民法典 Art.201 and the courts' practice for filings:

- The day of the event (filing, acceptance) is not counted; counting starts the day after.
- A case filed on a non-working day (Saturday, Sunday or a listed holiday) is treated as
  filed on the next working day, so its period starts the working day after that. A case
  filed on Saturday with a 3-working-day deadline is due on Thursday, like one filed on Monday.
- Working days are Monday to Friday, minus ``holidays``, plus ``extra_working_days`` (the
  Saturdays and Sundays China declares working days, 调休上班, around public holidays).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

from jiefen.errors import ConfigurationError

_ONE_DAY = timedelta(days=1)
# More consecutive non-working days than any real calendar has; guards against a bad holiday list.
_MAX_NON_WORKING_RUN = 60


def is_working_day(
    day: date, holidays: frozenset[date], extra_working_days: frozenset[date] = frozenset()
) -> bool:
    """True if ``day`` is a working day under the rules in this module's docstring."""
    if day in extra_working_days:
        return True
    return day.weekday() < 5 and day not in holidays


def _next_working_day(
    day: date, holidays: frozenset[date], extra_working_days: frozenset[date]
) -> date:
    for _ in range(_MAX_NON_WORKING_RUN):
        day += _ONE_DAY
        if is_working_day(day, holidays, extra_working_days):
            return day
    raise ConfigurationError(f"no working day within {_MAX_NON_WORKING_RUN} days after {day}")


def add_working_days(
    start: date,
    n: int,
    holidays: frozenset[date],
    *,
    extra_working_days: frozenset[date] = frozenset(),
) -> date:
    """The date ``n`` working days after ``start`` (the day of the event, which is not counted).

    ``start`` on a non-working day counts as the next working day. ``n == 0`` gives that
    effective start day. ``n`` must not be negative.
    """
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    day = start
    if not is_working_day(day, holidays, extra_working_days):
        day = _next_working_day(day, holidays, extra_working_days)
    for _ in range(n):
        day = _next_working_day(day, holidays, extra_working_days)
    return day


def parse_holidays(values: Iterable[str]) -> frozenset[date]:
    """Parse ``YYYY-MM-DD`` strings (e.g. ``Settings.holidays``) into dates.

    Raises ConfigurationError naming the first value that is not a date.
    """
    days: set[date] = set()
    for value in values:
        try:
            days.add(date.fromisoformat(value.strip()))
        except ValueError as error:
            raise ConfigurationError(f"holiday {value!r} is not a YYYY-MM-DD date") from error
    return frozenset(days)
