"""The media of one room in this process: a peer connection per participant, forwarding, recording.

Negotiation is always offered by the server: two ``recvonly`` m-lines (audio, video) for what
the participant sends, then a ``sendonly`` pair for each *other seat of the room*, whether or
not anyone sits in it yet. A participant joining, leaving or being put on hold changes only
what is forwarded, never the SDP. The offer's ``tracks`` list says which mid carries which
seat. ``bundlePolicy`` is max-bundle (one transport; aiortc issue #1414 loses the second video
m-line otherwise) and one video codec is forced for the room.

The one renegotiation: a seat the mediator opens during the session (:meth:`RoomMedia.add_seat`)
adds a ``sendonly`` pair for it to every connection, after the existing m-lines, which stay as
they were (same mids, same transport); the server offers again and the participant answers on
the same peer connection. Only one offer is out per connection at a time: a seat opened while
a connection's offer awaits its answer is offered once that answer is in
(:meth:`RoomMedia.accept_answer` returns the follow-up offer).

A new connection of a seat that is already connected replaces the old one (second device, or
a reconnect after a network drop): the old peer connection is closed, the seat's publications
carry on from the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError
from aiortc.sdp import candidate_from_sdp

from mediation_rooms import aiortc_hooks
from mediation_rooms.forwarding import Publication, Subscription, SubscriptionTrack
from mediation_rooms.recording import RoomClock, RoomRecording
from mediation_rooms.room import SeatRole, SessionView
from mediation_rooms.turn_credentials import TurnRestConfig, mint_credential, turn_user

log = logging.getLogger(__name__)

KINDS = ("audio", "video")
WATCHDOG_INTERVAL_S = 0.5


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """How the media plane is set up (from ``Settings``)."""

    ice_servers: tuple[RTCIceServer, ...] = ()
    video_codec: str = "VP8"
    video_bitrate_cap_bps: int = 1_000_000
    #: TURN servers taking time-limited credentials, minted per connection; none when unset.
    turn: TurnRestConfig | None = None

    def ice_servers_for(self, room_id: str, seat: str, *, now: float) -> list[RTCIceServer]:
        """The ICE servers of one seat's connection (the participant's end and the server's):
        the TURN servers with credentials minted at ``now`` (unix seconds) for this room and
        seat, then the static ones. aiortc uses the first TURN URL it can, so minted first."""
        servers = list(self.ice_servers)
        if self.turn is not None:
            minted = mint_credential(self.turn, turn_user(room_id, seat), now=now)
            servers.insert(
                0,
                RTCIceServer(
                    urls=list(minted.urls), username=minted.username, credential=minted.credential
                ),
            )
        return servers


@dataclass(frozen=True, slots=True)
class TrackSlot:
    """One m-line of a participant's connection: which seat's what it carries."""

    mid: str
    seat: str
    kind: str
    direction: str  # as the participant sees it: "send" (their own) or "receive"


@dataclass(frozen=True, slots=True)
class Offer:
    sdp: str
    tracks: tuple[TrackSlot, ...]
    #: False for a new peer connection; True for a new offer on the connection of the last one
    #: (a seat was added): the participant answers it on the same peer connection.
    renegotiation: bool = False


@dataclass
class ParticipantConnection:
    seat: SeatRole
    pc: RTCPeerConnection
    #: The participant's own audio and video, by kind (the m-lines the server receives on).
    incoming: dict[str, RTCRtpTransceiver] = field(default_factory=dict)
    #: One m-line per (other seat, kind) the server sends on, in m-line order.
    outgoing: list[tuple[RTCRtpTransceiver, Subscription]] = field(default_factory=list)
    receivers: list[RTCRtpReceiver] = field(default_factory=list)
    #: Seats were added while an offer awaited its answer: offer again once it is in.
    renegotiate: bool = False

    @property
    def subscriptions(self) -> list[Subscription]:
        return [subscription for _, subscription in self.outgoing]


def codec_preferences(kind: str, video_codec: str) -> list[Any]:
    """The codecs offered for ``kind``: Opus for audio; for video the room's codec and RTX."""
    capabilities = RTCRtpSender.getCapabilities(kind).codecs
    if kind == "audio":
        return [codec for codec in capabilities if codec.mimeType.lower() == "audio/opus"]
    wanted = f"video/{video_codec}".lower()
    chosen = [codec for codec in capabilities if codec.mimeType.lower() == wanted]
    if not chosen:
        raise ValueError(f"video codec {video_codec} is not available")
    return chosen + [codec for codec in capabilities if codec.mimeType.lower() == "video/rtx"]


