"""The media plane with real aiortc peers: forwarding, keyframes, caucus, recording.

Three synthetic participants (pre-encoded VP8 + Opus, replayed at real time) connect to one
``RoomMedia`` over real DTLS/SRTP on loopback; signalling is done in-process here (the
WebSocket path has its own tests in test_room_signalling.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import av
import pytest
from aiortc import RTCDtlsTransport, RTCRtpReceiver

from mediation_rooms import aiortc_hooks
from mediation_rooms.forwarding import Publication, is_keyframe
from mediation_rooms.media_session import MediaConfig, RoomMedia
from mediation_rooms.recording import vp8_dimensions
from mediation_rooms.room import BASE_SEATS, SeatRole, SessionView, Side
from mediation_rooms.synthetic_peer import Clip, SyntheticPeer, synthetic_clip

MEDIATOR, APPLICANT, RESPONDENT = BASE_SEATS


@dataclass
class Room:
    media: RoomMedia
    peers: dict[SeatRole, SyntheticPeer]
    directory: Path
    #: What every participant sends; its codec must be the room's (``media.config``).
    clip: Clip = field(default_factory=synthetic_clip)

    async def join(self, seat: SeatRole) -> SyntheticPeer:
        offer = await self.media.connect(seat)
        peer = SyntheticPeer(self.clip, video_codec=self.clip.codec)
        answer = await peer.answer(offer.sdp, [dataclasses.asdict(t) for t in offer.tracks])
        await self.media.accept_answer(seat, answer)
        old = self.peers.get(seat)
        self.peers[seat] = peer
        if old is not None:
            await old.close()
        return peer

    def frames(self, subscriber: SeatRole, publisher: SeatRole, kind: str = "video") -> int:
        return self.peers[subscriber].received_from(publisher.value, kind).frames


async def until(condition: Callable[[], bool], *, wait_s: float = 10.0) -> None:
    """Wait for ``condition`` (polled); fail the test if it does not hold within ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def room(tmp_path: Path) -> AsyncIterator[Room]:
    media = RoomMedia("room-1", BASE_SEATS, MediaConfig(), tmp_path)
    room = Room(media, {}, tmp_path / "room-1")
    try:
        yield room
    finally:
        await media.close()
        for peer in room.peers.values():
            await peer.close()


def test_hooks_match_the_installed_aiortc() -> None:
    aiortc_hooks.check_compatible()


def test_a_stall_is_reported_once_while_keyframes_keep_being_asked_for() -> None:
    class NoTransport:
        state = "new"

    publication = Publication("applicant", "video", "VP8")
    # A receiver never started: it has heard from no source (so no PLI is actually sent) and
    # holds no packets (so nothing was lost).
    publication._receiver = RTCRtpReceiver("video", cast(RTCDtlsTransport, NoTransport()))
    publication.last_arrival = 100.0
    assert not publication.check_stall(100.5)
    assert publication.check_stall(101.5)  # a stall begins: reported
    assert not publication.check_stall(102.0) and not publication.check_stall(105.0)
    publication.last_arrival = 106.0  # frames came back, then stopped again
    assert publication.check_stall(107.5)


def test_keyframe_detection() -> None:
    clip = synthetic_clip()
    flags = [is_keyframe("VP8", data) for data, _ in clip.video]
    assert flags == [keyframe for _, keyframe in clip.video]
    assert flags[0] and not flags[1]
    assert vp8_dimensions(clip.video[0][0]) == (640, 480)
    assert vp8_dimensions(clip.video[1][0]) is None
    assert is_keyframe("H264", b"\x00\x00\x00\x01\x67\x42") and not is_keyframe(
        "H264", b"\x00\x00\x00\x01\x41\x9a"
    )


