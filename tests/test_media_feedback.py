"""The media plane's feedback loops with real aiortc peers: keyframe requests, the stall
watchdog and the bitrate cap.

Same set-up as test_media_forwarding.py (synthetic participants, real DTLS/SRTP on loopback,
in-process signalling). What reaches a publisher is observed at the publisher's own peer: its
replay track counts the PLIs and FIRs its ``RTCRtpSender`` hands on, and its video sender's RTCP
handler is wrapped to see the REMBs it gets. These tests are also the proof that the hooks in
``mediation_rooms/aiortc_hooks.py`` still catch what aiortc does: they fail if a hook stops
firing, not only if a name it uses disappears.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiortc
import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc import sdp as aiortc_sdp
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_FIR, RtcpPsfbPacket, RtpPacket, unpack_remb_fci

from config.settings import Settings
from jiefen.app import create_app
from jiefen.errors import ConfigurationError
from mediation_rooms import aiortc_hooks
from mediation_rooms.forwarding import KEYFRAME_REQUEST_GAP_S, STALL_AFTER_S
from mediation_rooms.media_session import WATCHDOG_INTERVAL_S, MediaConfig, RoomMedia
from mediation_rooms.room import BASE_SEATS, SeatRole, SessionView
from mediation_rooms.synthetic_peer import SyntheticPeer
from tests import test_media_forwarding
from tests.test_media_forwarding import Room, until

MEDIATOR, APPLICANT, RESPONDENT = BASE_SEATS
#: The three-seat room of test_media_forwarding.py, default MediaConfig (pytest finds fixtures
#: among a module's names).
room = test_media_forwarding.room


def receiving_transceiver(peer: SyntheticPeer, seat: SeatRole) -> RTCRtpTransceiver:
    """The transceiver on which ``peer`` receives ``seat``'s video."""
    (mid,) = (m for m, (s, kind) in peer.tracks.items() if (s, kind) == (seat.value, "video"))
    (transceiver,) = (t for t in peer.pc.getTransceivers() if t.mid == mid)
    return transceiver


def announced_ssrc(peer: SyntheticPeer, transceiver: RTCRtpTransceiver) -> int:
    """The media SSRC the server announced for ``transceiver``'s m-line (its first a=ssrc; the
    RTX one comes second), as a browser would address feedback about that stream."""
    description = aiortc_sdp.SessionDescription.parse(peer.pc.remoteDescription.sdp)
    (media,) = (m for m in description.media if m.rtp.muxId == transceiver.mid)
    return media.ssrc[0].ssrc


async def send_pli(peer: SyntheticPeer, seat: SeatRole) -> None:
    """``peer`` reports picture loss on the stream of ``seat``'s video it receives."""
    transceiver = receiving_transceiver(peer, seat)
    await aiortc_hooks.send_picture_loss(transceiver.receiver, announced_ssrc(peer, transceiver))


async def send_fir(peer: SyntheticPeer, seat: SeatRole, sequence_number: int) -> None:
    """``peer`` sends a Full Intra Request for ``seat``'s video as RFC 5104 4.3.1 lays it out:
    the media source SSRC is 0 and the stream asked for is named in the FCI entry (SSRC,
    sequence number, 24 reserved bits). aiortc has no API for sending one."""
    transceiver = receiving_transceiver(peer, seat)
    target = announced_ssrc(peer, transceiver)
    packet = RtcpPsfbPacket(
        fmt=RTCP_PSFB_FIR,
        ssrc=transceiver.sender._ssrc,
        media_ssrc=0,
        fci=struct.pack("!LB3x", target, sequence_number),
    )
    await transceiver.receiver._send_rtcp(packet)


def keyframe_requests(room: Room, seat: SeatRole) -> int:
    """How many keyframe requests ``seat``'s peer has received for its video."""
    return room.peers[seat].video_track.keyframe_requests


async def quiet(room: Room) -> dict[SeatRole, int]:
    """Wait until no request has reached any publisher for longer than the rate limit's gap, so
    the next one the server gets is forwarded (the start of a session asks for keyframes);
    returns each seat's count then."""
    while True:
        before = {seat: keyframe_requests(room, seat) for seat in room.peers}
        await asyncio.sleep(KEYFRAME_REQUEST_GAP_S * 1.5)
        if before == {seat: keyframe_requests(room, seat) for seat in room.peers}:
            return before


