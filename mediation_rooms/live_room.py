"""One room hosted by this process, with people in it: its connections, admission, the
mediator's controls, its presence and its media.

One :class:`LiveRoom` per room with someone in it. Its control operations (join, admit, caucus,
opening a seat, end …) run one at a time under the room's lock; media keeps flowing meanwhile.
After every change the room's session state (admitted, muted, caucus, when it went live) is
written to Redis (``room:<id>:live``) with the presence of each seat, so that another process
can show it, and a media process that takes the room over after a crash carries on from it: the same
people admitted, the recording continued on the same room clock (in new file parts). The live
state also carries what the timeline needs across hosts: who has been in the room and when each
seat last left (:mod:`~mediation_rooms.attendance`: ``joined`` or ``reconnected``), each
seat's own microphone and camera switches, the seats the room had, and the events held until
the room goes live (:mod:`~mediation_rooms.timeline`).

Seats opened outside the session (the rooms API, ``POST /api/rooms/{id}/seats``) reach the
hosted room through :meth:`LiveRoom.pick_up_seats`, which the hub calls when told (Redis
pub/sub), when it subscribes again, and when a seat the room does not know yet joins.

:class:`~mediation_rooms.room_hub.RoomHub` hosts it (claim, release) and drives it from the
signalling connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from redis.exceptions import RedisError

from jiefen.errors import StorageUnavailable
from mediation_rooms import texts
from mediation_rooms.attendance import Attendance
from mediation_rooms.finalise import enqueue_finalisation
from mediation_rooms.media_session import Offer, RoomMedia
from mediation_rooms.message_budget import TokenBucket, chat_budget, media_state_budget
from mediation_rooms.room import (
    ALLOWED_TRANSITIONS,
    RoomLifecycle,
    RoomState,
    SeatRefused,
    SeatRole,
    SessionView,
    Side,
    check_new_seat,
)
from mediation_rooms.signalling import (
    CLOSE_ENDED,
    CLOSE_REMOVED,
    CLOSE_REPLACED,
    MediaState,
    ProtocolError,
    server_message,
)
from mediation_rooms.timeline import RoomTimeline
from state import room_store
from state.room_store import RoomRecord

if TYPE_CHECKING:
    from mediation_rooms.room_hub import RoomHub

log = logging.getLogger(__name__)

LIVE_STATE_TTL_S = 24 * 3600


@dataclass
class Attendee:
    """One signalling connection, after a successful join."""

    seat: SeatRole
    ws: web.WebSocketResponse
    #: What the person agreed to at join, for the timeline: {"recording", "notices", "identity"}.
    consents: dict[str, Any]
    #: This connection's budgets for the messages that reach everyone (``message_budget``).
    chat_budget: TokenBucket = dataclasses.field(default_factory=chat_budget)
    media_state_budget: TokenBucket = dataclasses.field(default_factory=media_state_budget)
    #: The latest ``media_state`` sent over its budget, and the task that applies it when the
    #: budget allows (``RoomHub._defer_media_state``).
    deferred_media_state: MediaState | None = None
    deferred_flush: asyncio.Task[None] | None = None

    async def send(self, kind: str, **fields: Any) -> None:
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_str(server_message(kind, **fields))

    async def send_offer(self, offer: Offer) -> None:
        """An ``offer`` for this attendee's connection (``renegotiation``: the same one)."""
        await self.send(
            "offer",
            sdp=offer.sdp,
            tracks=[dataclasses.asdict(slot) for slot in offer.tracks],
            renegotiation=offer.renegotiation,
        )

    async def close(self, code: int, kind: str, message: str, *, told: bool = False) -> None:
        """Tell the page why (``kind`` with ``message``; not again when ``told``), then close
        the socket, waiting up to CLOSE_HANDSHAKE_TIMEOUT_S for the page's answer."""
        if not told:
            await self.send(kind, message=message)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=code, message=kind.encode())


