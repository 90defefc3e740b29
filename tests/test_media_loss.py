"""A video packet lost for good, with real aiortc peers: the stream restarts on a keyframe.

Same set-up as test_media_forwarding.py. :class:`LossyLink` stands between the server's DTLS
transport and its receiver of one publisher's video, as a lossy network would: it drops one
packet in the middle of a delta frame and then drops, or delays, the retransmissions of that
packet that the publisher sends (RTX, RFC 4588) when the server's receiver NACKs it.

Without ``aiortc_hooks.skip_past_loss`` the server's jitter buffer held everything behind the
lost packet, the keyframes the watchdog asked for included, until 512 more packets had come:
5.4 s here (the clip sends ~95 packets a second); then it dropped the broken frame and went on
with the delta frames after it, to every subscriber and into the recording, where PyAV's
decoder stopped at them ("Invalid data found when processing input").
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from itertools import pairwise
from pathlib import Path
from typing import cast

import av
import pytest
from aiortc import RTCDtlsTransport, RTCRtpReceiver
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtp import RtpPacket

from mediation_rooms import aiortc_hooks
from mediation_rooms.aiortc_hooks import LossSkip
from mediation_rooms.forwarding import STALL_AFTER_S, ForwardedFrame, Publication, is_keyframe
from mediation_rooms.media_session import WATCHDOG_INTERVAL_S, MediaConfig, RoomMedia
from mediation_rooms.room import BASE_SEATS, SeatRole
from mediation_rooms.synthetic_peer import VIDEO_FPS, synthetic_clip
from tests import test_media_forwarding
from tests.test_media_feedback import all_flowing
from tests.test_media_forwarding import Room, until

MEDIATOR, APPLICANT, RESPONDENT = BASE_SEATS
room = test_media_forwarding.room

#: How long subscribers may go without the publisher's video after the loss: the watchdog
#: notices the stall up to a round late, and finds the keyframe it asked for a round after
#: that, plus a second for a loaded machine. Far below the 5.4 s without the skip.
RECOVERY_BOUND_S = STALL_AFTER_S + 2 * WATCHDOG_INTERVAL_S + 1.0
#: A retransmission this late is still in time: it comes well before the stream counts as
#: stalled.
LATE_S = 0.4 * STALL_AFTER_S
#: The clip's frames are 1/30 s apart on the 90 kHz RTP clock.
FRAME_STEP = 90_000 // VIDEO_FPS

PacketHandler = Callable[..., Awaitable[None]]


@dataclasses.dataclass
class LossyLink:
    """Loses the second packet of the next delta frame that follows a keyframe in one
    publisher's video on its way into the server, and its retransmissions: dropped
    (``retransmit_after_s`` None) or delivered that much later. Right after a keyframe, so that
    the clip's next one is an interval away."""

    handle: PacketHandler
    media_ssrc: int
    rtx_ssrc: int
    retransmit_after_s: float | None
    lost: int | None = None  # its sequence number
    lost_at: float | None = None
    retransmitted_at: float | None = None
    _timestamp: int = -1  # of the frame the last packet belonged to
    _packets_in_frame: int = 0
    _after_keyframe: bool = False  # the frame before it was a keyframe
    _keyframe: bool = False
    _late: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)

    @classmethod
    def install(cls, room: Room, seat: SeatRole, retransmit_after_s: float | None) -> LossyLink:
        receiver = room.media.connections[seat].incoming["video"].receiver
        peer = room.peers[seat]
        (sender,) = (
            t.sender for t in peer.pc.getTransceivers() if t.sender.track is peer.video_track
        )
        link = cls(receiver._handle_rtp_packet, sender._ssrc, sender._rtx_ssrc, retransmit_after_s)
        receiver._handle_rtp_packet = link._filter  # type: ignore[method-assign]
        return link

    async def _filter(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        if packet.ssrc == self.media_ssrc:
            if self._lose(packet):
                self.lost, self.lost_at = packet.sequence_number, time.monotonic()
                return
        elif packet.ssrc == self.rtx_ssrc and packet.payload[:2] == self._lost_bytes():
            if self.retransmit_after_s is None:
                return
            task = asyncio.ensure_future(self._deliver_late(packet, arrival_time_ms))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            return
        await self.handle(packet, arrival_time_ms=arrival_time_ms)

    def _lose(self, packet: RtpPacket) -> bool:
        if packet.timestamp != self._timestamp:
            _, data = VpxPayloadDescriptor.parse(packet.payload)
            self._timestamp, self._packets_in_frame = packet.timestamp, 0
            self._after_keyframe, self._keyframe = self._keyframe, is_keyframe("VP8", data)
        self._packets_in_frame += 1
        lose = self._after_keyframe and not self._keyframe and self._packets_in_frame == 2
        return self.lost is None and lose

    def _lost_bytes(self) -> bytes | None:
        return None if self.lost is None else self.lost.to_bytes(2, "big")

    async def _deliver_late(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        assert self.retransmit_after_s is not None
        await asyncio.sleep(self.retransmit_after_s)
        self.retransmitted_at = time.monotonic()
        delay_ms = int(self.retransmit_after_s * 1000)
        await self.handle(packet, arrival_time_ms=arrival_time_ms + delay_ms)


@dataclasses.dataclass
class FrameLog:
    """A publication's sink that keeps every frame it is given."""

    frames: list[ForwardedFrame] = dataclasses.field(default_factory=list)

    def write(self, frame: ForwardedFrame) -> None:
        self.frames.append(frame)


@pytest.fixture(
    params=[
        # The next keyframe comes before the stall is noticed: the first look skips to it.
        functools.partial(synthetic_clip),
        # Keyframes only when asked for, as a browser sends them: the first look finds none,
        # the watchdog's request brings one, the next look skips to it.
        functools.partial(synthetic_clip, seconds=4, keyframe_interval=4 * VIDEO_FPS),
    ],
    ids=["keyframe-every-second", "keyframes-on-request"],
)
async def any_room(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Room]:
    """A room like ``room``, whose participants send the clip of ``request.param``."""
    media = RoomMedia("room-1", BASE_SEATS, MediaConfig(), tmp_path)
    room = Room(media, {}, tmp_path / "room-1", request.param())
    try:
        yield room
    finally:
        await media.close()
        for peer in room.peers.values():
            await peer.close()


async def test_video_stalled_by_a_lost_packet_restarts_on_a_keyframe_for_all_and_the_recording(
    any_room: Room,
) -> None:
    room = any_room
    await all_flowing(room)
    recording = room.media.start_recording(time.time())
    (recorded,) = (f for f in recording.files if (f.seat, f.kind) == (APPLICANT.value, "video"))
    await until(lambda: recorded.frames > 30)
    publication = room.media.publications[(APPLICANT, "video")]
    subscribers = (MEDIATOR, RESPONDENT)
    streams = [room.peers[s].received_from(APPLICANT.value, "video") for s in subscribers]
    for stream in streams:
        stream.longest_gap_s = 0.0
        assert (stream.skips, stream.skips_onto_delta) == (0, 0)

    link = LossyLink.install(room, APPLICANT, retransmit_after_s=None)
    await until(lambda: link.lost is not None)
    # The stream stalls, then comes back without the frames that could not be completed.
    await until(lambda: all(stream.skips for stream in streams), wait_s=15)
    for seat, stream in zip(subscribers, streams, strict=True):
        gap = stream.longest_gap_s
        assert gap < RECOVERY_BOUND_S, f"{seat} had no video from the applicant for {gap:.2f} s"
        # Frames were skipped, once, and the stream went on with a keyframe.
        assert (stream.skips, stream.skips_onto_delta) == (1, 0), seat
    assert publication.loss_skips == 1
    received = room.frames(MEDIATOR, APPLICANT)
    await until(lambda: room.frames(MEDIATOR, APPLICANT) > received + 30)
    await room.media.close()

    with av.open(str(recorded.path)) as container:
        packets = [
            (p.pts, bytes(p)) for p in container.demux(video=0) if p.size and p.pts is not None
        ]
    with av.open(str(recorded.path)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == len(packets) == recorded.frames and recorded.write_errors == 0
    # No recorded frame references one that is missing: each is the clip's next frame after
    # the one recorded before it, or a keyframe (the publisher jumps to one when asked).
    clip = room.clip.video
    position = {data: index for index, (data, _) in enumerate(clip)}
    for (_, before), (_, after) in pairwise(packets):
        assert position[after] == (position[before] + 1) % len(clip) or clip[position[after]][1]
    # The hole is one break in the file, from the frame that lost a packet to the first
    # keyframe after it; no other frame is missing.
    steps = [b - a for (a, _), (b, _) in pairwise(packets)]
    (hole_ms,) = (step for step in steps if step > 1.5 * 1000 / VIDEO_FPS)
    assert hole_ms < RECOVERY_BOUND_S * 1000
    span_ms = packets[-1][0] - packets[0][0]
    assert abs((span_ms - hole_ms) * VIDEO_FPS / 1000 - (len(packets) - 2)) < 5


async def test_a_retransmission_that_comes_late_but_in_time_is_used_and_nothing_skipped(
    room: Room,
) -> None:
    await all_flowing(room)
    publication = room.media.publications[(APPLICANT, "video")]
    log = FrameLog()
    publication.sink = log

    link = LossyLink.install(room, APPLICANT, retransmit_after_s=LATE_S)
    await until(lambda: link.lost is not None)
    # A keyframe comes, whole, while the hole waits for its retransmission: it is no reason to
    # give up on the frames before it.
    room.peers[APPLICANT].video_track.request_keyframe()
    await until(lambda: link.retransmitted_at is not None)
    retransmitted_at = link.retransmitted_at
    assert retransmitted_at is not None
    # Give the watchdog every chance to (wrongly) skip.
    await asyncio.sleep(STALL_AFTER_S + 2 * WATCHDOG_INTERVAL_S)

    assert publication.loss_skips == 0 and publication.frames_discarded == 0
    # The stream waited for the retransmission, then every frame went out, none skipped.
    assert {b.pts - a.pts for a, b in pairwise(log.frames)} == {FRAME_STEP}
    assert any(frame.keyframe and frame.arrival > retransmitted_at for frame in log.frames)
    held = max(b.arrival - a.arrival for a, b in pairwise(log.frames))
    assert LATE_S * 0.75 < held < STALL_AFTER_S


# -- the rules, without a network --------------------------------------------------------------


class NoTransport:
    """Enough of a transport to construct a receiver that is never started."""

    state = "new"


def video_receiver() -> RTCRtpReceiver:
    return RTCRtpReceiver("video", cast(RTCDtlsTransport, NoTransport()))


def buffer_packets(receiver: RTCRtpReceiver, *packets: tuple[int, int, bytes]) -> list[JitterFrame]:
    """Feed ``(sequence number, timestamp, depayloaded data)`` packets to the receiver's jitter
    buffer as ``RTCRtpReceiver._handle_rtp_packet`` does; returns the frames it released."""
    buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    released = []
    for sequence_number, timestamp, data in packets:
        packet = RtpPacket(sequence_number=sequence_number, timestamp=timestamp)
        packet._data = data  # type: ignore[attr-defined]
        frame = buffer.add(packet)[1]
        if frame is not None:
            released.append(frame)
    return released


def keyframe(data: bytes) -> bool:
    return data.startswith(b"K")


def test_a_skip_lands_on_the_first_keyframe_known_to_be_whole() -> None:
    receiver = video_receiver()
    assert buffer_packets(receiver, (100, 0, b"a"), (101, 0, b"b")) == []
    assert aiortc_hooks.skip_past_loss(receiver, keyframe) is LossSkip.NOTHING_LOST
    # 102 is lost. 103 looks like a keyframe, but where its frame starts is unknown; the
    # keyframe at 9000 has not ended yet (no packet of the next frame).
    buffer_packets(receiver, (103, 3000, b"K?"), (104, 6000, b"d"), (105, 9000, b"K1"))
    assert aiortc_hooks.skip_past_loss(receiver, keyframe) is LossSkip.AWAITING_KEYFRAME
    # Two whole keyframes after the loss: the first is taken, and all that follows it.
    buffer_packets(receiver, (106, 12000, b"d"), (107, 15000, b"K2"), (108, 15000, b"k"))
    buffer_packets(receiver, (109, 18000, b"e"))
    assert aiortc_hooks.skip_past_loss(receiver, keyframe) is LossSkip.SKIPPED
    released = buffer_packets(
        receiver, (110, 21000, b"f"), (102, 0, b"late"), (111, 24000, b"g"), (112, 27000, b"h")
    )
    assert [(f.data, f.timestamp) for f in released] == [
        (b"K1", 9000),
        (b"d", 12000),
        (b"K2k", 15000),
    ]
    assert aiortc_hooks.skip_past_loss(receiver, keyframe) is LossSkip.NOTHING_LOST


def test_after_a_loss_nothing_but_a_keyframe_goes_out() -> None:
    """Also when aiortc's own overflow, not a skip, ends the stall: it carries on with the
    delta frames after the hole."""
    receiver = video_receiver()
    publication = Publication("applicant", "video", "VP8")
    publication._receiver = receiver
    log = FrameLog()
    publication.sink = log
    buffer_packets(receiver, (1, 0, b"\x01"), (3, 3000, b"\x01"))  # 2 is lost; no keyframe yet
    publication.last_arrival = time.monotonic() - STALL_AFTER_S
    assert publication.check_stall(time.monotonic())
    assert publication.loss_skips == 0

    delta, key = b"\x01delta", b"\x00key"  # VP8: bit 0 of the frame tag clear on a keyframe
    for timestamp, data in ((6000, delta), (9000, key), (12000, delta)):
        publication._on_encoded_frame(JitterFrame(data, timestamp))
    assert [frame.data for frame in log.frames] == [key, delta]
    assert publication.frames_discarded == 1
