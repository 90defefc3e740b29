"""HTTP routes of the rooms: the join page, the signalling WebSocket, and the rooms API.

- ``GET /join`` — the join page; the token travels in the URL *fragment* (``/join#<token>``),
  which browsers never send to a server, so it stays out of access logs and proxies.
- ``POST /rooms/placement`` — ``{"token": …}`` → ``{"signalling_url": …}``: where the join page
  opens its WebSocket, the media process that hosts (or is now reserved for) the token's room
  (:mod:`mediation_rooms.placement`). The token is the credential: a bad one gets 403 with the
  same refusal as the WebSocket would give, an ended room 410, no media process 503.
- ``POST /rooms/check`` — ``{"token": …}`` → the seat the link is for (``seat``, ``role_name``,
  the holder's own ``name``, masked to its first character where the seat has an identity
  re-check that has not been answered yet, ``case_no``, the room's ``state``) and which
  identity re-check the seat is asked for (``identity``: ``"id_last6"``, ``"phone"`` or
  ``null``): what the join page needs to greet the person and prompt for the right answer
  before the notices. Refused exactly as placement refuses (400, 403, 410), but reserves no
  media process; never tells the answer, nor anything of the other seats.
- ``GET /rooms/ping`` — 204, nothing else: the join page times a few of these for its network
  check (``/healthz`` would time the database and Redis too).
- ``GET /rooms/ws`` — signalling (mediation_rooms/PROTOCOL.md), on the processes that host rooms.
- ``POST /api/rooms`` — open a room for a case (the console's and scripts' way; ``jiefen room
  open`` does the same from the command line). ``GET /api/rooms/{room_id}`` — a room, its
  live state and the progress of its recording's finalisation.
- ``POST /api/rooms/{room_id}/seats`` — ``{"seat": "interpreter" | "applicant_agent" |
  "respondent_agent", "name": "…"}`` → 201 ``{"seat", "name", "link"}``: open an extra seat,
  before or during the session, as the mediator's page can (``open_seat``). 400
  ``invalid_request`` (not such a body; a name of 1–64 characters), 404 ``unknown_room``, 409
  with the refusal's reason as ``error`` (``room_closed``, ``not_extra_seat``, ``seat_taken``,
  ``too_many_seats``), 503 ``storage_unavailable`` or ``try_again``. The seat is stored first
  (that is the 201); the process hosting the room, if any, takes it in: at once when it is this
  one, else as soon as the announcement on Redis reaches it (``RoomHub.seats_opened``), and at
  the latest when the seat's person joins. Everyone connected is then offered the new seat's
  media (a renegotiation), the presence lists it, the timeline records ``seat_opened`` ``by``
  ``api``. The link goes only to the caller: nothing is sent to the mediator's page but the
  presence.
- The ``/api/`` routes need ``Authorization: Bearer <JIEFEN_ADMIN_API_TOKEN>``; without that
  setting the API answers 403 to everyone.
"""

from __future__ import annotations

import hmac
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from jiefen.errors import NoMediaNode, StorageUnavailable
from mediation_rooms import texts
from mediation_rooms.finalise import RecordingFinaliser
from mediation_rooms.placement import MediaPlacement
from mediation_rooms.room import EXTRA_SEATS, SeatRefused, SeatRole
from mediation_rooms.room_hub import RoomHub
from mediation_rooms.room_service import ID_TAIL, PHONE, RoomService
from mediation_rooms.signalling import ProtocolError, person_name
from state import room_store

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_NO_CACHE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
#: ``POST /rooms/check``'s name for each identity re-check (``SeatRecord.identity_check``).
_IDENTITY_ASKED = {ID_TAIL: "id_last6", PHONE: "phone"}