async def all_flowing(room: Room) -> None:
    for seat in BASE_SEATS:
        await room.join(seat)
    room.media.update_view(SessionView(admitted=set(BASE_SEATS)))
    await until(
        lambda: all(
            room.peers[s].received_from(p.value, "video").keyframes >= 1 and room.frames(s, p) >= 15
            for s in BASE_SEATS
            for p in BASE_SEATS
            if s != p
        )
    )


async def test_a_subscribers_pli_and_fir_reach_the_publisher(room: Room) -> None:
    await all_flowing(room)
    before = await quiet(room)
    await send_pli(room.peers[MEDIATOR], APPLICANT)
    await until(lambda: keyframe_requests(room, APPLICANT) > before[APPLICANT], wait_s=5)

    await asyncio.sleep(KEYFRAME_REQUEST_GAP_S * 1.5)
    between = keyframe_requests(room, APPLICANT)
    await send_fir(room.peers[RESPONDENT], APPLICANT, sequence_number=1)
    await until(lambda: keyframe_requests(room, APPLICANT) > between, wait_s=5)

    # Only the publisher asked for was asked.
    for seat in (MEDIATOR, RESPONDENT):
        assert keyframe_requests(room, seat) == before[seat], seat


async def test_a_burst_of_keyframe_requests_reaches_the_publisher_rate_limited(
    room: Room,
) -> None:
    await all_flowing(room)
    before = (await quiet(room))[APPLICANT]
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 4 * KEYFRAME_REQUEST_GAP_S:
        subscriber = (MEDIATOR, RESPONDENT)[sent % 2]
        if sent % 3 == 0:
            await send_fir(room.peers[subscriber], APPLICANT, sequence_number=sent % 256)
        else:
            await send_pli(room.peers[subscriber], APPLICANT)
        sent += 1
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - started
    await asyncio.sleep(KEYFRAME_REQUEST_GAP_S)  # let the last forwarded one land

    reached = keyframe_requests(room, APPLICANT) - before
    assert sent >= 20
    # One per gap, counting from the first: never more, and the limit is not a lockout.
    assert 2 <= reached <= math.floor(elapsed / KEYFRAME_REQUEST_GAP_S) + 1, (sent, reached)


async def test_the_watchdog_asks_a_stalled_publisher_for_a_keyframe_and_reports_it_once(
    room: Room,
) -> None:
    await all_flowing(room)
    room.media.start_recording(time.time())
    before = (await quiet(room))[APPLICANT]
    frozen = room.peers[APPLICANT].video_track
    frozen.pause()
    await asyncio.sleep(STALL_AFTER_S / 2)
    assert keyframe_requests(room, APPLICANT) == before, "asked before the stream stalled"
    await until(
        lambda: keyframe_requests(room, APPLICANT) > before,
        wait_s=STALL_AFTER_S + WATCHDOG_INTERVAL_S + 5,
    )
    # Still stalled: asked again (rate-limited), without reporting the stall again.
    await until(lambda: keyframe_requests(room, APPLICANT) >= before + 3, wait_s=10)

    frozen.resume()
    received = room.frames(MEDIATOR, APPLICANT)
    await until(lambda: room.frames(MEDIATOR, APPLICANT) > received + 15)
    await room.media.close()

    lines = (room.directory / "timeline.jsonl").read_text().splitlines()
    timeline = [json.loads(line) for line in lines]
    stalls = [event for event in timeline if event["event"] == "stream_stalled"]
    assert [event["seat"] for event in stalls] == [APPLICANT.value]


@dataclasses.dataclass
class RembLog:
    """The bitrates of the REMB packets that reached one sender."""

    bitrates: list[int] = dataclasses.field(default_factory=list)


