"""Join tokens: signed, expiring, single-purpose, bound to one room, one seat and one person.

Wire form: ``<payload>.<signature>``, both base64url without padding; the payload is compact
JSON ``{"p": "join", "r": room_id, "s": seat, "n": nonce, "x": expires_epoch_s}`` and the
signature HMAC-SHA256 over the payload text with a key used for nothing else. The nonce is the
one stored on the seat: issuing a new link for a seat (to another person, or after a leak)
stores a new nonce and so revokes the old link. No personal data is in the token: it travels
in URLs, which end up in browser histories and proxy logs.

:func:`verify_join_token` checks the signature (in constant time), the purpose and the
expiry; the seat's nonce is checked against storage by the caller. The room is the one the
token names: every endpoint that takes a token (placement, the signalling WebSocket) learns the
room from it and from nothing else, so there is no second room id to hold it against.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

PURPOSE = "join"
_MAX_TOKEN_CHARS = 1024


class JoinTokenError(Exception):
    """A join token that must be refused; ``reason`` is a stable code for the page and logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class JoinClaims:
    room_id: str
    seat: str
    nonce: str
    expires_at: int


def derive_join_key(data_key: bytes) -> bytes:
    """The join-token key, derived from the platform data key for this purpose only."""
    return hmac.new(data_key, b"jiefen/join-token/v1", hashlib.sha256).digest()


def new_nonce() -> str:
    return secrets.token_urlsafe(12)


def issue_join_token(key: bytes, claims: JoinClaims) -> str:
    payload = json.dumps(
        {
            "p": PURPOSE,
            "r": claims.room_id,
            "s": claims.seat,
            "n": claims.nonce,
            "x": claims.expires_at,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    signature = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(signature)}"


def verify_join_token(key: bytes, token: str, *, now: float) -> JoinClaims:
    """The claims of a valid ``token``, else raise.

    Reasons: ``malformed``, ``forged``, ``wrong_purpose``, ``expired``.
    """
    if not token or len(token) > _MAX_TOKEN_CHARS or token.count(".") != 1:
        raise JoinTokenError("malformed")
    payload_text, signature_text = token.split(".")
    try:
        payload = _unb64(payload_text)
        signature = _unb64(signature_text)
    except (binascii.Error, ValueError):
        raise JoinTokenError("malformed") from None
    expected = hmac.new(key, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise JoinTokenError("forged")
    try:
        fields = json.loads(payload)
        claims = JoinClaims(
            room_id=str(fields["r"]),
            seat=str(fields["s"]),
            nonce=str(fields["n"]),
            expires_at=int(fields["x"]),
        )
        purpose = fields["p"]
    except (ValueError, KeyError, TypeError):
        raise JoinTokenError("malformed") from None
    if purpose != PURPOSE:
        raise JoinTokenError("wrong_purpose")
    if now >= claims.expires_at:
        raise JoinTokenError("expired")
    return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict: only the canonical unpadded encoding of some bytes is accepted, so that one
    token has exactly one spelling (no stray characters, no altered padding bits)."""
    if not text.isascii():
        raise ValueError("not ascii")
    data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if _b64(data) != text:
        raise ValueError("not the canonical encoding")
    return data
