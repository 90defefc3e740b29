"""Human-readable case numbers: ``JF20261121-0001``.

``JF`` + the filing day in China time (Asia/Shanghai) + ``-`` + that day's counter, zero-padded
to 4 digits; day 10,000 onwards the counter simply grows (``JF20261121-10000``). The counter is
allocated by the store (one row per day, incremented atomically), so numbers of one day are
consecutive from 1 and start again at 1 the next day.

Pure: ``CaseNumber.parse()`` and ``str()`` are exact inverses; ``parse`` accepts only the
canonical form, so one case never has two spellings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

#: China Standard Time. Asia/Shanghai has been UTC+8 without daylight saving since 1991, so a
#: fixed offset is exact for every case date and needs no tz database on the host.
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")

PREFIX = "JF"
_PATTERN = re.compile(r"JF(\d{8})-(\d{4,})")


def china_day(moment: datetime) -> date:
    """The calendar day of ``moment`` in China; ``moment`` must be timezone-aware."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a naive datetime has no China day; pass an aware datetime")
    return moment.astimezone(CHINA_TZ).date()


@dataclass(frozen=True, slots=True)
class CaseNumber:
    """A case number: the filing day (China time) and that day's counter (from 1)."""

    day: date
    counter: int

    def __post_init__(self) -> None:
        if self.counter < 1:
            raise ValueError(f"case counter must be at least 1, got {self.counter}")

    def __str__(self) -> str:
        return f"{PREFIX}{self.day:%Y%m%d}-{self.counter:04d}"

    @classmethod
    def parse(cls, text: str) -> CaseNumber:
        """Parse the canonical form; surrounding spaces and a lowercase ``jf`` are accepted.

        Raises ValueError for anything else (bad date, zero counter, needless zero padding).
        """
        candidate = text.strip()
        candidate = PREFIX + candidate[2:] if candidate[:2].upper() == PREFIX else candidate
        match = _PATTERN.fullmatch(candidate)
        if match is None:
            raise ValueError(f"not a case number: {text!r}")
        digits, counter_text = match.groups()
        try:
            number = cls(datetime.strptime(digits, "%Y%m%d").date(), int(counter_text))
        except ValueError as error:
            raise ValueError(f"not a case number (bad date or counter): {text!r}") from error
        if str(number) != candidate:
            raise ValueError(f"not a canonical case number: {text!r}")
        return number


def format_case_number(day: date, counter: int) -> str:
    """``JF{day:%Y%m%d}-{counter:04d}``; see the module docstring."""
    return str(CaseNumber(day, counter))


def parse_case_number(text: str) -> CaseNumber:
    """Alias of ``CaseNumber.parse``."""
    return CaseNumber.parse(text)
