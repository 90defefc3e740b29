"""The rooms this process hosts: hosting them (claim, release), and the signalling endpoint that
admits each connection and drives its room.

Each hosted room is a :class:`~mediation_rooms.live_room.LiveRoom`, which keeps its session
(who is admitted, muted, in caucus), its media and its live state in Redis.

A process hosts a room only after claiming it in Redis (:mod:`mediation_rooms.placement`): a
join for a room that another live media process hosts is turned away with close code
:data:`~mediation_rooms.signalling.CLOSE_MOVED`, and the page asks ``POST /rooms/placement``
again. A room nobody has been in for :data:`EMPTY_ROOM_GRACE_S` is let go (its files finished,
its claim released); the next join hosts it again, wherever it is placed, from its live state.

Seats opened outside a session (the rooms API, on a web process that may host nothing) reach
the process hosting the room through Redis: :meth:`RoomHub.seats_opened` takes them in here
if this process hosts the room and publishes the room's id on :meth:`RoomHub.seats_channel`,
to which every process that hosts rooms listens (from its first hosted room on); the host takes
the new seats in (:meth:`~mediation_rooms.live_room.LiveRoom.pick_up_seats`): everyone
connected gets the renegotiation offer, and the presence lists the seat. Pub/sub is not
stored: a host that was not subscribed when the message went out (Redis was unreachable) looks
at every room it hosts when it subscribes again, and a join of a seat the hosted room does not
know yet takes the new seats in first. A room nobody hosts has the seat when it is next hosted.

Who gets in (checked in :meth:`RoomHub.join`, in this order): a valid join token for this
room; the seat's current nonce (a re-issued link revokes the old one); a room that has not
ended; the identity re-check answer, where the seat has one (five wrong answers for a seat,
over any number of connections, lock it for half an hour: the count is in Redis); the two
consents (notices read, recording agreed) for everyone but the mediator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis
from aiohttp import WSMsgType, web
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from mediation_rooms import texts
from mediation_rooms.join_token import JoinClaims, JoinTokenError, verify_join_token
from mediation_rooms.live_room import Attendee, LiveRoom
from mediation_rooms.media_session import MediaConfig
from mediation_rooms.placement import MediaNode, MediaPlacement
from mediation_rooms.room import RoomState, SeatRole
from mediation_rooms.room_service import RoomService
from mediation_rooms.signalling import (
    CLOSE_MOVED,
    CLOSE_REFUSED,
    MAX_MESSAGE_BYTES,
    MEDIATOR_ONLY,
    Admit,
    Answer,
    Caucus,
    Chat,
    ClientMessage,
    Deny,
    End,
    IceCandidate,
    Join,
    MediaState,
    Mute,
    OpenSeat,
    ProtocolError,
    Remove,
    parse_client_message,
    server_message,
)
from state import room_store
from state.job_queue import JobQueue
from state.room_store import RoomRecord, SeatRecord

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 15.0
MAX_IDENTITY_ATTEMPTS = 5
#: A seat whose identity check failed ``MAX_IDENTITY_ATTEMPTS`` times is locked this long after
#: the last failure. Counted per seat in Redis, not per connection: a client can always open a
#: new connection, and the answer (6 characters) must not be guessable by retrying.
IDENTITY_LOCKOUT_S = 30 * 60
#: A hosted room with nobody in it is let go after this long (seconds): its recording files
#: are finished and its claim released, so a room everyone dropped out of does not hold a
#: media process; the next join resumes it from its live state.
EMPTY_ROOM_GRACE_S = 120.0

#: How long closing a socket waits for the client's answer: the room's lock is held meanwhile
#: (end, remove), so a client that never answers must not hold the room up for long.
CLOSE_HANDSHAKE_TIMEOUT_S = 2.0
#: How long the seat listener waits for a message before it looks again (seconds), and how long
#: it waits before subscribing again after Redis failed it.
SEATS_POLL_S = 1.0
SEATS_RETRY_S = 2.0

#: What aiortc raises for an SDP answer or ICE candidate it cannot parse: its parsers index,
#: convert and ``assert`` their way through the text (``m=video x`` fails an assertion).
_UNPARSABLE = (LookupError, ValueError, AssertionError)


def _why(error: Exception) -> str:
    """Why aiortc refused what a client sent, for the error message (an assertion says nothing)."""
    return str(error) or f"cannot be parsed ({type(error).__name__})"


class RoomHub:
    """The rooms of this process, and the signalling endpoint that drives them."""

    def __init__(
        self,
        *,
        db: AsyncEngine,
        redis: aioredis.Redis,
        redis_prefix: str,
        rooms: RoomService,
        media_config: MediaConfig,
        recordings_dir: Path,
        jobs: JobQueue | None = None,
        placement: MediaPlacement | None = None,
        node: MediaNode | None = None,
        empty_room_grace_s: float = EMPTY_ROOM_GRACE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.redis = redis
        self.prefix = redis_prefix
        self.rooms = rooms
        self.media_config = media_config
        self.recordings_dir = recordings_dir
        #: Where an ended room's finalisation is queued (none: the recording stays as it is).
        self.jobs = jobs
        self.clock = clock
        #: Where rooms are placed, and this process's node when it hosts rooms (None: a web
        #: process, which places rooms but hosts none).
        self.placement = placement
        self.node = node
        self.empty_room_grace_s = empty_room_grace_s
        self.live_rooms: dict[str, LiveRoom] = {}
        self.hub_lock = asyncio.Lock()
        #: Listens for seats opened outside a session; started with the first hosted room.
        self._seat_listener: asyncio.Task[None] | None = None
        self._seat_pickups: set[asyncio.Task[None]] = set()
        self._closed = False

    def live_key(self, room_id: str) -> str:
        return f"{self.prefix}room:{room_id}:live"

    def seats_channel(self) -> str:
        """The pub/sub channel that carries the id of a room a seat was opened in."""
        return f"{self.prefix}rooms:seats_opened"

    def media_config_for(self, video_codec: str) -> MediaConfig:
        """The media configuration of a room, which keeps the codec it was opened with."""
        return dataclasses.replace(self.media_config, video_codec=video_codec)

    def hosted_rooms(self) -> list[str]:
        """The rooms this process hosts now."""
        return list(self.live_rooms)

    async def close(self) -> None:
        """Process shutdown: hand every room over (its people are told and reconnect, through
        placement, to another media process; the files are finished; the claim is released)."""
        self._closed = True
        listening = [t for t in (self._seat_listener, *self._seat_pickups) if t is not None]
        for task in listening:
            task.cancel()
        await asyncio.gather(*listening, return_exceptions=True)
        self._seat_listener = None
        for room in list(self.live_rooms.values()):
            await self._stop_hosting(room)

    # -- seats opened outside the session ------------------------------------------------------

    async def seats_opened(self, room_id: str) -> None:
        """Seats were stored for ``room_id`` outside its session: its host takes them in, this
        process at once if it hosts the room, any other through :meth:`seats_channel`. Raises
        ``RedisError`` when the message cannot be published (the host then takes the seats
        in when it subscribes again, or when their person joins)."""
        await self.pick_up_seats(room_id)
        await self.redis.publish(self.seats_channel(), room_id)

    async def pick_up_seats(self, room_id: str) -> None:
        """If this process hosts ``room_id``, take in the seats stored since it was hosted."""
        room = self.live_rooms.get(room_id)
        if room is None:
            return
        async with room.lock:
            if self.live_rooms.get(room_id) is room:
                await room.pick_up_seats()

    def _listen_for_seats(self) -> None:
        if self._seat_listener is None and not self._closed:
            self._seat_listener = asyncio.create_task(self._seat_messages(), name="room-seats")

    async def _seat_messages(self) -> None:
        """Take in the seats :meth:`seats_opened` announces, for the rooms hosted here, until
        the hub closes; subscribe again whenever Redis fails the subscription."""
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.seats_channel())
                    # What was announced while this process was not subscribed is lost: look
                    # at every room hosted here (the first time: rooms just read, no change).
                    for room_id in list(self.live_rooms):
                        self._pick_up_later(room_id)
                    while True:
                        message = await pubsub.get_message(timeout=SEATS_POLL_S)
                        if message is None or message.get("type") != "message":
                            continue
                        data = message["data"]
                        room_id = data.decode() if isinstance(data, bytes) else str(data)
                        if room_id in self.live_rooms:
                            self._pick_up_later(room_id)
            except (RedisError, OSError) as error:
                log.warning("room seats: the subscription failed (%s); subscribing again", error)
            except Exception:
                log.exception("room seats: the listener failed; subscribing again")
            await asyncio.sleep(SEATS_RETRY_S)

    def _pick_up_later(self, room_id: str) -> None:
        """Pick up ``room_id``'s seats in a task of its own: a room's lock may be held a while
        (closing sockets), and the other rooms' messages must not wait for it."""
        task = asyncio.create_task(self._pick_up_logged(room_id), name=f"seats-{room_id}")
        self._seat_pickups.add(task)
        task.add_done_callback(self._seat_pickups.discard)

    async def _pick_up_logged(self, room_id: str) -> None:
        try:
            await self.pick_up_seats(room_id)
        except Exception:
            log.exception("room %s: taking in a new seat failed (its join will)", room_id)

    async def _live_room(self, record: RoomRecord) -> LiveRoom:
        """The hosted room of ``record``, hosting it now if this process does not yet.

        Hosting starts under the hub lock from the room's state as the database has it *now*
        (not as it was when the join began: the room may have ended meanwhile, and an ended room
        must not be hosted again) and only once this process's claim on it holds.
        """
        async with self.hub_lock:
            room = self.live_rooms.get(record.room_id)
            if room is not None:
                return room
            current = await room_store.get_room(self.db, record.room_id)
            if current is None:
                raise _refusal("unknown_room")
            if current.state in (RoomState.ENDED, RoomState.ARCHIVED):
                raise _refusal("room_closed")
            if self.placement is not None and self.node is not None:
                owner = await self.placement.claim(record.room_id, self.node.node_id)
                if owner is not None:
                    log.info("room %s is hosted by media node %s, not here", record.room_id, owner)
                    raise ProtocolError("moved", texts.MOVED, fatal=True)
            raw = await self.redis.get(self.live_key(record.room_id))
            live = json.loads(raw) if raw else {}
            room = LiveRoom(self, current, live)
            self.live_rooms[record.room_id] = room
            self._listen_for_seats()
            # Let go again unless someone gets in (a join that fails on the way must not leave
            # the room hosted and claimed for ever); entering cancels this.
            self.schedule_release_if_empty(room)
            return room

    async def unhost(self, room: LiveRoom) -> None:
        """``room`` is no longer hosted here: release its claim and forget it. Both under the
        hub lock, so that a join cannot host it again in between and lose its new claim."""
        async with self.hub_lock:
            if self.live_rooms.get(room.room_id) is room:
                if self.placement is not None and self.node is not None:
                    await self.placement.release(room.room_id, self.node.node_id)
                del self.live_rooms[room.room_id]
        room.cancel_idle_release()

    def schedule_release_if_empty(self, room: LiveRoom) -> None:
        """Let ``room`` go after the grace period unless someone comes back meanwhile."""
        room.cancel_idle_release()
        room.idle_release = asyncio.create_task(
            self._release_after_grace(room), name=f"release-{room.room_id}"
        )

    async def _release_after_grace(self, room: LiveRoom) -> None:
        await asyncio.sleep(self.empty_room_grace_s)
        room.idle_release = None  # from here on, nobody cancels this task: it checks instead
        try:
            await self.release_if_empty(room)
        except Exception:
            log.exception("room %s: letting the empty room go failed", room.room_id)

    async def release_if_empty(self, room: LiveRoom) -> bool:
        """Stop hosting ``room`` if nobody is in it; returns whether it was let go."""
        released = await self._stop_hosting(room, only_if_empty=True)
        if released:
            log.info("room %s: empty for a while; no longer hosted here", room.room_id)
        return released

    async def lost(self, room_id: str) -> None:
        """Another media process holds ``room_id`` now (this one was taken for dead): stop
        hosting it without touching its state; its people reconnect to the new host."""
        room = self.live_rooms.get(room_id)
        if room is not None:
            await self._stop_hosting(room, save=False)

    async def _stop_hosting(
        self, room: LiveRoom, *, save: bool = True, only_if_empty: bool = False
    ) -> bool:
        """Hand ``room`` over (people told to reconnect elsewhere with 4302, files finished,
        live state saved if ``save``) and stop hosting it, all under its lock: a join waiting
        for the lock then finds the room no longer hosted and goes through hosting again.
        Returns False, doing nothing, if it is not hosted here (or, ``only_if_empty``, has
        someone in it)."""
        async with room.lock:
            if self.live_rooms.get(room.room_id) is not room or (only_if_empty and room.attendees):
                return False
            await room.hand_over(CLOSE_MOVED, "moved", texts.MOVED, save=save)
            await self.unhost(room)
            return True

    # -- the WebSocket endpoint ------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(
            heartbeat=20, max_msg_size=MAX_MESSAGE_BYTES, timeout=CLOSE_HANDSHAKE_TIMEOUT_S
        )
        await ws.prepare(request)
        attendee: Attendee | None = None
        room: LiveRoom | None = None
        try:
            room, attendee = await self._join(ws)
            if attendee is None or room is None:
                return ws
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    await self._error(ws, ProtocolError("malformed", "send text messages"))
                    continue
                try:
                    parsed = parse_client_message(message.data)
                    await self._dispatch(room, attendee, parsed)
                except ProtocolError as error:
                    await self._error(ws, error)
                if ws.closed or room.attendees.get(attendee.seat) is not attendee:
                    break
        except Exception:
            log.exception("room signalling connection failed")
        finally:
            if room is not None and attendee is not None:
                if attendee.deferred_flush is not None:
                    attendee.deferred_flush.cancel()
                async with room.lock:
                    await room.leave(attendee)
            if not ws.closed:
                await ws.close()
        return ws

    async def _join(self, ws: web.WebSocketResponse) -> tuple[LiveRoom | None, Attendee | None]:
        """Read ``join`` messages until one succeeds (identity may be retried) or a refusal."""
        attempts = 0
        while True:
            try:
                message = await ws.receive(timeout=JOIN_TIMEOUT_S)
            except TimeoutError:
                await self._refuse(ws, ProtocolError("join_first", texts.REFUSALS["join_first"]))
                return None, None
            if message.type != WSMsgType.TEXT:
                return None, None
            try:
                parsed = parse_client_message(message.data)
                if not isinstance(parsed, Join):
                    raise ProtocolError("join_first", texts.REFUSALS["join_first"])
                return await self.join(ws, parsed)
            except ProtocolError as error:
                attempts += 1
                if error.fatal or attempts >= MAX_IDENTITY_ATTEMPTS:
                    if not error.fatal:
                        error = ProtocolError(
                            "too_many_attempts", texts.REFUSALS["too_many_attempts"]
                        )
                    await self._refuse(ws, error)
                    return None, None
                await self._error(ws, error)

    async def _check_identity(
        self, record: RoomRecord, seat_record: SeatRecord, answer: str
    ) -> None:
        """Compare the identity answer with the seat's digest, counting failures per seat."""
        failures_key = self._identity_failures_key(record.room_id, seat_record.seat)
        if await self.identity_locked_out(record.room_id, seat_record.seat):
            raise _refusal("too_many_attempts")
        digest = self.rooms.identity_digest(
            record.room_id, seat_record.seat, seat_record.identity_check or "", answer
        )
        if hmac.compare_digest(digest, seat_record.identity_digest or ""):
            await self.redis.delete(failures_key)
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(failures_key)
            pipe.expire(failures_key, IDENTITY_LOCKOUT_S)
            failures, _ = await pipe.execute()
        log.warning("room %s: wrong identity answer for %s", record.room_id, seat_record.seat)
        if int(failures) >= MAX_IDENTITY_ATTEMPTS:
            raise _refusal("too_many_attempts")
        raise ProtocolError("identity_mismatch", texts.REFUSALS["identity_mismatch"])

    def _identity_failures_key(self, room_id: str, seat: str) -> str:
        return f"{self.prefix}room:{room_id}:seat:{seat}:id_failures"

    async def identity_locked_out(self, room_id: str, seat: str) -> bool:
        """Whether ``seat`` is locked out of ``room_id`` by its wrong identity answers
        (``MAX_IDENTITY_ATTEMPTS`` within ``IDENTITY_LOCKOUT_S`` of the last one)."""
        failures = await self.redis.get(self._identity_failures_key(room_id, seat))
        return int(failures or 0) >= MAX_IDENTITY_ATTEMPTS

    async def admission(self, token: str) -> tuple[JoinClaims, RoomRecord, SeatRecord]:
        """The room and seat a join token admits to; raises a fatal ProtocolError (a refusal)
        for a bad, expired or revoked token and for a room that has ended."""
        try:
            claims = verify_join_token(self.rooms.join_key, token, now=self.clock())
        except JoinTokenError as error:
            raise _refusal(error.reason) from None
        record = await room_store.get_room(self.db, claims.room_id)
        if record is None:
            raise _refusal("unknown_room")
        seat_record = record.seat(claims.seat)
        if seat_record is None or not hmac.compare_digest(seat_record.nonce, claims.nonce):
            raise _refusal("revoked")
        if record.state in (RoomState.ENDED, RoomState.ARCHIVED):
            raise _refusal("room_closed")
        return claims, record, seat_record

    async def join(self, ws: web.WebSocketResponse, join: Join) -> tuple[LiveRoom, Attendee]:
        claims, record, seat_record = await self.admission(join.token)
        seat = SeatRole(claims.seat)
        if seat_record.identity_digest is not None:
            if not join.identity:
                raise ProtocolError("identity_required", texts.REFUSALS["identity_required"])
            await self._check_identity(record, seat_record, join.identity)
        if seat != SeatRole.MEDIATOR and not (join.consent_recording and join.acknowledged_notices):
            raise ProtocolError("consent_required", texts.REFUSALS["consent_required"])
        attendee = Attendee(
            seat=seat,
            ws=ws,
            consents={
                "recording": join.consent_recording,
                "notices": join.acknowledged_notices,
                "identity": "verified" if seat_record.identity_digest else "by_mediator",
            },
        )
        while True:
            room = await self._live_room(record)
            await room.lock.acquire()
            if self.live_rooms.get(room.room_id) is room:
                break
            # Let go (empty for a while, or taken over) while this join waited for its lock.
            room.lock.release()
        try:
            if room.lifecycle.state in (RoomState.ENDED, RoomState.ARCHIVED):
                raise _refusal("room_closed")
            if seat not in room.seats:
                # Opened outside the session, and the announcement has not reached this host
                # (or is still on its way): take the new seats in now.
                await room.pick_up_seats()
                if seat not in room.seats:
                    raise _refusal("revoked")
            await attendee.send(
                "welcome",
                seat=seat.value,
                name=seat_record.person_name,
                room={
                    "id": record.room_id,
                    "case_no": record.case_no,
                    "session_no": record.session_no,
                    "state": room.lifecycle.state.value,
                },
                video_codec=record.video_codec,
                ice_servers=[
                    {"urls": s.urls, "username": s.username, "credential": s.credential}
                    for s in self.media_config.ice_servers_for(
                        record.room_id, seat.value, now=self.clock()
                    )
                ],
            )
            await room.enter(attendee)
        finally:
            room.lock.release()
        return room, attendee

    async def _dispatch(self, room: LiveRoom, attendee: Attendee, message: ClientMessage) -> None:
        seat = attendee.seat
        if isinstance(message, MEDIATOR_ONLY) and seat != SeatRole.MEDIATOR:
            raise ProtocolError("forbidden", texts.REFUSALS["forbidden"])
        if isinstance(message, (Answer, IceCandidate)) and room.attendees.get(seat) is not attendee:
            return  # from a socket replaced meanwhile: it belongs to the old peer connection
        if isinstance(message, Answer):
            try:
                follow_up = await room.media.accept_answer(seat, message.sdp)
            except _UNPARSABLE as error:
                raise ProtocolError("invalid_answer", _why(error)) from None
            if follow_up is not None:  # a seat was opened while this answer was awaited
                await attendee.send_offer(follow_up)
            return
        if isinstance(message, IceCandidate):
            try:
                await room.media.add_ice_candidate(seat, message.candidate, message.sdp_mid)
            except _UNPARSABLE as error:
                raise ProtocolError("invalid_candidate", _why(error)) from None
            return
        if isinstance(message, Join):
            raise ProtocolError("already_joined", "this connection has joined already")
        if isinstance(message, Chat) and not attendee.chat_budget.take(time.monotonic()):
            raise ProtocolError("rate_limited", texts.REFUSALS["rate_limited"])
        if isinstance(message, MediaState):
            if not attendee.media_state_budget.take(time.monotonic()):
                self._defer_media_state(room, attendee, message)
                return
            attendee.deferred_media_state = None  # this one is newer
        async with room.lock:
            if isinstance(message, Admit):
                await room.admit(message.seat)
            elif isinstance(message, Deny):
                await room.deny(message.seat)
            elif isinstance(message, Remove):
                await room.remove(message.seat)
            elif isinstance(message, Mute):
                await room.mute(message.seat, message.muted)
            elif isinstance(message, Caucus):
                await room.caucus(message.side)
            elif isinstance(message, OpenSeat):
                link = await room.open_seat(message.seat, message.name)
                await attendee.send(
                    "seat_opened", seat=message.seat.value, name=message.name, link=link
                )
            elif isinstance(message, End):
                await room.end()
            elif isinstance(message, Chat):
                await room.chat(seat, message.text)
            elif isinstance(message, MediaState) and room.attendees.get(seat) is attendee:
                await room.set_media_state(seat, message)

    def _defer_media_state(self, room: LiveRoom, attendee: Attendee, state: MediaState) -> None:
        """Keep ``state``, sent over its budget, and apply the latest one kept when the budget
        allows: a flood of switches costs the room at most the budget's rate, and the room
        still ends up with the person's last switch."""
        attendee.deferred_media_state = state
        if attendee.deferred_flush is None:
            attendee.deferred_flush = asyncio.create_task(
                self._apply_deferred_media_state(room, attendee),
                name=f"media-state-{room.room_id}-{attendee.seat}",
            )

    async def _apply_deferred_media_state(self, room: LiveRoom, attendee: Attendee) -> None:
        try:
            await asyncio.sleep(attendee.media_state_budget.wait_s(time.monotonic()))
            async with room.lock:
                state, attendee.deferred_media_state = attendee.deferred_media_state, None
                if state is not None and room.attendees.get(attendee.seat) is attendee:
                    attendee.media_state_budget.take(time.monotonic())
                    await room.set_media_state(attendee.seat, state)
        except Exception:
            log.exception("room %s: a deferred media_state failed", room.room_id)
        finally:
            attendee.deferred_flush = None

    async def _error(self, ws: web.WebSocketResponse, error: ProtocolError) -> None:
        if not ws.closed:
            await ws.send_str(server_message("error", code=error.code, message=error.message))

    async def _refuse(self, ws: web.WebSocketResponse, error: ProtocolError) -> None:
        await self._error(ws, error)
        code = CLOSE_MOVED if error.code == "moved" else CLOSE_REFUSED
        await ws.close(code=code, message=error.code.encode())


def _refusal(reason: str) -> ProtocolError:
    return ProtocolError(reason, texts.REFUSALS[reason], fatal=True)