def add_room_routes(
    app: web.Application,
    *,
    hub: web.AppKey[RoomHub],
    service: web.AppKey[RoomService],
    finaliser: web.AppKey[RecordingFinaliser],
    placement: web.AppKey[MediaPlacement],
    admin_token: str | None,
    serves_web: bool = True,
    hosts_rooms: bool = True,
) -> None:
    """Mount the rooms' routes on ``app``; handlers find the hub and service under the keys.

    ``serves_web``: the join page, placement and the API (not on a media-only process);
    ``hosts_rooms``: the signalling WebSocket (not on a web-only process).
    """

    async def join_page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "join.html", headers=_NO_CACHE)

    async def signalling(request: web.Request) -> web.WebSocketResponse:
        return await request.app[hub].handle(request)

    def authorise(request: web.Request) -> None:
        given = request.headers.get("Authorization", "")
        if admin_token is None or not hmac.compare_digest(given, f"Bearer {admin_token}"):
            raise web.HTTPForbidden(
                text=json.dumps({"error": "forbidden"}), content_type="application/json"
            )

    async def open_room(request: web.Request) -> web.Response:
        authorise(request)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body is a JSON object")
            case_no = str(body["case_no"])
            now = datetime.now(UTC)
            scheduled_at = _parse_time(body.get("scheduled_at"), now)
            # The names as an extra seat opened later takes them (shown to everyone, stored).
            extras = {
                SeatRole(seat): person_name(name)
                for seat, name in (body.get("extra_seats") or {}).items()
            }
            if any(seat not in EXTRA_SEATS for seat in extras):
                raise ValueError(f"extra_seats are some of {', '.join(EXTRA_SEATS)}")
            opened = await request.app[service].open_room(
                case_no,
                scheduled_at=scheduled_at,
                now=now,
                mediator_name=str(body.get("mediator_name") or "调解员"),
                extra_seats=extras,
            )
        except ProtocolError as error:
            return _json({"error": "invalid_request", "detail": error.message}, status=400)
        except room_store.UnknownCase:
            return _json({"error": "unknown_case"}, status=404)
        except StorageUnavailable:
            return _json({"error": "storage_unavailable"}, status=503)
        except (ValueError, KeyError, TypeError) as error:
            return _json({"error": "invalid_request", "detail": str(error)}, status=400)
        return _json(
            {
                "room_id": opened.room.room_id,
                "case_no": opened.room.case_no,
                "session_no": opened.room.session_no,
                "scheduled_at": opened.room.scheduled_at.isoformat(),
                "links": opened.links,
            },
            status=201,
        )

    async def show_room(request: web.Request) -> web.Response:
        authorise(request)
        room_id = request.match_info["room_id"]
        record = await room_store.get_room(request.app[hub].db, room_id)
        if record is None:
            return _json({"error": "unknown_room"}, status=404)
        raw = await request.app[hub].redis.get(request.app[hub].live_key(room_id))
        return _json(
            {
                "room_id": record.room_id,
                "case_no": record.case_no,
                "session_no": record.session_no,
                "state": record.state,
                "scheduled_at": record.scheduled_at.isoformat(),
                "seats": [{"seat": s.seat, "name": s.person_name} for s in record.seats],
                "live": json.loads(raw) if raw else None,
                "recording": await request.app[finaliser].progress(room_id),
            }
        )

    async def open_seat(request: web.Request) -> web.Response:
        authorise(request)
        room_id = request.match_info["room_id"]
        try:
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("seat"), str):
                raise ValueError('the body is {"seat": "…", "name": "…"}')
            seat = SeatRole(body["seat"])
            name = person_name(body.get("name"))
        except ProtocolError as error:
            return _json({"error": "invalid_request", "detail": error.message}, status=400)
        except ValueError as error:
            return _json({"error": "invalid_request", "detail": str(error)}, status=400)
        try:
            opened = await request.app[service].open_seat(
                room_id, seat, name, now=datetime.now(UTC)
            )
        except room_store.UnknownRoom:
            return _json({"error": "unknown_room"}, status=404)
        except SeatRefused as refused:
            return _json({"error": refused.reason, "detail": str(refused)}, status=409)
        except StorageUnavailable:
            return _json({"error": "storage_unavailable"}, status=503)
        except RuntimeError as error:  # the room kept changing under the compare-and-set
            log.warning("room %s: opening %s through the API failed: %s", room_id, seat, error)
            return _json({"error": "try_again"}, status=503)
        try:
            await request.app[hub].seats_opened(room_id)
        except (RedisError, StorageUnavailable) as error:
            # Stored: the host takes it in when it subscribes again or when its person joins.
            log.warning(
                "room %s: seat %s stored, its announcement failed: %s", room_id, seat, error
            )
        return _json({"seat": seat.value, "name": name, "link": opened.link}, status=201)

    async def place(request: web.Request) -> web.Response:
        token = await _token_of(request)
        if token is None:
            return _malformed()
        try:
            _, record, _ = await request.app[hub].admission(token)
            node = await request.app[placement].place(record.room_id)
        except ProtocolError as refusal:
            return _refused(refusal)
        except NoMediaNode as error:
            log.warning("room placement failed: %s", error)
            return _json({"error": "no_media_node", "message": texts.NO_MEDIA_NODE}, status=503)
        except StorageUnavailable:
            return _json(
                {"error": "storage_unavailable", "message": texts.NO_MEDIA_NODE}, status=503
            )
        return _json({"signalling_url": node.signalling_url, "node": node.node_id})

    async def check(request: web.Request) -> web.Response:
        token = await _token_of(request)
        if token is None:
            return _malformed()
        try:
            rooms_hub = request.app[hub]
            _, record, seat_record = await rooms_hub.admission(token)
            # A seat locked by wrong answers is told now, not after the notices and the device
            # check, when its join would be refused for the same reason.
            locked = (
                seat_record.identity_digest is not None
                and await rooms_hub.identity_locked_out(record.room_id, seat_record.seat)
            )
            if locked:
                raise ProtocolError("too_many_attempts", texts.REFUSALS["too_many_attempts"])
        except ProtocolError as refusal:
            return _refused(refusal)
        except (StorageUnavailable, RedisError):
            return _json(
                {"error": "storage_unavailable", "message": texts.NO_MEDIA_NODE}, status=503
            )
        # Only what the link's holder needs: their own seat and name, never the answer itself.
        # A seat without an answer on file is checked by the mediator on camera (RoomHub.join).
        identity = None
        name = seat_record.person_name
        if seat_record.identity_digest is not None:
            check = seat_record.identity_check or ""
            identity = _IDENTITY_ASKED.get(check, check)
            # Whoever holds the link has not answered the re-check yet (a forwarded link, a
            # wrong number): enough of the name for its person to know the link is theirs, not
            # the whole of it. ``welcome``, after the re-check, has it in full.
            name = masked_name(name)
        return _json(
            {
                "seat": seat_record.seat,
                "role_name": texts.SEAT_NAMES.get(seat_record.seat, seat_record.seat),
                "name": name,
                "case_no": record.case_no,
                "identity": identity,
                "state": record.state,
            }
        )

    async def ping(request: web.Request) -> web.Response:
        return web.Response(status=204, headers=_NO_CACHE)

    if serves_web:
        app.router.add_get("/join", join_page)
        app.router.add_static("/rooms/static", STATIC_DIR)
        app.router.add_post("/rooms/placement", place)
        app.router.add_post("/rooms/check", check)
        app.router.add_get("/rooms/ping", ping)
        app.router.add_post("/api/rooms", open_room)
        app.router.add_get("/api/rooms/{room_id}", show_room)
        app.router.add_post("/api/rooms/{room_id}/seats", open_seat)
    if hosts_rooms:
        app.router.add_get("/rooms/ws", signalling)


def masked_name(name: str) -> str:
    """``name`` with all but its first character masked (张三 → 张*, 欧阳娜娜 → 欧***)."""
    return name[:1] + "*" * (len(name) - 1)


async def _token_of(request: web.Request) -> str | None:
    """The token of a ``{"token": "…"}`` body; None if the body is anything else."""
    try:
        body = await request.json()
    except ValueError:
        return None
    token = body.get("token") if isinstance(body, dict) else None
    return token if isinstance(token, str) else None


def _malformed() -> web.Response:
    return _json({"error": "malformed", "message": texts.REFUSALS["malformed"]}, status=400)


def _refused(refusal: ProtocolError) -> web.Response:
    """A join refusal as the page is told it over HTTP: an ended room 410, the rest 403."""
    status = 410 if refusal.code == "room_closed" else 403
    return _json({"error": refusal.code, "message": refusal.message}, status=status)


def _parse_time(value: Any, now: datetime) -> datetime:
    if value is None:
        return now
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        raise ValueError("scheduled_at needs a time zone, e.g. 2026-11-23T09:30+08:00")
    return moment.astimezone(UTC)


def _json(body: dict[str, Any], *, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False),
        status=status,
        content_type="application/json",
        headers=_NO_CACHE,
    )
