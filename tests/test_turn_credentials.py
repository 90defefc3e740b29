"""TURN REST credentials (draft-uberti-behave-turn-rest, coturn's ``use-auth-secret``)."""

from __future__ import annotations

import pytest

from mediation_rooms.turn_credentials import (
    TurnRestConfig,
    credential_for,
    mint_credential,
    turn_user,
)

SECRET = b"north-gate-turn-secret"
#: Computed apart from this code, with OpenSSL:
#: printf '%s' '1785139200:rm0123456789abcdef.applicant' \
#:   | openssl dgst -sha1 -hmac 'north-gate-turn-secret' -binary | base64
KNOWN_USERNAME = "1785139200:rm0123456789abcdef.applicant"
KNOWN_CREDENTIAL = "b/SC7cVmWpFUB/hAr5zarrZPPVY="


def config(ttl_s: int = 3600) -> TurnRestConfig:
    return TurnRestConfig(
        urls=("turn:turn.example.cn:3478", "turns:turn.example.cn:5349?transport=tcp"),
        secret=SECRET,
        ttl_s=ttl_s,
    )


def test_the_credential_is_the_base64_hmac_sha1_of_the_username() -> None:
    assert credential_for(SECRET, KNOWN_USERNAME) == KNOWN_CREDENTIAL
    # The primitive on its own: HMAC-SHA1 of "hello" under "key", from OpenSSL too.
    assert credential_for(b"key", "hello") == "s0zqxFFv8joUPmHXnQ+npPvl8mY="


def test_minted_credentials_name_the_expiry_and_the_seat() -> None:
    minted = mint_credential(
        config(ttl_s=3600), turn_user("rm0123456789abcdef", "applicant"), now=1785135600.9
    )
    assert minted.username == KNOWN_USERNAME  # 1785135600 + 3600, whole seconds
    assert minted.expires_at == 1785139200
    assert minted.credential == KNOWN_CREDENTIAL
    assert minted.urls == config().urls


def test_each_join_gets_its_own_credentials() -> None:
    first = mint_credential(config(), turn_user("rm1", "applicant"), now=1000)
    later = mint_credential(config(), turn_user("rm1", "applicant"), now=2000)
    other_seat = mint_credential(config(), turn_user("rm1", "respondent"), now=1000)
    assert len({first.credential, later.credential, other_seat.credential}) == 3
    assert later.expires_at - first.expires_at == 1000


def test_the_secret_is_never_in_what_is_minted_or_shown() -> None:
    settings = config()
    minted = mint_credential(settings, turn_user("rm1", "mediator"), now=1000)
    secret = SECRET.decode()
    for shown in (repr(settings), str(settings), repr(minted), minted.username, minted.credential):
        assert secret not in shown
    assert minted.credential not in repr(minted)  # the password stays out of logs too


@pytest.mark.parametrize(
    "urls",
    [(), ("stun:stun.example.cn",), ("https://turn.example.cn",), ("turn:host?transport=sctp",)],
)
def test_only_turn_urls_are_taken(urls: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        TurnRestConfig(urls=urls, secret=SECRET)


def test_an_empty_secret_or_lifetime_is_refused() -> None:
    with pytest.raises(ValueError):
        TurnRestConfig(urls=("turn:turn.example.cn",), secret=b"")
    with pytest.raises(ValueError):
        TurnRestConfig(urls=("turn:turn.example.cn",), secret=SECRET, ttl_s=0)


def test_a_user_id_with_the_separator_is_refused() -> None:
    with pytest.raises(ValueError):
        turn_user("rm1", "seat:x")
    with pytest.raises(ValueError):
        mint_credential(config(), "a:b", now=0)
