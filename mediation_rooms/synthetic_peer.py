"""A participant made of code: an aiortc peer that sends pre-encoded media and counts what it gets.

Used by the tests and by ``jiefen bench rooms``. Sending is cheap: a short VP8 (or H.264) clip
and an Opus clip are encoded once (:func:`synthetic_clip`) and replayed at real time as
packets, which aiortc packs without encoding. Receiving is cheap too: frames are counted as they are
re-assembled (the same receiver tap the server uses), and only kept for decoding on request.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from mediation_rooms import aiortc_hooks
from mediation_rooms.forwarding import is_keyframe

VIDEO_FPS = 30
AUDIO_FRAME_S = 0.02


@dataclass(frozen=True)
class Clip:
    """Encoded frames to replay in a loop: (bytes, is_keyframe) for video, bytes for audio."""

    width: int
    height: int
    video: tuple[tuple[bytes, bool], ...]
    audio: tuple[bytes, ...]
    #: The video codec, as a room names it: ``VP8`` or ``H264`` (Annex B access units).
    codec: str = "VP8"

    @property
    def video_bitrate_bps(self) -> float:
        return sum(len(data) for data, _ in self.video) * 8 * VIDEO_FPS / len(self.video)


@functools.cache
def synthetic_clip(
    width: int = 640,
    height: int = 480,
    seconds: int = 2,
    bitrate_bps: int = 800_000,
    codec: str = "VP8",
    keyframe_interval: int = VIDEO_FPS,
) -> Clip:
    """A moving-noise clip with a keyframe every ``keyframe_interval`` frames (a second), and a
    1 s Opus tone.

    ``codec`` ``VP8`` or ``H264``: H.264 is constrained baseline, as aiortc offers it
    (profile-level-id 42e01f, packetization-mode 1), one Annex B access unit a frame with the
    SPS and PPS in band before every IDR, as a browser sends it.
    """
    encoder: Any
    if codec == "H264":
        encoder = av.CodecContext.create("libx264", "w")
        encoder.profile = "Baseline"  # libx264 marks it constrained (constraint_set1)
        # No global header (the parameter sets stay in band); zerolatency: no B-frames, no
        # lookahead, a packet out for every frame in; one thread, so the same clip everywhere;
        # no scene-cut keyframes, so a keyframe exactly every ``keyframe_interval`` frames.
        encoder.options = {
            "preset": "veryfast",
            "tune": "zerolatency",
            "threads": "1",
            "x264-params": "scenecut=0",
        }
        encoder.framerate = fractions.Fraction(VIDEO_FPS, 1)  # its rate control's frame rate
    elif codec == "VP8":
        encoder = av.CodecContext.create("libvpx", "w")
        encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    else:
        raise ValueError(f"no synthetic clip in {codec}")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = fractions.Fraction(1, VIDEO_FPS)
    encoder.bit_rate = bitrate_bps
    encoder.gop_size = keyframe_interval
    # A gradient that scrolls, with a patch of noise that moves across it: enough detail and
    # motion for a realistic bitrate, unlike a flat colour (tiny frames) or full noise (huge).
    rng = random.Random(1)
    gradient = bytes((x + y) % 256 for y in range(height) for x in range(width))
    patch_size = 96
    patches = [bytes(rng.getrandbits(8) for _ in range(patch_size * patch_size)) for _ in range(4)]
    chroma = bytes([128]) * (width * height // 4)
    video: list[tuple[bytes, bool]] = []
    for index in range(seconds * VIDEO_FPS):
        frame = av.VideoFrame(width, height, "yuv420p")
        shift = (index * 4 * width) % (width * height)
        luma = bytearray(gradient[shift:] + gradient[:shift])
        left = (index * 9) % (width - patch_size)
        patch = patches[index % len(patches)]
        for row in range(patch_size):
            start = (height // 3 + row) * width + left
            luma[start : start + patch_size] = patch[row * patch_size : (row + 1) * patch_size]
        frame.planes[0].update(bytes(luma))
        frame.planes[1].update(chroma)
        frame.planes[2].update(chroma)
        frame.pts = index
        video.extend((bytes(packet), packet.is_keyframe) for packet in encoder.encode(frame))
    video.extend((bytes(packet), packet.is_keyframe) for packet in encoder.encode(None))
    audio_encoder = av.CodecContext.create("libopus", "w")
    audio_encoder.sample_rate = 48_000
    audio_encoder.layout = "stereo"
    audio_encoder.format = "s16"
    audio: list[bytes] = []
    samples = int(48_000 * AUDIO_FRAME_S)
    for index in range(int(1 / AUDIO_FRAME_S)):
        tone = bytearray()
        for sample in range(samples):
            value = int(math.sin((index * samples + sample) * 2 * math.pi * 440 / 48_000) * 6000)
            tone += value.to_bytes(2, "little", signed=True) * 2
        audio_frame = av.AudioFrame(format="s16", layout="stereo", samples=samples)
        audio_frame.planes[0].update(bytes(tone))
        audio_frame.sample_rate = 48_000
        audio_frame.pts = index * samples
        audio.extend(bytes(packet) for packet in audio_encoder.encode(audio_frame))
    return Clip(width, height, tuple(video), tuple(audio), codec)


class ReplayTrack(MediaStreamTrack):
    """Replays a clip's packets at real time, as ``av.Packet`` s (aiortc packs them)."""

    def __init__(self, kind: str, clip: Clip) -> None:
        super().__init__()
        self.kind = kind
        self._clip = clip
        self._interval = 1 / VIDEO_FPS if kind == "video" else AUDIO_FRAME_S
        self._step = 90_000 // VIDEO_FPS if kind == "video" else int(48_000 * AUDIO_FRAME_S)
        self._time_base = fractions.Fraction(1, 90_000 if kind == "video" else 48_000)
        self._start: float | None = None
        self._jump_to_keyframe = False
        self._position = 0
        self._running = asyncio.Event()
        self._running.set()
        self.sent = 0
        #: PLIs and FIRs that reached this track's sender, counted one by one.
        self.keyframe_requests = 0

    def request_keyframe(self) -> None:
        """A PLI arrived: the next frame sent is the clip's next keyframe (valid: it resets)."""
        self.keyframe_requests += 1
        self._jump_to_keyframe = self.kind == "video"

    def pause(self) -> None:
        """Send nothing until :meth:`resume`, as a frozen camera would; the connection stays up."""
        self._running.clear()

    def resume(self) -> None:
        """Send again, at real time from now on (the frames the pause skipped are not sent)."""
        self._running.set()

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._running.is_set():
            await self._running.wait()
            self._start = time.monotonic() - self.sent * self._interval
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.sent * self._interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.kind == "video":
            frames = self._clip.video
            if self._jump_to_keyframe:
                self._jump_to_keyframe = False
                while not frames[self._position % len(frames)][1]:
                    self._position += 1
            data, _ = frames[self._position % len(frames)]
        else:
            data = self._clip.audio[self._position % len(self._clip.audio)]
        self._position += 1
        packet = av.Packet(data)
        packet.pts = self.sent * self._step
        packet.time_base = self._time_base
        self.sent += 1
        return packet


