"""TURN REST credentials: short-lived TURN passwords that the TURN server checks without a user
database (draft-uberti-behave-turn-rest-00, what coturn does with ``use-auth-secret`` and
``static-auth-secret``).

The platform and the TURN server share one secret. For each connection the platform mints

- ``username = "<expiry, unix seconds>:<opaque id>"`` and
- ``credential = base64(HMAC-SHA1(secret, username))``;

the TURN server recomputes the credential from the username and refuses it once the expiry has
passed. The opaque id names the room and the seat (``rm0123456789abcdef.applicant``), never the
person: usernames end up in the TURN server's logs. A leaked credential works for one TTL only,
and the secret itself never leaves the platform: it is in no repr and in nothing minted.

Nothing here does I/O; the caller passes the time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field

from config.settings import TURN_URL

#: A long mediation fits in it; a participant who reconnects later gets new credentials.
DEFAULT_TTL_S = 6 * 3600


@dataclass(frozen=True, slots=True)
class TurnRestConfig:
    """The TURN servers that take REST credentials, their shared secret and the lifetime."""

    urls: tuple[str, ...]
    secret: bytes = field(repr=False)
    ttl_s: int = DEFAULT_TTL_S

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("TURN REST credentials need at least one turn: or turns: URL")
        for url in self.urls:
            if not TURN_URL.fullmatch(url):
                raise ValueError(
                    f"{url!r} is not a TURN URL (turn:host[:port][?transport=udp|tcp] or turns:…)"
                )
        if not self.secret:
            raise ValueError("the TURN secret is empty")
        if self.ttl_s <= 0:
            raise ValueError(f"the TURN credentials' lifetime must be positive, not {self.ttl_s}")


@dataclass(frozen=True, slots=True)
class TurnCredential:
    """Credentials for one connection: WebRTC's ``RTCIceServer`` fields, and their expiry."""

    urls: tuple[str, ...]
    username: str
    credential: str = field(repr=False)
    expires_at: int


def turn_user(room_id: str, seat: str) -> str:
    """The opaque id of one seat's connection in one room (no personal data)."""
    user = f"{room_id}.{seat}"
    if ":" in user:
        # The TURN server finds the expiry by the first ':' of the username.
        raise ValueError(f"a TURN user id has no ':' ({user!r})")
    return user


def credential_for(secret: bytes, username: str) -> str:
    """The password the TURN server expects for ``username``: base64 of its HMAC-SHA1."""
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def mint_credential(config: TurnRestConfig, user: str, *, now: float) -> TurnCredential:
    """Fresh credentials for ``user`` (see :func:`turn_user`), valid ``config.ttl_s`` from
    ``now`` (unix seconds)."""
    if ":" in user:
        raise ValueError(f"a TURN user id has no ':' ({user!r})")
    expires_at = int(now) + config.ttl_s
    username = f"{expires_at}:{user}"
    return TurnCredential(
        urls=config.urls,
        username=username,
        credential=credential_for(config.secret, username),
        expires_at=expires_at,
    )