class LiveRoom:
    """A room with people in it, hosted by this process."""

    def __init__(self, hub: RoomHub, record: RoomRecord, live: dict[str, Any]) -> None:
        self.hub = hub
        self.record = record
        self.room_id = record.room_id
        self.lifecycle = RoomLifecycle(record.room_id, RoomState(record.state))
        self.lock = asyncio.Lock()
        self.attendees: dict[SeatRole, Attendee] = {}
        self.waiting: set[SeatRole] = set()
        self.view = SessionView(
            admitted={SeatRole(seat) for seat in live.get("admitted", [])},
            muted={SeatRole(seat) for seat in live.get("muted", [])},
            caucus=Side(live["caucus"]) if live.get("caucus") else None,
        )
        # The room clock's origin: from the live state, else (Redis lost it, or it expired)
        # from the database, so that a live room hosted again is always recorded.
        self.live_since: float | None = live.get("live_since") or (
            record.live_at.timestamp() if record.live_at is not None else None
        )
        self.seats = tuple(SeatRole(seat.seat) for seat in record.seats)
        self.attendance = Attendance.from_live(live)
        #: Each seat's own microphone and camera, as its page last said (``media_state``).
        self.media_states = {
            SeatRole(seat): MediaState(audio=bool(state["audio"]), video=bool(state["video"]))
            for seat, state in (live.get("media_state") or {}).items()
        }
        self.timeline = RoomTimeline.from_live(live)
        self.media = RoomMedia(
            record.room_id,
            self.seats,
            hub.media_config_for(record.video_codec),
            hub.recordings_dir,
        )
        self.media.update_view(self.view)
        #: Lets the room go once it has been empty for a while (see RoomHub.release_if_empty).
        self.idle_release: asyncio.Task[None] | None = None
        if self.lifecycle.state == RoomState.LIVE and self.live_since is not None:
            recording = self.media.start_recording(self.live_since)
            recording.event("recording_resumed", after="hosting resumed by a media process")
            self.timeline.attach(recording)
        # Seats opened (through the rooms API) while no process hosted the room.
        known = live.get("seats")
        if known is not None:
            for seat in self.seats:
                if seat.value not in known:
                    self.event("seat_opened", seat=seat.value, by="api")

    # -- state kept in Redis -----------------------------------------------------------------

    async def save(self) -> None:
        """Write the session state to Redis. A Redis outage is logged, not raised: the room
        goes on in memory (media needs no Redis) and the next change writes the whole state;
        raising would throw out whoever's message caused the change (their connection's task
        fails), and with it, once empty, the room's release."""
        live = {
            "state": self.lifecycle.state.value,
            "admitted": sorted(self.view.admitted),
            "muted": sorted(self.view.muted),
            "caucus": self.view.caucus.value if self.view.caucus else None,
            "live_since": self.live_since,
            "present": sorted(self.attendees),
            "waiting": sorted(self.waiting),
            "seats": [seat.value for seat in self.seats],
            "media_state": {
                seat.value: {"audio": state.audio, "video": state.video}
                for seat, state in self.media_states.items()
            },
            **self.attendance.live(),
            **self.timeline.held(),
        }
        try:
            await self.hub.redis.set(
                self.hub.live_key(self.room_id), json.dumps(live), ex=LIVE_STATE_TTL_S
            )
        except RedisError as error:
            log.warning(
                "room %s: live state not saved (%s); the next change saves it", self.room_id, error
            )

    def event(self, event: str, **details: Any) -> None:
        """An entry in the room's timeline (held until the room goes live: ``timeline.py``)."""
        self.timeline.event(event, **details)

    def record_arrival(self, attendee: Attendee, *, replacing: bool) -> None:
        """Timeline entries for someone arriving: ``joined`` the first time this session, else
        ``reconnected`` with the gap (``attendance.py``); then what they agreed to."""
        seat = attendee.seat.value
        event, details = self.attendance.arrive(seat, time.time(), still_present=replacing)
        self.event(event, seat=seat, **details)
        self.event("consented", seat=seat, **attendee.consents)

    def record_departure(self, seat: SeatRole) -> None:
        """``seat`` is no longer in the room (its gap until it comes back runs from now)."""
        self.attendance.leave(seat.value, time.time())

    async def set_state(self, state: RoomState) -> None:
        """The one place a hosted room's lifecycle changes: memory, database, then Redis."""
        old = self.lifecycle.state
        self.lifecycle.set_state(state)
        changed = await room_store.set_room_state(
            self.hub.db, self.room_id, expected=old, new=state, now=datetime.now(UTC)
        )
        if not changed:
            log.warning(
                "room %s: the database was not in %s when moving to %s", self.room_id, old, state
            )

    # -- presence ------------------------------------------------------------------------------

    def presence(self) -> dict[str, Any]:
        names = {SeatRole(seat.seat): seat.person_name for seat in self.record.seats}
        return {
            "state": self.lifecycle.state.value,
            "caucus": self.view.caucus.value if self.view.caucus else None,
            "participants": [
                {
                    "seat": seat.value,
                    "name": names[seat],
                    "role_name": texts.SEAT_NAMES[seat.value],
                    "present": seat in self.attendees,
                    "admitted": seat in self.view.admitted,
                    "waiting": seat in self.waiting,
                    "muted": seat in self.view.muted,
                    "on_hold": not self.view.in_session(seat),
                    # Switched off by the person themselves (unknown until their page says).
                    "audio_off": seat in self.media_states and not self.media_states[seat].audio,
                    "video_off": seat in self.media_states and not self.media_states[seat].video,
                }
                for seat in self.seats
            ],
        }

    async def broadcast_presence(self) -> None:
        presence = self.presence()
        await asyncio.gather(
            *(attendee.send("presence", **presence) for attendee in self.attendees.values())
        )
        await self.save()

    # -- admission and media -------------------------------------------------------------------

    async def enter(self, attendee: Attendee) -> None:
        """A joined attendee: replaces an earlier device, then waits or gets media."""
        seat = attendee.seat
        self.cancel_idle_release()
        previous = self.attendees.get(seat)
        self.attendees[seat] = attendee
        if previous is not None:
            self.event("replaced", seat=seat.value)
            await previous.close(CLOSE_REPLACED, "replaced", texts.REPLACED)
        if self.lifecycle.state == RoomState.SCHEDULED:
            await self.set_state(RoomState.OPEN)
        self.record_arrival(attendee, replacing=previous is not None)
        if seat == SeatRole.MEDIATOR:
            self.view.admitted.add(seat)
        if seat in self.view.admitted:
            await self.start_media(attendee)
        else:
            self.waiting.add(seat)
            await attendee.send("waiting", message=texts.WAITING)
        if seat in self.view.muted:  # still muted from before they dropped: say so again
            await attendee.send("notice", message=texts.MUTED_BY_MEDIATOR)
        self.media.update_view(self.view)
        await self.broadcast_presence()

    async def start_media(self, attendee: Attendee) -> None:
        await attendee.send_offer(await self.media.connect(attendee.seat))

    async def leave(self, attendee: Attendee) -> None:
        """The attendee's socket closed; admission is kept so a reconnect goes straight in."""
        if self.attendees.get(attendee.seat) is not attendee:
            return  # already replaced by a newer device
        del self.attendees[attendee.seat]
        self.waiting.discard(attendee.seat)
        await self.media.disconnect(attendee.seat, reason="left")
        self.record_departure(attendee.seat)
        self.event("left", seat=attendee.seat.value)
        await self.broadcast_presence()
        if not self.attendees:
            self.hub.schedule_release_if_empty(self)

    # -- the mediator's controls ----------------------------------------------------------------

    async def admit(self, seat: SeatRole) -> None:
        attendee = self.attendees.get(seat)
        if attendee is None or seat not in self.waiting:
            raise ProtocolError("not_in_room", texts.REFUSALS["not_in_room"])
        self.waiting.discard(seat)
        self.view.admitted.add(seat)
        if self.lifecycle.state == RoomState.OPEN:
            await self.set_state(RoomState.LIVE)
            self.live_since = time.time()
            # What happened before (arrivals, consents …) is written now, at the time it
            # happened: before the room clock's origin, marked before_live.
            self.timeline.attach(self.media.start_recording(self.live_since))
        self.event("admitted", seat=seat.value)
        await attendee.send("admitted")
        await self.start_media(attendee)
        self.media.update_view(self.view)
        await self.broadcast_presence()

    async def deny(self, seat: SeatRole) -> None:
        attendee = self.attendees.get(seat)
        if attendee is None or seat not in self.waiting:
            raise ProtocolError("not_in_room", texts.REFUSALS["not_in_room"])
        self.waiting.discard(seat)
        del self.attendees[seat]
        self.record_departure(seat)
        self.event("denied", seat=seat.value)
        await attendee.close(CLOSE_REMOVED, "denied", texts.DENIED)
        await self.broadcast_presence()

    async def remove(self, seat: SeatRole) -> None:
        if seat == SeatRole.MEDIATOR:
            raise ProtocolError("invalid_field", "the mediator cannot remove themselves")
        self.view.admitted.discard(seat)
        self.waiting.discard(seat)
        attendee = self.attendees.pop(seat, None)
        await self.media.disconnect(seat, reason="removed")
        self.media.update_view(self.view)
        self.event("removed", seat=seat.value)
        if attendee is not None:
            self.record_departure(seat)
            await attendee.close(CLOSE_REMOVED, "removed", texts.REMOVED)
        await self.broadcast_presence()

    async def mute(self, seat: SeatRole, muted: bool) -> None:
        """The mediator mutes (or unmutes) ``seat``: its audio stops (or resumes) reaching the
        others, and its person is told."""
        changed = muted != (seat in self.view.muted)
        if muted:
            self.view.muted.add(seat)
        else:
            self.view.muted.discard(seat)
        self.media.update_view(self.view)
        self.event("muted" if muted else "unmuted", seat=seat.value, by="mediator")
        attendee = self.attendees.get(seat)
        if attendee is not None and changed:
            notice = texts.MUTED_BY_MEDIATOR if muted else texts.UNMUTED_BY_MEDIATOR
            await attendee.send("notice", message=notice)
        await self.broadcast_presence()

    async def set_media_state(self, seat: SeatRole, state: MediaState) -> None:
        """``seat``'s person switched their own microphone or camera: recorded (when it
        changed) and shown to the others in ``presence``. Nothing changes in forwarding: what
        they switched off, their page no longer sends."""
        if self.media_states.get(seat) == state:
            return  # said again after a reconnect: nothing happened
        self.media_states[seat] = state
        self.event("media_state", seat=seat.value, audio=state.audio, video=state.video, by="self")
        await self.broadcast_presence()

    async def caucus(self, side: Side | None) -> None:
        if side == self.view.caucus:
            return
        if self.view.caucus is not None:
            self.event("caucus_ended", side=self.view.caucus.value)
        self.view.caucus = side
        self.media.update_view(self.view)
        if side is not None:
            self.event("caucus_started", side=side.value)
        for seat, attendee in self.attendees.items():
            if side is None:
                await attendee.send("notice", message=texts.JOINT_SESSION)
            elif not self.view.in_session(seat):
                await attendee.send("notice", message=texts.CAUCUS_ON_HOLD)
            elif seat.side == side:
                await attendee.send("notice", message=texts.CAUCUS_STARTED)
        await self.broadcast_presence()

    async def end(self) -> None:
        if RoomState.ENDED in ALLOWED_TRANSITIONS[self.lifecycle.state]:
            await self.set_state(RoomState.ENDED)
        self.event("ended")
        self.timeline.close()  # a room that never went live has no recording to write to
        attendees = list(self.attendees.values())
        self.attendees.clear()
        self.waiting.clear()
        # Everyone is told (a message: no waiting), then recording and forwarding stop, and
        # only then are the sockets closed: each close waits for the page's answer (up to
        # CLOSE_HANDSHAKE_TIMEOUT_S), and nothing said once the session has ended may reach
        # the others or the recording meanwhile.
        await asyncio.gather(
            *(attendee.send("ended", message=texts.ENDED) for attendee in attendees)
        )
        await self.media.close()
        await asyncio.gather(
            *(
                attendee.close(CLOSE_ENDED, "ended", texts.ENDED, told=True)
                for attendee in attendees
            )
        )
        await self.save()
        await self.hub.unhost(self)
        if self.lifecycle.state is RoomState.ENDED and self.hub.jobs is not None:
            await enqueue_finalisation(self.hub.jobs, self.room_id)

    def cancel_idle_release(self) -> None:
        """Someone is (or will be) in the room, or it is no longer hosted: keep it as it is."""
        if self.idle_release is not None:
            self.idle_release.cancel()
            self.idle_release = None

    async def hand_over(self, code: int, kind: str, message: str, *, save: bool = True) -> None:
        """Stop hosting without ending: everyone is disconnected, the files are finished, and
        the live state stays in Redis for the next host (this process or another). ``save``:
        write this process's view of the session first (not when another host owns it now)."""
        attendees = list(self.attendees.values())
        for attendee in attendees:
            self.record_departure(attendee.seat)
        self.attendees.clear()
        self.waiting.clear()
        self.event("hosting_stopped", reason=kind)
        await asyncio.gather(*(attendee.close(code, kind, message) for attendee in attendees))
        await self.media.close()
        if save:
            await self.save()

    async def open_seat(self, seat: SeatRole, name: str) -> str:
        """Open the extra ``seat`` for ``name`` during the session; returns its join link.

        The seat is stored first (with its link), then every connection is offered the new
        seat's media (a renegotiation), the timeline records it and the presence lists it.
        Its person joins with the link and waits to be admitted, like anyone. Refused with
        ``room_closed``, ``not_extra_seat``, ``seat_taken`` or ``too_many_seats``.
        """
        try:
            # The hosted room's own state first (it is current here), then the database's.
            check_new_seat(self.lifecycle.state, self.seats, seat)
            opened = await self.hub.rooms.open_seat(self.room_id, seat, name, now=datetime.now(UTC))
        except SeatRefused as refused:
            raise ProtocolError(refused.reason, texts.REFUSALS[refused.reason]) from None
        except (StorageUnavailable, RuntimeError) as error:
            # The mediator's connection stays up: they may try again in a moment.
            log.warning("room %s: opening %s failed: %s", self.room_id, seat, error)
            raise ProtocolError("try_again", texts.TRY_AGAIN) from None
        await self.adopt_seats(opened.room, by="mediator")
        return opened.link

    async def pick_up_seats(self) -> None:
        """Take in the seats opened outside the session (the rooms API) that this hosted room
        does not have yet, from the room as stored now. Under the room's lock."""
        record = await room_store.get_room(self.hub.db, self.room_id)
        if record is not None:
            await self.adopt_seats(record, by="api")

    async def adopt_seats(self, record: RoomRecord, *, by: str) -> None:
        """Every seat of ``record`` (the room as stored, read after the seats were opened) this
        hosted room lacks: every connection is offered its media (a renegotiation), the
        timeline records it (``by``: who opened it) and the presence lists it."""
        stored = {SeatRole(seat.seat) for seat in record.seats}
        new = [seat for seat in (SeatRole(s.seat) for s in record.seats) if seat not in self.seats]
        if not new or not stored.issuperset(self.seats):
            return  # nothing new, or read before a seat this room has: a later read brings it
        self.record = record
        for seat in new:
            self.seats = (*self.seats, seat)
            offers = await self.media.add_seat(seat)
            self.event("seat_opened", seat=seat.value, by=by)
            for other, offer in offers.items():
                attendee = self.attendees.get(other)
                if attendee is not None:
                    await attendee.send_offer(offer)
        await self.broadcast_presence()

    async def chat(self, sender: SeatRole, text: str) -> None:
        """Chat reaches the admitted people in the sender's group: a caucus holds for text too."""
        if sender not in self.view.admitted:
            raise ProtocolError("not_admitted", texts.WAITING)
        self.event("chat", seat=sender.value, chars=len(text))
        group = self.view.in_session(sender)
        for seat, attendee in self.attendees.items():
            if seat in self.view.admitted and self.view.in_session(seat) == group:
                await attendee.send("chat", seat=sender.value, text=text)