class RoomMedia:
    """All media of one room in this process. Call :meth:`close` when the room ends."""

    def __init__(
        self,
        room_id: str,
        seats: Iterable[SeatRole],
        config: MediaConfig,
        recordings_dir: Path,
    ) -> None:
        self.room_id = room_id
        self.seats = tuple(seats)
        self.config = config
        self.recordings_dir = recordings_dir
        self.view = SessionView()
        self.recording: RoomRecording | None = None
        self.connections: dict[SeatRole, ParticipantConnection] = {}
        self.publications: dict[tuple[SeatRole, str], Publication] = {
            (seat, kind): Publication(
                seat.value, kind, config.video_codec if kind == "video" else "opus"
            )
            for seat in self.seats
            for kind in KINDS
        }
        self._watchdog = asyncio.create_task(self._watch_stalls(), name=f"watchdog-{room_id}")

    # -- connections -----------------------------------------------------------------------

    async def connect(self, seat: SeatRole) -> Offer:
        """A new connection for ``seat`` (replacing any); returns the offer to send it."""
        await self.disconnect(seat, reason="replaced")
        pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=self.config.ice_servers_for(self.room_id, seat.value, now=time.time()),
                bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            )
        )
        connection = ParticipantConnection(seat=seat, pc=pc)
        self.connections[seat] = connection
        for kind in KINDS:
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            transceiver.setCodecPreferences(codec_preferences(kind, self.config.video_codec))
            connection.incoming[kind] = transceiver
        for other in self.seats:
            if other != seat:
                self._subscribe(connection, other)

        @pc.on("track")
        def on_track(track: Any) -> None:
            for kind, transceiver in connection.incoming.items():
                if transceiver.receiver.track is track:
                    publication = self.publications[(seat, kind)]
                    cap = self.config.video_bitrate_cap_bps if kind == "video" else None
                    publication.attach(transceiver.receiver, cap)
                    connection.receivers.append(transceiver.receiver)
                    if self.recording is not None and publication.sink is None:
                        self.recording.record(publication)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and self.connections.get(seat) is (
                connection
            ):
                log.info("room %s: %s connection %s", self.room_id, seat, pc.connectionState)
                await self.disconnect(seat, reason=pc.connectionState)

        offer = await self._offer(connection, renegotiation=False)
        self._apply_permissions()
        return offer

    def _subscribe(self, connection: ParticipantConnection, publisher: SeatRole) -> None:
        """Add a ``sendonly`` m-line per kind carrying ``publisher`` to ``connection``."""
        for kind in KINDS:
            publication = self.publications[(publisher, kind)]
            track = SubscriptionTrack(kind)
            transceiver = connection.pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(codec_preferences(kind, self.config.video_codec))
            aiortc_hooks.on_keyframe_request(transceiver.sender, publication.request_keyframe)
            subscription = Subscription(publication, connection.seat.value, track)
            publication.subscriptions.add(subscription)
            connection.outgoing.append((transceiver, subscription))

    async def _offer(self, connection: ParticipantConnection, *, renegotiation: bool) -> Offer:
        """Offer every m-line of ``connection`` (new ones get their mids here)."""
        pc = connection.pc
        await pc.setLocalDescription(await pc.createOffer())
        tracks = [
            TrackSlot(
                mid=str(transceiver.mid), seat=connection.seat.value, kind=kind, direction="send"
            )
            for kind, transceiver in connection.incoming.items()
        ] + [
            TrackSlot(
                mid=str(transceiver.mid),
                seat=subscription.publication.seat,
                kind=subscription.publication.kind,
                direction="receive",
            )
            for transceiver, subscription in connection.outgoing
        ]
        return Offer(sdp=pc.localDescription.sdp, tracks=tuple(tracks), renegotiation=renegotiation)

    async def add_seat(self, seat: SeatRole) -> dict[SeatRole, Offer]:
        """A seat opened during the session: its publications, and its media on every connection.

        Returns the new offer for each connection that can take one now (the caller sends it);
        a connection whose last offer is still unanswered gets its new offer from
        :meth:`accept_answer`. What reaches whom still follows the session view: nothing of the
        new seat is forwarded before it is admitted.
        """
        if seat in self.seats:
            raise ValueError(f"the room has the seat {seat} already")
        self.seats = (*self.seats, seat)
        for kind in KINDS:
            self.publications[(seat, kind)] = Publication(
                seat.value, kind, self.config.video_codec if kind == "video" else "opus"
            )
        offers: dict[SeatRole, Offer] = {}
        for connection in list(self.connections.values()):
            if self.connections.get(connection.seat) is not connection:
                continue  # replaced or closed while an earlier connection was being offered
            self._subscribe(connection, seat)
            if connection.pc.signalingState != "stable":
                connection.renegotiate = True
                continue
            try:
                offers[connection.seat] = await self._offer(connection, renegotiation=True)
            except InvalidStateError:
                continue  # closed meanwhile: its next connection is offered every seat
        self._apply_permissions()
        return offers

    async def accept_answer(self, seat: SeatRole, sdp: str) -> Offer | None:
        """Apply ``seat``'s answer; returns the next offer to send it when seats were added
        while this answer was awaited, else ``None``."""
        connection = self.connections.get(seat)
        if connection is None:
            raise LookupError(f"{seat} has no connection")
        try:
            await connection.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except InvalidStateError:
            raise ValueError("no offer awaits an answer") from None
        if not connection.renegotiate or self.connections.get(seat) is not connection:
            return None
        connection.renegotiate = False
        return await self._offer(connection, renegotiation=True)

    async def add_ice_candidate(self, seat: SeatRole, candidate: str, sdp_mid: str | None) -> None:
        connection = self.connections.get(seat)
        if connection is None:
            raise LookupError(f"{seat} has no connection")
        text = candidate.removeprefix("candidate:")
        if not text:
            return  # end-of-candidates
        parsed = candidate_from_sdp(text)
        parsed.sdpMid = sdp_mid
        await connection.pc.addIceCandidate(parsed)

    async def disconnect(self, seat: SeatRole, reason: str) -> None:
        """Close ``seat``'s connection, if any; its publications wait for the next one."""
        connection = self.connections.pop(seat, None)
        if connection is None:
            return
        for subscription in connection.subscriptions:
            subscription.publication.subscriptions.discard(subscription)
            subscription.track.stop()
        for receiver in connection.receivers:
            for kind in KINDS:
                self.publications[(seat, kind)].detach(receiver)
        with contextlib.suppress(Exception):
            await connection.pc.close()
        if self.recording is not None:
            self.recording.event("connection_closed", seat=seat.value, reason=reason)

    # -- session ---------------------------------------------------------------------------

    def update_view(self, view: SessionView) -> None:
        """Apply who is admitted, muted and in caucus to every forwarding path."""
        self.view = view
        self._apply_permissions()

    def _apply_permissions(self) -> None:
        for connection in self.connections.values():
            for subscription in connection.subscriptions:
                publisher = SeatRole(subscription.publication.seat)
                subscription.set_permitted(
                    self.view.may_forward(publisher, connection.seat, subscription.publication.kind)
                )

    def start_recording(self, live_since: float) -> RoomRecording:
        """Record every publication from now on (the room went live at ``live_since``)."""
        if self.recording is None:
            self.recording = RoomRecording(
                self.recordings_dir / self.room_id, clock=RoomClock(live_since)
            )
            self.recording.event("recording_started", room=self.room_id, live_since=live_since)
            for publication in self.publications.values():
                if publication.connected:
                    self.recording.record(publication)
                    # A file opens on a keyframe: ask for one now rather than lose the
                    # seconds until the publisher's next one.
                    publication.request_keyframe()
        return self.recording

    async def close(self) -> None:
        """End the room's media: every connection, the watchdog, the recording files."""
        self._watchdog.cancel()
        for seat in list(self.connections):
            await self.disconnect(seat, reason="room_closed")
        if self.recording is not None:
            self.recording.close()

    async def _watch_stalls(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            now = time.monotonic()
            for publication in self.publications.values():
                if publication.check_stall(now) and self.recording is not None:
                    self.recording.event("stream_stalled", seat=publication.seat)
