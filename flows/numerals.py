"""Numbers as residents write them: Arabic digits, Chinese numerals, or a mix («3.5万»).

Pure arithmetic on ``Decimal``; the validators turn its ``ValueError`` into a message.
"""

from __future__ import annotations

import re
from decimal import Decimal

_CN_DIGITS = {
    "零": 0, "〇": 0, "一": 1, "壹": 1, "二": 2, "贰": 2, "两": 2, "俩": 2, "三": 3, "叁": 3,
    "四": 4, "肆": 4, "五": 5, "伍": 5, "六": 6, "陆": 6, "七": 7, "柒": 7, "八": 8, "捌": 8,
    "九": 9, "玖": 9,
}  # fmt: skip
_CN_SMALL_UNITS = {"十": 10, "拾": 10, "百": 100, "佰": 100, "千": 1000, "仟": 1000}
_CN_BIG_UNITS = {"万": 10**4, "萬": 10**4, "亿": 10**8, "億": 10**8}
_NUMBER_TOKEN = re.compile(r"\d+(?:\.\d+)?|.", re.DOTALL)


def chinese_number(text: str) -> Decimal:
    """Chinese numerals, Arabic digits or a mix of both («3.5万», «一万二», «三千五百»).

    Colloquial tails follow the spoken rule: a lone digit after a unit counts in the next lower
    unit (一万二 = 12000, 三千五 = 3500) unless a 零 stands between (一千零五 = 1005).
    Raises ``ValueError`` for anything that is not one number.
    """
    total = Decimal(0)  # completed 亿 groups
    wan = Decimal(0)  # the completed 万 group below 亿
    section = Decimal(0)  # below 万
    pending: Decimal | None = None
    last_unit = 0
    after_zero = False
    tokens = _NUMBER_TOKEN.findall(text)
    if not tokens:
        raise ValueError("empty")
    for token in tokens:
        if token[0].isdigit():
            if pending is not None:
                raise ValueError("two numbers in a row")
            pending = Decimal(token)
        elif token in _CN_DIGITS:
            digit = _CN_DIGITS[token]
            if pending is not None:
                raise ValueError("two digits in a row")
            if digit == 0:
                after_zero = True
                continue
            pending = Decimal(digit)
        elif token in _CN_SMALL_UNITS:
            unit = _CN_SMALL_UNITS[token]
            if pending is None:
                if unit != 10 or section:
                    raise ValueError("unit without a number")
                pending = Decimal(1)  # 十五 = 15
            section += pending * unit
            pending, last_unit, after_zero = None, unit, False
        elif token in _CN_BIG_UNITS:
            unit = _CN_BIG_UNITS[token]
            section += pending or 0
            pending = None
            if unit == 10**8:
                if not (total or wan or section):
                    raise ValueError("亿 without a number")
                total = (total + wan + section) * unit
                wan = Decimal(0)
            else:
                if wan or not section:
                    raise ValueError("misplaced 万")
                wan = section * unit
            section, last_unit, after_zero = Decimal(0), unit, False
        else:
            raise ValueError(f"not a numeral: {token!r}")
    if pending is not None:
        colloquial = last_unit >= 10 and not after_zero and pending < 10 and pending % 1 == 0
        section += pending * (last_unit // 10) if colloquial else pending
    return total + wan + section