async def test_each_participant_receives_the_other_two_and_everything_is_recorded(
    room: Room,
) -> None:
    for seat in BASE_SEATS:
        await room.join(seat)
    room.media.start_recording(time.time())
    room.media.update_view(SessionView(admitted=set(BASE_SEATS)))
    await until(
        lambda: all(
            room.frames(s, p, kind) >= 60
            for s in BASE_SEATS
            for p in BASE_SEATS
            if s != p
            for kind in ("video", "audio")
        )
    )
    # The first forwarded video frame is a keyframe that a real decoder accepts.
    stream = room.peers[APPLICANT].received_from(MEDIATOR.value, "video")
    assert stream.sample_keyframe is not None
    decoder = av.CodecContext.create("vp8", "r")
    (picture,) = decoder.decode(av.Packet(stream.sample_keyframe))
    assert (picture.width, picture.height) == (640, 480)
    # Nobody receives themselves: the offer has no slot for it.
    assert room.peers[MEDIATOR].received_from(MEDIATOR.value, "video").frames == 0

    sent = {seat: room.peers[seat].video_track.sent for seat in BASE_SEATS}
    await room.media.close()
    # Frames sent before the close still land while it runs: the recording ends at the close.
    sent_by_close = {seat: room.peers[seat].video_track.sent for seat in BASE_SEATS}
    recording = room.media.recording
    assert recording is not None
    videos = {f.seat: f for f in recording.files if f.kind == "video"}
    audios = {f.seat: f for f in recording.files if f.kind == "audio"}
    assert set(videos) == set(audios) == {seat.value for seat in BASE_SEATS}
    for seat in BASE_SEATS:
        info = videos[seat.value]
        with av.open(str(info.path)) as container:
            packets = [p for p in container.demux(container.streams.video[0]) if p.size]
        with av.open(str(info.path)) as container:
            decoded = sum(1 for _ in container.decode(video=0))
        assert len(packets) == info.frames == decoded
        # Recording started with the room live, a few frames after the peer began sending.
        assert sent[seat] - 10 <= info.frames <= sent_by_close[seat]
        assert info.write_errors == 0
        duration_ms = (info.last_ms or 0) - (info.first_ms or 0)
        assert abs(duration_ms - (info.frames - 1) * 1000 / 30) < 100
        audio = audios[seat.value]
        audio_ms = (audio.last_ms or 0) - (audio.first_ms or 0)
        assert abs(audio.frames - 1 - audio_ms / 20) <= 3  # 20 ms Opus frames, no gaps
        # Audio and video of one person are on the same clock: they end together.
        assert abs((audio.last_ms or 0) - (info.last_ms or 0)) < 100
    timeline = (room.directory / "timeline.jsonl").read_text().splitlines()
    assert '"recording_started"' in timeline[0] and '"recording_closed"' in timeline[-1]


async def test_caucus_keeps_the_party_on_hold_out_of_both_directions(room: Room) -> None:
    for seat in BASE_SEATS:
        await room.join(seat)
    room.media.update_view(SessionView(admitted=set(BASE_SEATS)))
    await until(lambda: room.frames(RESPONDENT, MEDIATOR) > 10 < room.frames(MEDIATOR, RESPONDENT))

    room.media.update_view(SessionView(admitted=set(BASE_SEATS), caucus=Side.APPLICANT))
    await asyncio.sleep(0.3)  # frames already on the wire may still land
    on_hold_before = {
        (s, p, kind): room.frames(s, p, kind)
        for s, p in [
            (RESPONDENT, MEDIATOR),
            (RESPONDENT, APPLICANT),
            (MEDIATOR, RESPONDENT),
            (APPLICANT, RESPONDENT),
        ]
        for kind in ("video", "audio")
    }
    in_session_before = room.frames(APPLICANT, MEDIATOR)
    await asyncio.sleep(1.5)
    for (s, p, kind), count in on_hold_before.items():
        assert room.frames(s, p, kind) == count, f"{s} got {kind} from {p} during the caucus"
    assert room.frames(APPLICANT, MEDIATOR) >= in_session_before + 30

    room.media.update_view(SessionView(admitted=set(BASE_SEATS)))
    back = room.frames(RESPONDENT, MEDIATOR)
    await until(lambda: room.frames(RESPONDENT, MEDIATOR) > back + 15)


async def test_mute_stops_audio_only_and_admission_gates_everything(room: Room) -> None:
    for seat in BASE_SEATS:
        await room.join(seat)
    room.media.update_view(SessionView(admitted={MEDIATOR, APPLICANT}))
    await until(lambda: room.frames(APPLICANT, MEDIATOR, "audio") > 20)
    assert room.frames(RESPONDENT, MEDIATOR, "audio") == 0  # not admitted yet
    assert room.frames(MEDIATOR, RESPONDENT, "video") == 0

    room.media.update_view(SessionView(admitted=set(BASE_SEATS), muted={APPLICANT}))
    await asyncio.sleep(0.3)
    audio, video = room.frames(MEDIATOR, APPLICANT, "audio"), room.frames(MEDIATOR, APPLICANT)
    await asyncio.sleep(1.0)
    assert room.frames(MEDIATOR, APPLICANT, "audio") == audio
    assert room.frames(MEDIATOR, APPLICANT) >= video + 15


