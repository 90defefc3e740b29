"""Opening a room for a case: its seats, each seat's join link, and the applicant's invitation;
opening an extra seat in it later, during the session.

Identity re-check (在线诉讼规则 Art.7: verify identity at each session): each party seat stores
a keyed digest of the answer the person must give on the join page, never the answer:
the last 6 characters of the ID number where the case has it (the applicant), else the phone
number on the case (the respondent, when known). A seat with neither (an interpreter or an
agent always) is verified by the mediator on camera, and the timeline says so.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.outbox import Outbox
from cases.case_number import CHINA_TZ
from config.settings import Settings
from mediation_rooms import texts
from mediation_rooms.join_token import JoinClaims, derive_join_key, issue_join_token, new_nonce
from mediation_rooms.room import RoomState, SeatRole, check_new_seat, check_seats
from state import room_store
from state.personal_data import PersonalDataProtector
from state.room_store import PartyContact, RoomRecord, SeatRecord

log = logging.getLogger(__name__)

IDENTITY_PURPOSE = "room-identity"
ID_TAIL = "id_tail"
PHONE = "phone"
#: Opening a seat re-reads the room when it changed meanwhile; each retry follows a real change
#: (a state step or another seat), of which a room has only a few.
_ADD_SEAT_TRIES = 8


def normalise_identity_answer(check: str, answer: str) -> str:
    """The form in which an identity answer is hashed and compared."""
    cleaned = re.sub(r"[\s\-]", "", answer).upper()
    if check == PHONE:
        cleaned = cleaned.removeprefix("+86")
    return cleaned


@dataclass(frozen=True, slots=True)
class OpenedRoom:
    room: RoomRecord
    links: dict[str, str]  # seat -> join URL


@dataclass(frozen=True, slots=True)
class OpenedSeat:
    """A seat opened during the session: the room as it is now, the seat, and its link."""

    room: RoomRecord
    seat: SeatRecord
    link: str


class RoomService:
    """Creates rooms, seats and join links; shared by ``jiefen room open``, the HTTP API and the
    room hub (a seat the mediator opens during the session)."""

    def __init__(
        self,
        *,
        db: AsyncEngine,
        protector: PersonalDataProtector,
        join_key: bytes,
        public_url: str,
        video_codec: str,
        link_valid_after_start: timedelta,
        outbox: Outbox | None,
    ) -> None:
        self._db = db
        self._protector = protector
        #: Signs this service's join links; the room hub verifies them with it.
        self.join_key = join_key
        self._public_url = public_url.rstrip("/")
        self._video_codec = video_codec
        self._link_valid_after_start = link_valid_after_start
        self._outbox = outbox

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        db: AsyncEngine,
        data_key: bytes,
        protector: PersonalDataProtector,
        outbox: Outbox | None,
    ) -> RoomService:
        """The service as ``settings`` configure it (``serve`` and ``jiefen room open``)."""
        return cls(
            db=db,
            protector=protector,
            join_key=derive_join_key(data_key),
            public_url=settings.resolved_public_url,
            video_codec=settings.video_codec,
            link_valid_after_start=timedelta(hours=settings.join_link_valid_hours),
            outbox=outbox,
        )

    def identity_digest(self, room_id: str, seat: str, check: str, answer: str) -> str:
        return self._protector.blind_index(
            normalise_identity_answer(check, answer),
            purpose=f"{IDENTITY_PURPOSE}:{room_id}:{seat}",
        )

    def join_link(self, room_id: str, seat: SeatRecord) -> str:
        token = issue_join_token(
            self.join_key,
            JoinClaims(
                room_id=room_id,
                seat=seat.seat,
                nonce=seat.nonce,
                expires_at=int(seat.expires_at.timestamp()),
            ),
        )
        return f"{self._public_url}/join#{token}"

    async def open_room(
        self,
        case_no: str,
        *,
        scheduled_at: datetime,
        now: datetime,
        mediator_name: str = "调解员",
        extra_seats: dict[SeatRole, str] | None = None,
        invite_applicant: bool = True,
    ) -> OpenedRoom:
        """A new session of ``case_no``; raises ``room_store.UnknownCase``, ``ValueError``."""
        extras = extra_seats or {}
        seats = check_seats([SeatRole.MEDIATOR, SeatRole.APPLICANT, SeatRole.RESPONDENT, *extras])
        parties = await room_store.party_contacts(self._db, case_no)
        expires_at = self._links_expire(scheduled_at, now)
        room_id = room_store.new_room_id()
        records: list[SeatRecord] = []
        for seat in seats:
            if seat == SeatRole.MEDIATOR:
                name = mediator_name
            elif seat.is_party:
                name = parties[seat.value].name if seat.value in parties else texts.SEAT_NAMES[seat]
            else:
                name = extras[seat]
            records.append(self._new_seat(room_id, seat, name, parties.get(seat.value), expires_at))
        room = await room_store.create_room(
            self._db,
            room_id=room_id,
            case_no=case_no,
            scheduled_at=scheduled_at,
            video_codec=self._video_codec,
            seats=records,
            state=RoomState.SCHEDULED.value,
            now=now,
        )
        links = {seat.seat: self.join_link(room.room_id, seat) for seat in room.seats}
        applicant = parties.get(SeatRole.APPLICANT.value)
        if invite_applicant and self._outbox is not None and applicant and applicant.openid:
            when = scheduled_at.astimezone(CHINA_TZ).strftime("%Y年%m月%d日 %H:%M")
            await self._outbox.push(
                applicant.openid,
                [
                    texts.INVITATION.format(
                        case_no=case_no, when=when, link=links[SeatRole.APPLICANT.value]
                    )
                ],
            )
        log.info("room %s opened for case %s (session %d)", room.room_id, case_no, room.session_no)
        return OpenedRoom(room=room, links=links)

    async def open_seat(
        self, room_id: str, seat: SeatRole, name: str, *, now: datetime
    ) -> OpenedSeat:
        """Open an extra seat (an interpreter or a party's agent) in a room that has not ended.

        The seat gets a fresh nonce and a link that expires by the other seats' rule (a while
        after the scheduled start, or after now if that is later). It has no identity re-check
        (the case holds no ID data for these people): the mediator sees them in the waiting room
        and admits them, and the timeline says so. Raises ``room_store.UnknownRoom`` and
        ``SeatRefused`` (see ``room.check_new_seat``).
        """
        for _ in range(_ADD_SEAT_TRIES):
            room = await room_store.get_room(self._db, room_id)
            if room is None:
                raise room_store.UnknownRoom(room_id)
            check_new_seat(RoomState(room.state), (SeatRole(s.seat) for s in room.seats), seat)
            record = self._new_seat(
                room_id, seat, name, None, self._links_expire(room.scheduled_at, now)
            )
            added = await room_store.add_seat(
                self._db,
                room_id,
                record,
                expected_state=room.state,
                expected_seats=[s.seat for s in room.seats],
            )
            if added:
                log.info("room %s: seat %s opened", room_id, seat)
                return OpenedSeat(
                    room=dataclasses.replace(room, seats=(*room.seats, record)),
                    seat=record,
                    link=self.join_link(room_id, record),
                )
            # The room changed between reading and writing it: check the rules again.
        raise RuntimeError(f"room {room_id} kept changing while a seat was being opened")

    def _links_expire(self, scheduled_at: datetime, now: datetime) -> datetime:
        """When a seat's link stops working: a while after the session starts (or now)."""
        return max(scheduled_at, now) + self._link_valid_after_start

    def _new_seat(
        self,
        room_id: str,
        seat: SeatRole,
        name: str,
        party: PartyContact | None,
        expires_at: datetime,
    ) -> SeatRecord:
        """A seat with a fresh nonce, and the identity re-check that ``party`` allows."""
        check, answer = self._identity_answer(party)
        return SeatRecord(
            seat=seat.value,
            person_name=name,
            nonce=new_nonce(),
            identity_check=check,
            identity_digest=(
                self.identity_digest(room_id, seat.value, check, answer)
                if check and answer
                else None
            ),
            expires_at=expires_at,
        )

    def _identity_answer(self, party: PartyContact | None) -> tuple[str | None, str | None]:
        if party is None:
            return None, None
        if party.id_number_ciphertext:
            return ID_TAIL, self._protector.decrypt(party.id_number_ciphertext)[-6:]
        if party.phone:
            return PHONE, party.phone
        return None, None
