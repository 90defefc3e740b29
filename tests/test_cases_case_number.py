from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from cases.case_number import CaseNumber, china_day, format_case_number, parse_case_number

DAY = date(2026, 11, 21)


def test_format_pads_to_four_digits_and_grows_beyond() -> None:
    assert format_case_number(DAY, 1) == "JF20261121-0001"
    assert format_case_number(DAY, 9999) == "JF20261121-9999"
    assert format_case_number(DAY, 10000) == "JF20261121-10000"


@pytest.mark.parametrize("counter", [1, 42, 9999, 10000, 123456])
def test_parse_is_the_inverse_of_format(counter: int) -> None:
    text = format_case_number(DAY, counter)
    assert parse_case_number(text) == CaseNumber(DAY, counter)
    assert str(CaseNumber.parse(text)) == text


def test_parse_accepts_spaces_and_lowercase_prefix() -> None:
    assert CaseNumber.parse("  jf20261121-0007 ") == CaseNumber(DAY, 7)


@pytest.mark.parametrize(
    "text",
    ["", "JF20261121-001", "JF20261121-00001", "JF20261121-0000", "JF20261321-0001",
     "JF2026112-0001", "XX20261121-0001", "JF20261121_0001", "JF20261121-0001x"],
)  # fmt: skip
def test_parse_refuses_anything_not_canonical(text: str) -> None:
    with pytest.raises(ValueError, match="case number"):
        CaseNumber.parse(text)


def test_counter_starts_at_one() -> None:
    with pytest.raises(ValueError):
        CaseNumber(DAY, 0)


def test_the_day_is_the_day_in_china() -> None:
    # 16:30 UTC on the 20th is 00:30 on the 21st in Kunming.
    assert china_day(datetime(2026, 11, 20, 16, 30, tzinfo=UTC)) == DAY
    assert china_day(datetime(2026, 11, 20, 15, 59, tzinfo=UTC)) == date(2026, 11, 20)
    with pytest.raises(ValueError, match="naive"):
        china_day(datetime(2026, 11, 21, 12, 0))
