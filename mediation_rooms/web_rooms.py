"""HTTP routes of the rooms: the join page, the signalling WebSocket, and the rooms API.

- ``GET /join`` — the join page; the token travels in the URL *fragment* (``/join#<token>``),
  which browsers never send to a server, so it stays out of access logs and proxies.
- ``POST /rooms/placement`` — ``{"token": …}`` → ``{"signalling_url": …}``: where the join page
  opens its WebSocket, the media process that hosts (or is now reserved for) the token's room
  (:mod:`mediation_rooms.placement`). The token is the credential: a bad one gets 403 with the
  same refusal as the WebSocket would give, an ended room 410, no media process 503.
- ``GET /rooms/ws`` — signalling (mediation_rooms/PROTOCOL.md), on the processes that host rooms.
- ``POST /api/rooms`` — open a room for a case (the console's and scripts' way; ``jiefen room
  open`` does the same from the command line). ``GET /api/rooms/{room_id}`` — a room, its
  live state and the progress of its recording's finalisation. Both need ``Authorization:
  Bearer <JIEFEN_ADMIN_API_TOKEN>``; without that setting the API answers 403 to everyone.
"""

from __future__ import annotations

import hmac
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from jiefen.errors import NoMediaNode, StorageUnavailable
from mediation_rooms import texts
from mediation_rooms.finalise import RecordingFinaliser
from mediation_rooms.placement import MediaPlacement
from mediation_rooms.room import EXTRA_SEATS, SeatRole
from mediation_rooms.room_hub import RoomHub
from mediation_rooms.room_service import RoomService
from mediation_rooms.signalling import ProtocolError
from state import room_store

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_NO_CACHE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


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
            extras = {
                SeatRole(seat): str(name) for seat, name in (body.get("extra_seats") or {}).items()
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

    async def place(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            token = body["token"] if isinstance(body, dict) else None
            if not isinstance(token, str):
                raise ValueError('the body is {"token": "…"}')
        except (ValueError, KeyError):
            return _json({"error": "malformed", "message": texts.REFUSALS["malformed"]}, status=400)
        try:
            _, record, _ = await request.app[hub].admission(token)
            node = await request.app[placement].place(record.room_id)
        except ProtocolError as refusal:
            status = 410 if refusal.code == "room_closed" else 403
            return _json({"error": refusal.code, "message": refusal.message}, status=status)
        except NoMediaNode as error:
            log.warning("room placement failed: %s", error)
            return _json({"error": "no_media_node", "message": texts.NO_MEDIA_NODE}, status=503)
        except StorageUnavailable:
            return _json(
                {"error": "storage_unavailable", "message": texts.NO_MEDIA_NODE}, status=503
            )
        return _json({"signalling_url": node.signalling_url, "node": node.node_id})

    if serves_web:
        app.router.add_get("/join", join_page)
        app.router.add_static("/rooms/static", STATIC_DIR)
        app.router.add_post("/rooms/placement", place)
        app.router.add_post("/api/rooms", open_room)
        app.router.add_get("/api/rooms/{room_id}", show_room)
    if hosts_rooms:
        app.router.add_get("/rooms/ws", signalling)


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