async def test_a_reconnecting_participant_continues_the_same_recording(room: Room) -> None:
    for seat in BASE_SEATS:
        await room.join(seat)
    room.media.start_recording(time.time())
    room.media.update_view(SessionView(admitted=set(BASE_SEATS)))
    await until(lambda: room.frames(MEDIATOR, APPLICANT) > 30)

    # The applicant's network drops: a new connection replaces the old one.
    old = room.peers[APPLICANT]
    await room.join(APPLICANT)
    assert old.pc.connectionState == "closed"
    before = room.frames(MEDIATOR, APPLICANT)
    await until(lambda: room.frames(MEDIATOR, APPLICANT) > before + 30)
    # ... and the others never stopped receiving each other.
    assert room.frames(RESPONDENT, MEDIATOR) > 30

    await room.media.close()
    recording = room.media.recording
    assert recording is not None
    applicant_video = [f for f in recording.files if f.seat == "applicant" and f.kind == "video"]
    assert len(applicant_video) == 1  # one file: the stream's clock carried on
    with av.open(str(applicant_video[0].path)) as container:
        pts = [p.pts for p in container.demux(video=0) if p.size]
    assert pts == sorted(pts) and len(pts) == applicant_video[0].frames


async def test_a_seat_opened_mid_session_renegotiates_every_connection_without_a_break(
    room: Room,
) -> None:
    interpreter = SeatRole.INTERPRETER
    everyone = (*BASE_SEATS, interpreter)
    for seat in (MEDIATOR, APPLICANT):
        await room.join(seat)
    # The respondent's first offer is still unanswered when the seat is opened.
    respondent_offer = await room.media.connect(RESPONDENT)
    room.media.start_recording(time.time())
    room.media.update_view(SessionView(admitted=set(BASE_SEATS)))
    await until(lambda: room.frames(MEDIATOR, APPLICANT) > 30 < room.frames(APPLICANT, MEDIATOR))
    for peer in room.peers.values():
        for stream in peer.received.values():
            stream.longest_gap_s = 0.0

    offers = await room.media.add_seat(interpreter)
    assert set(offers) == {MEDIATOR, APPLICANT}
    for seat, offer in offers.items():
        assert offer.renegotiation
        slots = [dataclasses.asdict(t) for t in offer.tracks]
        # The m-lines negotiated before carry what they did; the new seat's pair follows them.
        assert [(t["seat"], t["kind"], t["direction"]) for t in slots[-2:]] == [
            ("interpreter", "audio", "receive"),
            ("interpreter", "video", "receive"),
        ]
        peer = room.peers[seat]
        assert {t["mid"]: (t["seat"], t["kind"]) for t in slots[:-2]} == peer.tracks
        assert await room.media.accept_answer(seat, await peer.answer(offer.sdp, slots)) is None
    respondent = SyntheticPeer(synthetic_clip())
    room.peers[RESPONDENT] = respondent
    answer = await respondent.answer(
        respondent_offer.sdp, [dataclasses.asdict(t) for t in respondent_offer.tracks]
    )
    follow_up = await room.media.accept_answer(RESPONDENT, answer)
    assert follow_up is not None and follow_up.renegotiation
    assert "interpreter" in {t.seat for t in follow_up.tracks}
    slots = [dataclasses.asdict(t) for t in follow_up.tracks]
    assert (
        await room.media.accept_answer(RESPONDENT, await respondent.answer(follow_up.sdp, slots))
        is None
    )

    await room.join(interpreter)
    room.media.update_view(SessionView(admitted=set(everyone)))
    await until(
        lambda: all(
            room.frames(s, p, kind) >= 30
            for s in everyone
            for p in everyone
            if s != p
            for kind in ("video", "audio")
        ),
        wait_s=20,
    )
    # The two who were talking all along never lost each other while everyone renegotiated.
    for s, p in [(MEDIATOR, APPLICANT), (APPLICANT, MEDIATOR)]:
        for kind in ("video", "audio"):
            gap = room.peers[s].received_from(p.value, kind).longest_gap_s
            assert gap < 0.5, f"{s} lost {p}'s {kind} for {gap:.2f} s"

    await room.media.close()
    recording = room.media.recording
    assert recording is not None
    recorded = {(f.seat, f.kind) for f in recording.files if f.frames > 0}
    assert {("interpreter", "video"), ("interpreter", "audio")} <= recorded