def watch_remb(sender: RTCRtpSender) -> RembLog:
    """Record every REMB aiortc routes to ``sender`` (its SSRC is in the FCI) before the
    sender handles it as usual."""
    log = RembLog()
    handle = sender._handle_rtcp_packet

    async def watching(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            log.bitrates.append(unpack_remb_fci(packet.fci)[0])
        await handle(packet)

    sender._handle_rtcp_packet = watching  # type: ignore[method-assign]
    return log


#: Far below the clip's ~800 kbit/s, so that the REMB aiortc would send on its own (about what
#: arrives, and rising) is above it.
CAP_BPS = 200_000


@pytest.fixture
async def capped_room(tmp_path: Path) -> AsyncIterator[Room]:
    """A room like ``room`` whose video bitrate cap is ``CAP_BPS``."""
    config = MediaConfig(video_bitrate_cap_bps=CAP_BPS)
    media = RoomMedia("room-capped", BASE_SEATS, config, tmp_path)
    room = Room(media, {}, tmp_path / "room-capped")
    try:
        yield room
    finally:
        await media.close()
        for peer in room.peers.values():
            await peer.close()


async def test_the_remb_a_publisher_gets_never_exceeds_the_cap(capped_room: Room) -> None:
    peer = await capped_room.join(APPLICANT)
    (sender,) = (t.sender for t in peer.pc.getTransceivers() if t.sender.track is peer.video_track)
    remb = watch_remb(sender)

    # aiortc's estimator reports once it has ~3 s of arrivals, then every 0.5 s or so.
    await until(lambda: len(remb.bitrates) >= 3, wait_s=20)
    assert all(bitrate <= CAP_BPS for bitrate in remb.bitrates), remb.bitrates
    # The estimate was above the cap (the clip sends ~800 kbit/s): the clamp did the capping.
    assert max(remb.bitrates) == CAP_BPS, remb.bitrates


# -- the hooks' view of aiortc --------------------------------------------------------------


def _without(cls: type, attribute: str) -> Callable[[pytest.MonkeyPatch], None]:
    def breaking(monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delattr(cls, attribute)

    return breaking


def _instances_without(
    attribute: str, cls: type[Any] = RTCRtpReceiver
) -> Callable[[pytest.MonkeyPatch], None]:
    """A release whose ``cls`` no longer sets ``attribute`` in ``__init__``."""

    def breaking(monkeypatch: pytest.MonkeyPatch) -> None:
        init = cls.__init__

        def moved(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            delattr(self, attribute)

        monkeypatch.setattr(cls, "__init__", moved)

    return breaking


def _releasing_each_packet_as_a_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """A release whose jitter buffer hands out each packet as a frame of its own, as soon as
    it arrives (the names are all there; what they do is not what the skip relies on)."""

    def add(self: JitterBuffer, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        return False, JitterFrame(packet._data, packet.timestamp)  # type: ignore[attr-defined]

    monkeypatch.setattr(JitterBuffer, "add", add)


@pytest.mark.parametrize(
    "upgrade",
    [
        _without(RTCRtpSender, "_send_keyframe"),
        _without(RTCRtpReceiver, "_send_rtcp_pli"),
        _instances_without("_RTCRtpReceiver__decoder_queue"),
        _instances_without("_RTCRtpReceiver__decoder_thread"),
        _instances_without("_RTCRtpReceiver__remote_bitrate_estimator"),
        _instances_without("_RTCRtpReceiver__jitter_buffer"),
        _instances_without("_origin", JitterBuffer),
        _instances_without("_packets", JitterBuffer),
        _without(JitterBuffer, "remove"),
        _releasing_each_packet_as_a_frame,
    ],
    ids=[
        "sender-keyframe",
        "receiver-pli",
        "decoder-queue",
        "decoder-thread",
        "estimator",
        "jitter-buffer",
        "buffer-origin",
        "buffer-packets",
        "buffer-remove",
        "buffer-behaviour",
    ],
)
def test_check_compatible_fails_when_a_hooked_internal_moves(
    upgrade: Callable[[pytest.MonkeyPatch], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    aiortc_hooks.check_compatible()
    upgrade(monkeypatch)
    with pytest.raises(aiortc_hooks.HookError):
        aiortc_hooks.check_compatible()


@pytest.mark.parametrize("role", ["all", "media", "web"])
def test_only_a_process_that_hosts_rooms_refuses_an_aiortc_its_hooks_do_not_fit(
    role: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A media process checks the hooks when it starts, not when its first room goes live."""
    settings = Settings(data_dir=tmp_path, role=role, public_url="http://127.0.0.1:1")
    create_app(settings)  # the pinned aiortc: every role starts
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    if settings.hosts_rooms:
        with pytest.raises(ConfigurationError, match=r"cannot host video rooms: aiortc 1\.17\.0"):
            create_app(settings)
    else:
        create_app(settings)
