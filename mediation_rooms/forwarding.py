"""Packet forwarding: one publisher's encoded frames to each permitted subscriber, undecoded.

A :class:`Publication` is one seat's audio or video in a room. It outlives the seat's peer
connections: when the participant reconnects, the new receiver is attached to the same
publication, whose timestamps carry on from where the last connection stopped, so subscribers
and the recording see one continuous stream.

Each (subscriber, publication) pair is a :class:`Subscription`, whose :class:`SubscriptionTrack`
is the track of one ``RTCRtpSender`` on the subscriber's connection. The sender *packs* the
:class:`ForwardedFrame` it receives (aiortc treats anything that is not a decoded frame that
way) and retransmits from its own history when the subscriber NACKs.

Rules kept here:

- A video subscription starts, and restarts after a pause (caucus, mute, a queue overflow),
  only on a keyframe, and asks the publisher for one: a decoder fed a delta frame without
  its reference shows garbage.
- Keyframe requests reaching a publisher are rate-limited (one per ``KEYFRAME_REQUEST_GAP_S``).
- A stalled video stream (no frame for ``STALL_AFTER_S`` while connected) gets a keyframe
  request from the watchdog. If the stall is a lost packet whose retransmission never came
  (aiortc's jitter buffer holds everything behind it, the keyframe asked for included, for
  seconds), the watchdog also moves the buffer past it to the first complete keyframe it
  holds after it (``aiortc_hooks.skip_past_loss``), checking again on every round until it has. A
  retransmission takes far less than ``STALL_AFTER_S``, so one arriving late but in time
  fills its hole and is used; only a stall is given up on.
- After such a loss the whole publication restarts on a keyframe: until one goes out, no
  frame reaches any subscriber or the recording (frames after the hole reference what was
  lost, and a decoder would show garbage until the next keyframe).
- A subscriber that cannot keep up loses frames, never the room: its queue is bounded.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from fractions import Fraction
from typing import Any, Protocol

import av
from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from mediation_rooms import aiortc_hooks

log = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
AUDIO_CLOCK_RATE = 48_000
KEYFRAME_REQUEST_GAP_S = 0.5
STALL_AFTER_S = 1.0
#: Frames a subscriber may fall behind before it skips to the next keyframe (video: 2 s).
MAX_QUEUED_VIDEO_FRAMES = 60
MAX_QUEUED_AUDIO_FRAMES = 100


class ForwardedFrame:
    """An encoded frame on its way to subscribers; shaped like the ``av.Packet`` aiortc packs.

    ``pts`` is in ``time_base`` units (the codec's RTP clock) and continuous for the
    publication; ``arrival`` is ``time.monotonic()`` when the frame was complete.
    ``packet``: what the subscribers' senders pack, when it must be a real ``av.Packet``
    (aiortc's H.264 packer asserts it is one; its VP8 and Opus packers take this object as
    it is). Made once per frame, shared by every subscriber: packing only reads it.
    """

    __slots__ = ("arrival", "data", "keyframe", "packet", "pts", "time_base")

    def __init__(
        self,
        data: bytes,
        pts: int,
        time_base: Fraction,
        keyframe: bool,
        arrival: float,
        *,
        as_packet: bool = False,
    ) -> None:
        self.data = data
        self.pts = pts
        self.time_base = time_base
        self.keyframe = keyframe
        self.arrival = arrival
        self.packet: av.Packet[Any] | None = None
        if as_packet:
            packet = av.Packet(data)
            packet.pts = pts
            packet.time_base = time_base
            self.packet = packet

    def __bytes__(self) -> bytes:
        return self.data


def is_keyframe(codec_name: str, data: bytes) -> bool:
    """Whether an encoded video frame can be decoded on its own."""
    if not data:
        return False
    if codec_name == "VP8":
        # RFC 6386 9.1: bit 0 of the frame tag is 0 for a key frame.
        return not data[0] & 0x01
    if codec_name == "H264":
        # aiortc depayloads H.264 to Annex B; an IDR slice (5) or a parameter set (7) opens it.
        return any(nal and nal[0] & 0x1F in (5, 7) for nal in data.split(b"\x00\x00\x01"))
    return True


class FrameSink(Protocol):
    """Something that takes every frame of a publication (the recorder)."""

    def write(self, frame: ForwardedFrame) -> None: ...


class Publication:
    """One seat's audio or video: the receiving end and its fan-out."""

    def __init__(self, seat: str, kind: str, codec_name: str) -> None:
        self.seat = seat
        self.kind = kind
        self.codec_name = codec_name
        self.clock_rate = VIDEO_CLOCK_RATE if kind == "video" else AUDIO_CLOCK_RATE
        self.time_base = Fraction(1, self.clock_rate)
        self.subscriptions: set[Subscription] = set()
        self.sink: FrameSink | None = None
        self.frames_received = 0
        #: Frames the receiver released after a loss, before a keyframe: forwarded to no one.
        self.frames_discarded = 0
        #: How often the jitter buffer was moved past a lost packet to a keyframe.
        self.loss_skips = 0
        self.last_arrival: float | None = None
        #: ``last_arrival`` of the stall last reported, so that one stall is reported once.
        self._stall_reported: float | None = None
        self._receiver: RTCRtpReceiver | None = None
        self._ts_offset = 0
        self._last_pts: int | None = None
        self._rebase = False
        self._last_keyframe_request = 0.0
        self._pending_request: asyncio.Task[None] | None = None
        #: A packet was lost for good: forward nothing until a keyframe.
        self._restart_on_keyframe = False
        self._is_keyframe = functools.partial(is_keyframe, codec_name)
        self._packs_av_packets = kind == "video" and codec_name == "H264"

    @property
    def connected(self) -> bool:
        return self._receiver is not None

    def attach(self, receiver: RTCRtpReceiver, bitrate_cap_bps: int | None = None) -> None:
        """Take frames from ``receiver`` from now on (a new connection of the same seat)."""
        aiortc_hooks.tap_receiver(receiver, self._on_encoded_frame)
        if bitrate_cap_bps is not None:
            aiortc_hooks.cap_bitrate_estimate(receiver, bitrate_cap_bps)
        self._receiver = receiver
        self._rebase = True

    def detach(self, receiver: RTCRtpReceiver) -> None:
        """The connection carrying ``receiver`` is gone; a later ``attach`` may continue."""
        if self._receiver is receiver:
            self._receiver = None

    def _on_encoded_frame(self, encoded: JitterFrame) -> None:
        now = time.monotonic()
        if self._rebase:
            # A new connection's timestamps restart at 0: continue from the last frame, plus
            # the time that passed, so the stream never goes back in time.
            self._rebase = False
            if self._last_pts is not None and self.last_arrival is not None:
                gap = max(1, int((now - self.last_arrival) * self.clock_rate))
                self._ts_offset = self._last_pts + gap - encoded.timestamp
        pts = encoded.timestamp + self._ts_offset
        self._last_pts = pts
        self.last_arrival = now
        self.frames_received += 1
        keyframe = self.kind == "audio" or self._is_keyframe(encoded.data)
        if self._restart_on_keyframe:
            if not keyframe:
                self.frames_discarded += 1
                self.request_keyframe()
                return
            self._restart_on_keyframe = False
            log.info("%s/%s: restarted on a keyframe after a loss", self.seat, self.kind)
        frame = ForwardedFrame(
            encoded.data, pts, self.time_base, keyframe, now, as_packet=self._packs_av_packets
        )
        for subscription in self.subscriptions:
            subscription.offer(frame)
        if self.sink is not None:
            self.sink.write(frame)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, at most once per ``KEYFRAME_REQUEST_GAP_S``."""
        if self.kind != "video" or self._receiver is None:
            return
        now = time.monotonic()
        if now - self._last_keyframe_request < KEYFRAME_REQUEST_GAP_S:
            return
        self._last_keyframe_request = now
        receiver = self._receiver
        sources = receiver.getSynchronizationSources()
        if not sources:
            return
        ssrc = max(sources, key=lambda source: source.timestamp).source
        self._pending_request = asyncio.ensure_future(
            aiortc_hooks.send_picture_loss(receiver, ssrc)
        )

    def check_stall(self, now: float) -> bool:
        """The watchdog's test: connected video with no frame for ``STALL_AFTER_S`` gets a
        keyframe request (rate-limited) on every check and, if the receiver holds packets
        behind a lost one, is restarted on a keyframe (:meth:`_skip_past_loss`). True only
        when a stall begins."""
        if self.kind != "video" or self._receiver is None or self.last_arrival is None:
            return False
        if now - self.last_arrival < STALL_AFTER_S:
            return False
        self.request_keyframe()
        self._skip_past_loss(self._receiver)
        if self._stall_reported == self.last_arrival:
            return False
        self._stall_reported = self.last_arrival
        return True

    def _skip_past_loss(self, receiver: RTCRtpReceiver) -> None:
        """Move ``receiver``'s jitter buffer to the first complete keyframe after the packet it
        waits for, if it waits for one; from then on nothing but a keyframe goes out, whatever
        the buffer releases next (were no keyframe to come, aiortc's own overflow would carry on
        with the delta frames after the hole)."""
        found = aiortc_hooks.skip_past_loss(receiver, self._is_keyframe)
        if found is aiortc_hooks.LossSkip.NOTHING_LOST:
            return  # the publisher sends nothing: what it sends next is still decodable
        if not self._restart_on_keyframe:
            self._restart_on_keyframe = True
            log.warning("%s/%s: a packet was lost for good", self.seat, self.kind)
        if found is aiortc_hooks.LossSkip.SKIPPED:
            self.loss_skips += 1
            log.info("%s/%s: skipped to a keyframe past the lost packet", self.seat, self.kind)


class SubscriptionTrack(MediaStreamTrack):
    """The track of one subscriber's sender: yields the frames its subscription lets through."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.queue: asyncio.Queue[ForwardedFrame | None] = asyncio.Queue()

    async def recv(self) -> ForwardedFrame | av.Packet[Any]:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self.queue.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame if frame.packet is None else frame.packet

    def stop(self) -> None:
        if self.readyState == "live":
            self.queue.put_nowait(None)
        super().stop()


class Subscription:
    """One subscriber receiving one publication, when ``permitted``."""

    def __init__(self, publication: Publication, subscriber: str, track: SubscriptionTrack):
        self.publication = publication
        self.subscriber = subscriber
        self.track = track
        self.frames_forwarded = 0
        self.frames_dropped = 0
        self._permitted = False
        self._awaiting_keyframe = True
        self._max_queued = (
            MAX_QUEUED_VIDEO_FRAMES if publication.kind == "video" else MAX_QUEUED_AUDIO_FRAMES
        )

    @property
    def permitted(self) -> bool:
        return self._permitted

    def set_permitted(self, permitted: bool) -> None:
        """Start or stop forwarding (admission, caucus, mute); restarts wait for a keyframe."""
        if permitted == self._permitted:
            return
        self._permitted = permitted
        if permitted:
            self._awaiting_keyframe = True
            self.publication.request_keyframe()

    def offer(self, frame: ForwardedFrame) -> None:
        """Queue ``frame`` for the subscriber if it may have it and can decode it."""
        if not self._permitted or self.track.readyState != "live":
            return
        if self._awaiting_keyframe:
            if not frame.keyframe:
                self.publication.request_keyframe()
                return
            self._awaiting_keyframe = False
        queue = self.track.queue
        if queue.qsize() >= self._max_queued:
            # The subscriber's link cannot keep up: drop what is queued, restart on a keyframe.
            dropped = 0
            while not queue.empty():
                queue.get_nowait()
                dropped += 1
            self.frames_dropped += dropped
            self._awaiting_keyframe = self.publication.kind == "video"
            log.warning(
                "subscriber %s fell behind on %s/%s; dropped %d frames",
                self.subscriber,
                self.publication.seat,
                self.publication.kind,
                dropped,
            )
            if self._awaiting_keyframe:
                self.publication.request_keyframe()
                return
        queue.put_nowait(frame)
        self.frames_forwarded += 1
