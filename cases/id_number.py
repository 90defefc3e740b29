"""Resident ID numbers (居民身份证号码, GB 11643): the check character, validity, masking.

Pure rules shared by the intake flow (which validates what a resident types) and the state
layer (which encrypts, masks and redacts ID numbers at rest), so both agree on one definition.
"""

from __future__ import annotations

import re

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CODES = "10X98765432"


def normalise_id_number(value: str) -> str:
    """Upper-case, without spaces or dashes: the one form validated, encrypted and indexed."""
    return re.sub(r"[\s-]", "", value).upper()


def id_check_code(first17: str) -> str:
    """The GB 11643 check character for the first 17 digits of a resident ID."""
    return _CHECK_CODES[sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def is_valid_id_number(value: str) -> bool:
    """True for an 18-character resident ID whose check character is right (any case of X)."""
    value = value.upper()
    return len(value) == 18 and value[:17].isdigit() and id_check_code(value[:17]) == value[17]


def mask_id_number(value: str) -> str:
    """All but the first 4 and last 4 characters hidden: ``5301**********123X``.

    Anything of 8 characters or fewer is hidden entirely.
    """
    normal = normalise_id_number(value)
    if len(normal) <= 8:
        return "*" * len(normal)
    return normal[:4] + "*" * (len(normal) - 8) + normal[-4:]
