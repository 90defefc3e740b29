"""HTTP routes of the rooms: the join page, the signalling WebSocket, and the rooms API.

- ``GET /join`` — the join page; the token travels in the URL *fragment* (``/join#<token>``),
  which browsers never send to a server, so it stays out of access logs and proxies.
- ``GET /rooms/ws`` — signalling (mediation_rooms/PROTOCOL.md).
- ``POST /api/rooms`` — open a room for a case (the console's and scripts' way; ``jiefen room
  open`` does the same from the command line). ``GET /api/rooms/{room_id}`` — a room, its
  live state and the progress of its recording's finalisation. Both need ``Authorization:
  Bearer <JIEFEN_ADMIN_API_TOKEN>``; without that setting the API answers 403 to everyone.
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from jiefen.errors import StorageUnavailable
from mediation_rooms.finalise import RecordingFinaliser
from mediation_rooms.room import EXTRA_SEATS, SeatRole
from mediation_rooms.room_hub import RoomHub
from mediation_rooms.room_service import RoomService
from state import room_store

STATIC_DIR = Path(__file__).parent / "static"
_NO_CACHE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def add_room_routes(
    app: web.Application,
    *,
    hub: web.AppKey[RoomHub],
    service: web.AppKey[RoomService],
    finaliser: web.AppKey[RecordingFinaliser],
    admin_token: str | None,
) -> None:
    """Mount the rooms' routes on ``app``; handlers find the hub and service under the keys."""

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

    app.router.add_get("/join", join_page)
    app.router.add_get("/rooms/ws", signalling)
    app.router.add_static("/rooms/static", STATIC_DIR)
    app.router.add_post("/api/rooms", open_room)
    app.router.add_get("/api/rooms/{room_id}", show_room)


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
