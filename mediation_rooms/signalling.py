"""The signalling protocol's messages (see PROTOCOL.md): parsed and checked on arrival. No I/O.

Every client message is a JSON object with a ``type``; :func:`parse_client_message` turns it
into one of the frozen dataclasses below or raises :class:`ProtocolError` with a stable
``code`` that goes back to the client in an ``error`` message. Server messages are built with
:func:`server_message` so that their shape lives in one place. The WebSocket close codes the
server ends a connection with (``CLOSE_*``) are the protocol's too, and live here.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

from mediation_rooms.room import SeatRole, Side

MAX_MESSAGE_BYTES = 64 * 1024
MAX_CHAT_CHARS = 500
MAX_NAME_CHARS = 64

# WebSocket close codes (4000–4999 are the application's): the page shows why.
CLOSE_REFUSED = 4401
CLOSE_REPLACED = 4409
CLOSE_REMOVED = 4403
CLOSE_ENDED = 4410
#: Not final: the room is hosted by another media process; the page asks where, and goes there.
CLOSE_MOVED = 4302


class ProtocolError(Exception):
    """A message the server will not act on. ``code`` is stable; ``fatal`` closes the socket."""

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal


@dataclass(frozen=True, slots=True)
class Join:
    token: str
    identity: str | None
    consent_recording: bool
    acknowledged_notices: bool


@dataclass(frozen=True, slots=True)
class Answer:
    sdp: str


@dataclass(frozen=True, slots=True)
class IceCandidate:
    candidate: str
    sdp_mid: str | None


@dataclass(frozen=True, slots=True)
class Admit:
    seat: SeatRole


@dataclass(frozen=True, slots=True)
class Deny:
    seat: SeatRole


@dataclass(frozen=True, slots=True)
class Remove:
    seat: SeatRole


@dataclass(frozen=True, slots=True)
class Mute:
    seat: SeatRole
    muted: bool


@dataclass(frozen=True, slots=True)
class Caucus:
    """Private session with one side (``None``: back to the joint session)."""

    side: Side | None


@dataclass(frozen=True, slots=True)
class OpenSeat:
    """Open an extra seat (interpreter, a party's agent) for ``name`` during the session."""

    seat: SeatRole
    name: str


@dataclass(frozen=True, slots=True)
class End:
    pass


@dataclass(frozen=True, slots=True)
class Chat:
    text: str


@dataclass(frozen=True, slots=True)
class MediaState:
    """The sender switched their own microphone (``audio``) or camera (``video``) on or off."""

    audio: bool
    video: bool


ClientMessage = (
    Join
    | Answer
    | IceCandidate
    | Admit
    | Deny
    | Remove
    | Mute
    | Caucus
    | OpenSeat
    | End
    | Chat
    | MediaState
)
#: Messages only the mediator may send.
MEDIATOR_ONLY = (Admit, Deny, Remove, Mute, Caucus, OpenSeat, End)


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """One client message, checked field by field."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise ProtocolError("malformed", "not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("malformed", "a message is a JSON object")
    kind = data.get("type")
    if kind == "join":
        identity = _optional_str(data, "identity", 64)
        return Join(
            token=_str(data, "token", 1024),
            identity=identity.strip() if identity else None,
            consent_recording=_bool(data, "consent_recording"),
            acknowledged_notices=_bool(data, "acknowledged_notices"),
        )
    if kind == "answer":
        return Answer(sdp=_str(data, "sdp", MAX_MESSAGE_BYTES))
    if kind == "ice":
        return IceCandidate(
            candidate=_str(data, "candidate", 1024, allow_empty=True),
            sdp_mid=_optional_str(data, "sdpMid", 32),
        )
    if kind == "admit":
        return Admit(_seat(data))
    if kind == "deny":
        return Deny(_seat(data))
    if kind == "remove":
        return Remove(_seat(data))
    if kind == "mute":
        return Mute(_seat(data), _bool(data, "muted"))
    if kind == "caucus":
        side = data.get("with")
        if side is None:
            return Caucus(None)
        if side not in (Side.APPLICANT, Side.RESPONDENT):
            raise ProtocolError("invalid_field", "'with' is 'applicant', 'respondent' or null")
        return Caucus(Side(side))
    if kind == "open_seat":
        return OpenSeat(_seat(data), person_name(data.get("name")))
    if kind == "end":
        return End()
    if kind == "chat":
        text = _str(data, "text", MAX_CHAT_CHARS).strip()
        if not text:
            raise ProtocolError("invalid_field", "'text' is empty")
        return Chat(text)
    if kind == "media_state":
        return MediaState(
            audio=_bool(data, "audio", required=True), video=_bool(data, "video", required=True)
        )
    raise ProtocolError("unknown_type", f"unknown message type {kind!r}")


def person_name(value: object) -> str:
    """A person's name as it is shown to everyone and stored (a seat opened for them): without
    control or format characters (a right-to-left override would make a name read as
    something else) and outer spaces, 1 to ``MAX_NAME_CHARS`` characters. Raises
    ``ProtocolError`` (``invalid_field``) otherwise."""
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS:
        raise ProtocolError(
            "invalid_field", f"'name' must be a string of 1 to {MAX_NAME_CHARS} characters"
        )
    name = "".join(c for c in value if unicodedata.category(c) not in ("Cc", "Cf")).strip()
    if not name:
        raise ProtocolError("invalid_field", "'name' is empty")
    return name


def server_message(kind: str, **fields: Any) -> str:
    """A server message as JSON text."""
    return json.dumps({"type": kind, **fields}, ensure_ascii=False, separators=(",", ":"))


def _str(data: dict[str, Any], name: str, limit: int, *, allow_empty: bool = False) -> str:
    value = data.get(name)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ProtocolError("invalid_field", f"'{name}' must be a non-empty string")
    if len(value) > limit:
        raise ProtocolError("invalid_field", f"'{name}' is longer than {limit} characters")
    return value


def _optional_str(data: dict[str, Any], name: str, limit: int) -> str | None:
    if data.get(name) is None:
        return None
    return _str(data, name, limit, allow_empty=True)


def _bool(data: dict[str, Any], name: str, *, required: bool = False) -> bool:
    if required and name not in data:
        raise ProtocolError("invalid_field", f"'{name}' is missing (true or false)")
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise ProtocolError("invalid_field", f"'{name}' must be true or false")
    return value


def _seat(data: dict[str, Any]) -> SeatRole:
    value = data.get("seat")
    try:
        return SeatRole(str(value))
    except ValueError:
        raise ProtocolError("invalid_field", f"unknown seat {value!r}") from None
