"""A client of the rooms API (``POST /api/rooms``, :mod:`mediation_rooms.web_rooms`).

``jiefen room open`` uses it on embedded defaults to have the running ``jiefen serve`` open the
room: that process holds the outbox the applicant's invitation goes through. The errors tell
apart a request that never reached a server (:class:`RoomsAPIUnreachable`: nothing was done,
the caller may open the room another way) from an answer (:class:`RoomsAPIRefused`), and a
request whose fate is unknown (sent, then no answer) from both: that one is an
:class:`RoomsAPIUnreachable` with ``maybe_done`` set, since the server may have opened the room.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import datetime

import aiohttp

from jiefen.errors import JiefenError, UpstreamError

#: Opening a room is a few database writes; a server that takes longer is in trouble.
REQUEST_TIMEOUT_S = 20.0


class RoomsAPIUnreachable(UpstreamError):
    """No answer from the rooms API; ``maybe_done``: the request was sent before it failed."""

    def __init__(self, message: str, *, maybe_done: bool) -> None:
        super().__init__(message)
        self.maybe_done = maybe_done


class RoomsAPIRefused(JiefenError):
    """The rooms API answered with an error: ``status`` and its ``error`` code."""

    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(f"HTTP {status} {error}" + (f": {detail}" if detail else ""))
        self.status = status
        self.error = error
        self.detail = detail


@dataclass(frozen=True, slots=True)
class APIOpenedRoom:
    room_id: str
    case_no: str
    session_no: int
    scheduled_at: datetime
    links: dict[str, str]  # seat -> join URL


async def open_room(
    base_url: str,
    token: str,
    case_no: str,
    *,
    scheduled_at: datetime,
    mediator_name: str,
    extra_seats: dict[str, str],
    ssl_context: ssl.SSLContext | None = None,
) -> APIOpenedRoom:
    """Open a room for ``case_no`` through the API at ``base_url`` (bearer ``token``)."""
    body = {
        "case_no": case_no,
        "scheduled_at": scheduled_at.isoformat(),
        "mediator_name": mediator_name,
        "extra_seats": extra_seats,
    }
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                f"{base_url.rstrip('/')}/api/rooms",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                ssl=ssl_context if ssl_context is not None else True,
            ) as response,
        ):
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = None
            status = response.status
    except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError) as error:
        # Nothing was sent: no server there, or not ours (its certificate does not verify).
        raise RoomsAPIUnreachable(str(error) or type(error).__name__, maybe_done=False) from None
    except (aiohttp.ClientError, TimeoutError) as error:
        raise RoomsAPIUnreachable(
            f"no answer ({str(error) or type(error).__name__})", maybe_done=True
        ) from None
    if not isinstance(answer, dict):
        raise RoomsAPIRefused(status, "not_json")
    if status != 201:
        raise RoomsAPIRefused(status, str(answer.get("error")), str(answer.get("detail") or ""))
    return APIOpenedRoom(
        room_id=str(answer["room_id"]),
        case_no=str(answer["case_no"]),
        session_no=int(answer["session_no"]),
        scheduled_at=datetime.fromisoformat(str(answer["scheduled_at"])),
        links={str(seat): str(link) for seat, link in dict(answer["links"]).items()},
    )
