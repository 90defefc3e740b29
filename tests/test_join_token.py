"""Join tokens: what verifies, and every way a token is refused."""

from __future__ import annotations

import pytest

from mediation_rooms.join_token import (
    JoinClaims,
    JoinTokenError,
    derive_join_key,
    issue_join_token,
    verify_join_token,
)

KEY = derive_join_key(b"k" * 32)
CLAIMS = JoinClaims("rm0123456789abcdef", "applicant", "nonce-1", 2_000)


def _reason(token: str, *, now: float = 1_000) -> str:
    with pytest.raises(JoinTokenError) as refused:
        verify_join_token(KEY, token, now=now)
    return refused.value.reason


def test_a_token_verifies_until_it_expires() -> None:
    token = issue_join_token(KEY, CLAIMS)
    assert verify_join_token(KEY, token, now=1_999) == CLAIMS
    assert verify_join_token(KEY, token, now=1_000) == CLAIMS
    assert _reason(token, now=2_000) == _reason(token, now=2_001) == "expired"
    assert _reason(issue_join_token(derive_join_key(b"x" * 32), CLAIMS)) == "forged"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace(".", ""),  # no separator
        lambda t: t + "=",  # padding is never part of a token
        lambda t: t[:5] + "!" + t[5:],  # a character outside the alphabet
        lambda t: t[:5] + "\n" + t[5:],
        lambda t: t + "é",
    ],
)
def test_anything_but_the_exact_spelling_is_malformed(mangle: object) -> None:
    token = issue_join_token(KEY, CLAIMS)
    assert _reason(mangle(token)) == "malformed"  # type: ignore[operator]


def test_one_token_has_one_spelling() -> None:
    # A 32-byte signature is 43 base64 characters; the last one carries 2 unused bits.
    # Changing those bits decodes to the same bytes: strict decoding refuses it.
    token = issue_join_token(KEY, CLAIMS)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    twin = token[:-1] + alphabet[last ^ 1]
    assert _reason(twin) == "malformed"