@dataclass
class ReceivedStream:
    """What a synthetic peer received on one m-line."""

    frames: int = 0
    keyframes: int = 0
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    #: The longest time between two frames (seconds): a break in the stream shows here.
    longest_gap_s: float = 0.0
    #: Video: how often frames went missing (the RTP timestamp leapt over one frame at the
    #: clip's rate, or more), and how often a delta frame came next, which a decoder cannot use.
    skips: int = 0
    skips_onto_delta: int = 0
    last_timestamp: int | None = None
    sample_keyframe: bytes | None = None


@dataclass
class SyntheticPeer:
    """One participant: answers the server's offer, sends the clip, counts what arrives."""

    clip: Clip
    video_codec: str = "VP8"
    pc: RTCPeerConnection = field(init=False)
    received: dict[str, ReceivedStream] = field(default_factory=lambda: defaultdict(ReceivedStream))
    tracks: dict[str, tuple[str, str]] = field(default_factory=dict)  # mid -> (seat, kind)
    video_track: ReplayTrack = field(init=False)
    audio_track: ReplayTrack = field(init=False)
    created_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.video_track = ReplayTrack("video", self.clip)
        self.audio_track = ReplayTrack("audio", self.clip)

        @self.pc.on("track")
        def on_track(track: Any) -> None:
            for transceiver in self.pc.getTransceivers():
                if transceiver.receiver.track is track:
                    self._tap(transceiver.mid or "", transceiver.receiver)

    def _tap(self, mid: str, receiver: RTCRtpReceiver) -> None:
        stream = self.received[mid]

        def count(frame: JitterFrame) -> None:
            now = time.monotonic()
            seat_kind = self.tracks.get(mid)
            is_video = seat_kind is not None and seat_kind[1] == "video"
            keyframe = is_video and is_keyframe(self.video_codec, frame.data)
            stream.frames += 1
            if stream.first_frame_at is None:
                stream.first_frame_at = now
            if stream.last_frame_at is not None:
                stream.longest_gap_s = max(stream.longest_gap_s, now - stream.last_frame_at)
            stream.last_frame_at = now
            if is_video and stream.last_timestamp is not None:
                step = (frame.timestamp - stream.last_timestamp) % 2**32
                if step > 90_000 * 3 // (2 * VIDEO_FPS):
                    stream.skips += 1
                    if not keyframe:
                        stream.skips_onto_delta += 1
            stream.last_timestamp = frame.timestamp
            if keyframe:
                stream.keyframes += 1
                if stream.sample_keyframe is None:
                    stream.sample_keyframe = frame.data

        aiortc_hooks.tap_receiver(receiver, count)

    async def answer(self, offer_sdp: str, tracks: list[dict[str, str]]) -> str:
        """Accept the server's offer (``tracks`` maps its mids) and return the answer SDP.

        A later offer (the server added a seat) is answered on the same peer connection, as a
        browser does: the m-lines negotiated before keep what they carry, new ones receive.
        """
        self.tracks = {slot["mid"]: (slot["seat"], slot["kind"]) for slot in tracks}
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        own = {slot["kind"]: slot["mid"] for slot in tracks if slot["direction"] == "send"}
        for transceiver in self.pc.getTransceivers():
            if transceiver.mid == own.get(transceiver.kind):
                track = self.video_track if transceiver.kind == "video" else self.audio_track
                if transceiver.sender.track is not track:
                    transceiver.sender.replaceTrack(track)
                    transceiver.direction = "sendonly"
                    aiortc_hooks.on_keyframe_request(transceiver.sender, track.request_keyframe)
            else:
                transceiver.direction = "recvonly"
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    def received_from(self, seat: str, kind: str) -> ReceivedStream:
        for mid, (slot_seat, slot_kind) in self.tracks.items():
            if slot_seat == seat and slot_kind == kind:
                return self.received[mid]
        return ReceivedStream()

    async def close(self) -> None:
        await self.pc.close()
