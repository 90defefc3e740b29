"""Every place where Jiefen reaches into aiortc's internals, and nowhere else.

aiortc decodes every received frame and re-encodes every sent one; a three-party room done
that way needs ~4 cores here (DESIGN.md, "The media plane"). Jiefen forwards packets instead,
which aiortc supports on the sending side (an ``RTCRtpSender`` whose track yields something
other than a decoded ``Frame`` has it *packed*, not encoded) but not on the receiving side.
These hooks close the gap:

- :func:`tap_receiver` takes each re-assembled, still-encoded frame out of an
  ``RTCRtpReceiver`` in place of its decoder thread (the thread still starts, and idles);
- :func:`on_keyframe_request` routes a subscriber's PLI/FIR, which aiortc would turn into a
  "force the next keyframe" flag for its own encoder, to a callback (the publisher); it also
  makes the connection's RTCP router deliver a FIR addressed as RFC 5104 does (``_FirRouting``);
- :func:`send_picture_loss` asks a publisher for a keyframe (RTCP PLI);
- :func:`skip_past_loss` moves a video receiver's jitter buffer past a packet that never came,
  to the first complete keyframe it holds after it: aiortc's buffer releases frames strictly in
  order, so a lost packet whose retransmission never arrives holds back everything behind
  it, the keyframe the watchdog asked for included, until 512 more packets have arrived
  (over 5 s at 1 Mbit/s);
- :func:`cap_bitrate_estimate` clamps the REMB a receiver sends back, capping the publisher.

They rely on private names of aiortc **1.16.0**, the version pinned in ``pyproject.toml``;
:func:`check_compatible` verifies every one of them, on the classes and on fresh instances, and
``tests/test_media_forwarding.py`` runs it, so an upgrade that moves them fails loudly instead of
silently decoding again; for the jitter buffer it also runs :func:`skip_past_loss` on a fresh
one, because that hook depends on how the buffer behaves, not only on its names. That a hook
still *fires* (aiortc still calls what it replaced) is shown with real peers by
``tests/test_media_feedback.py`` and, for the jitter buffer, ``tests/test_media_loss.py``.
"""

from __future__ import annotations

import enum
import queue
import struct
from collections.abc import Callable
from typing import Any, cast

import aiortc
from aiortc import RTCDtlsTransport, RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcdtlstransport import RtpReceiver, RtpRouter, RtpSender
from aiortc.rtp import RTCP_PSFB_FIR, AnyRtcpPacket, RtcpPsfbPacket, RtpPacket

#: The aiortc release these hooks were written against and tested with.
PINNED_AIORTC_VERSION = "1.16.0"

_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
_BITRATE_ESTIMATOR = "_RTCRtpReceiver__remote_bitrate_estimator"
_RECEIVER_PLI = "_send_rtcp_pli"
_SENDER_KEYFRAME = "_send_keyframe"
_TRANSPORT_ROUTER = "_rtp_router"
_ROUTER_SENDERS = "senders"
_ROUTER_ROUTE_RTCP = "route_rtcp"
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_BUFFER_ORIGIN = "_origin"
_BUFFER_PACKETS = "_packets"
_BUFFER_REMOVE = "remove"
#: What the receiver sets on each packet before buffering it (the depayloaded payload), and
#: what the buffer joins into a frame.
_PACKET_DATA = "_data"
#: One FIR entry of a FIR's FCI (RFC 5104 4.3.1.1): SSRC, sequence number, 24 reserved bits.
_FIR_ENTRY = struct.Struct("!LB3x")


class HookError(RuntimeError):
    """aiortc no longer looks the way these hooks expect (an upgrade moved its internals)."""


#: Receives each complete encoded frame, on the event loop, as soon as it is re-assembled.
EncodedFrameSink = Callable[[JitterFrame], None]


class _FrameTap:
    """Stands in for the receiver's decoder queue.

    ``put`` is called on the event loop by ``RTCRtpReceiver._handle_rtp_packet`` with
    ``(codec, JitterFrame)``; the frame goes straight to the sink. ``get`` is called by the
    receiver's decoder thread, which then has nothing to do: it blocks until the receiver stops
    (``put(None)``), then returns ``None`` so the thread ends the way aiortc expects.
    """

    def __init__(self, sink: EncodedFrameSink) -> None:
        self._sink = sink
        self._stopped: queue.SimpleQueue[None] = queue.SimpleQueue()

    def put(self, task: tuple[Any, JitterFrame] | None) -> None:
        if task is None:
            self._stopped.put(None)
            return
        self._sink(task[1])

    def get(self) -> None:
        return self._stopped.get()


def tap_receiver(receiver: RTCRtpReceiver, sink: EncodedFrameSink) -> None:
    """Send the receiver's encoded frames to ``sink`` instead of decoding them.

    Must be called before the receiver starts (in the peer connection's ``track`` event),
    because ``RTCRtpReceiver.receive`` hands the queue to the decoder thread it starts.
    """
    if _require(receiver, _DECODER_THREAD) is not None:
        raise HookError("tap_receiver called after the receiver started decoding")
    _require(receiver, _DECODER_QUEUE)
    setattr(receiver, _DECODER_QUEUE, _FrameTap(sink))


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever the remote end of ``sender`` sends a PLI or FIR.

    Call it once ``sender`` has the transport it will keep: with ``max-bundle`` that is from
    its creation on (every transceiver shares the first one's).
    """
    _require(sender, _SENDER_KEYFRAME)
    setattr(sender, _SENDER_KEYFRAME, callback)
    _route_full_intra_requests(sender.transport)


class _FirRouting:
    """Stands in for an ``RtpRouter``'s ``route_rtcp``: a FIR also goes to the senders that its
    FCI entries name.

    aiortc hands payload-specific feedback to the sender whose SSRC is the packet's media
    source SSRC, but RFC 5104 (4.3.1.2) sets that to 0 in a FIR and names the streams asked for
    in the FCI, as libwebrtc does: such a FIR would reach no sender at all.
    """

    def __init__(self, router: RtpRouter) -> None:
        self._router = router
        self._route = router.route_rtcp

    def __call__(self, packet: AnyRtcpPacket) -> set[RtpReceiver | RtpSender]:
        recipients = self._route(packet)
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_FIR:
            whole = len(packet.fci) - len(packet.fci) % _FIR_ENTRY.size
            for ssrc, _sequence_number in _FIR_ENTRY.iter_unpack(packet.fci[:whole]):
                sender = self._router.senders.get(ssrc)
                if sender is not None:
                    recipients.add(sender)
        return recipients


def _route_full_intra_requests(transport: RTCDtlsTransport) -> None:
    router = _require(transport, _TRANSPORT_ROUTER)
    _require(router, _ROUTER_SENDERS)
    if not isinstance(_require(router, _ROUTER_ROUTE_RTCP), _FirRouting):
        setattr(router, _ROUTER_ROUTE_RTCP, _FirRouting(router))


async def send_picture_loss(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Ask the remote sender of ``media_ssrc`` for a keyframe (RTCP PLI, RFC 4585 6.3.1)."""
    await getattr(receiver, _RECEIVER_PLI)(media_ssrc)


class LossSkip(enum.Enum):
    """What :func:`skip_past_loss` found in a video receiver's jitter buffer."""

    #: Nothing waits behind a missing packet: the buffer is empty, or holds one unbroken run
    #: (a publisher that went silent, not a lossy one).
    NOTHING_LOST = "nothing_lost"
    #: Packets wait behind a missing one, and no complete keyframe follows it yet.
    AWAITING_KEYFRAME = "awaiting_keyframe"
    #: The buffer dropped everything before the first complete keyframe after the missing
    #: packet; it releases that keyframe with the next packet that arrives, and what it holds
    #: after it with the packets after that, as usual.
    SKIPPED = "skipped"


def skip_past_loss(receiver: RTCRtpReceiver, is_keyframe: Callable[[bytes], bool]) -> LossSkip:
    """Give up on the packets a video ``receiver`` is still waiting for, if a keyframe it holds
    makes them unnecessary.

    aiortc's ``JitterBuffer`` keeps packets by sequence number from its origin and releases a
    frame once the frame's packets, and the first packet of the next frame, have all arrived.
    Behind a packet that never comes it releases nothing until its capacity is full, then drops
    the incomplete frame and goes on with delta frames that reference it. This looks for the
    first keyframe after the first missing packet that the buffer would release on its own
    terms (every packet held, the packet before it and the one after it held and of other
    frames, so that it is known where it starts and ends; ``is_keyframe`` judges the frame's
    bytes) and moves the origin to it. The first, not the newest: every frame from there on
    decodes, and is worth keeping in the recording; a subscriber sees them catch up (the
    buffer releases a frame for every packet that arrives). A retransmission of a dropped
    packet that arrives later is discarded by the buffer (it is behind the origin).

    Only the caller knows that a missing packet is *lost* rather than late: call this once the
    stream has stalled for longer than a retransmission takes (the watchdog does). Call it on
    the event loop, where the receiver handles packets.
    """
    buffer = _require(receiver, _JITTER_BUFFER)
    origin: int | None = _require(buffer, _BUFFER_ORIGIN)
    if origin is None:
        return LossSkip.NOTHING_LOST
    held = _held_packets(_require(buffer, _BUFFER_PACKETS), origin)
    missing = next((offset for offset, packet in enumerate(held) if packet is None), len(held))
    if all(packet is None for packet in held[missing:]):
        return LossSkip.NOTHING_LOST
    for start, end in _known_frames(held, missing):
        if is_keyframe(b"".join(getattr(packet, _PACKET_DATA) for packet in held[start:end])):
            _require(buffer, _BUFFER_REMOVE)(start)
            return LossSkip.SKIPPED
    return LossSkip.AWAITING_KEYFRAME


def _held_packets(slots: list[RtpPacket | None], origin: int) -> list[RtpPacket | None]:
    """The buffer's slots in sequence order from ``origin``; ``None`` where a packet is missing.

    A slot holds the packet whose sequence number is congruent to it modulo the capacity (a
    power of two, so that this survives the 16-bit wrap).
    """
    held: list[RtpPacket | None] = []
    for offset in range(len(slots)):
        sequence_number = (origin + offset) & 0xFFFF
        packet = slots[sequence_number % len(slots)]
        if packet is not None and packet.sequence_number != sequence_number:
            packet = None
        held.append(packet)
    return held


def _known_frames(held: list[RtpPacket | None], after: int) -> list[tuple[int, int]]:
    """``(start, end)`` offsets of the frames after offset ``after`` that are complete with a
    known start: every packet held, and the packets just before and just after held and of
    another timestamp (the buffer's own rule for the end of a frame)."""
    frames: list[tuple[int, int]] = []
    start: int | None = None
    for offset in range(after + 1, len(held)):
        packet, previous = held[offset], held[offset - 1]
        if packet is None:
            start = None
        elif previous is not None and previous.timestamp != packet.timestamp:
            if start is not None:
                frames.append((start, offset))
            start = offset
    return frames


class _CappedEstimator:
    """Wraps aiortc's ``RemoteBitrateEstimator``: the REMB it sends never exceeds the cap."""

    def __init__(self, inner: Any, cap_bps: int) -> None:
        self._inner = inner
        self._cap_bps = cap_bps

    def add(self, **kwargs: Any) -> tuple[int, list[int]] | None:
        estimate: tuple[int, list[int]] | None = self._inner.add(**kwargs)
        if estimate is None:
            return None
        bitrate, ssrcs = estimate
        return min(bitrate, self._cap_bps), ssrcs


def cap_bitrate_estimate(receiver: RTCRtpReceiver, cap_bps: int) -> None:
    """Clamp the receiver's REMB feedback to ``cap_bps`` so the publisher sends no more.

    Audio receivers have no estimator; for them this does nothing.
    """
    estimator = _require(receiver, _BITRATE_ESTIMATOR)
    if estimator is not None:
        setattr(receiver, _BITRATE_ESTIMATOR, _CappedEstimator(estimator, cap_bps))


class _NoTransport:
    """Enough of a transport to construct a receiver that is never started."""

    state = "new"


def check_compatible() -> None:
    """Raise :class:`HookError` unless the installed aiortc has every internal used here, in
    the shape used here: the methods on the classes, and the attributes that only an instance
    has (a fresh audio and video receiver: a decoder queue, no decoder thread yet, a bitrate
    estimator on video only; a router's sender table), and that a video receiver's jitter
    buffer goes through a loss the way :func:`skip_past_loss` expects."""
    if aiortc.__version__ != PINNED_AIORTC_VERSION:
        raise HookError(
            f"aiortc {aiortc.__version__} is installed; the media hooks were written for "
            f"{PINNED_AIORTC_VERSION}: re-check mediation_rooms/aiortc_hooks.py before upgrading"
        )
    for cls, name in (
        (RTCRtpReceiver, _RECEIVER_PLI),
        (RTCRtpReceiver, "_handle_rtp_packet"),
        (RTCRtpSender, _SENDER_KEYFRAME),
        (RTCRtpSender, "_next_encoded_frame"),
        (RtpRouter, _ROUTER_ROUTE_RTCP),
    ):
        if not callable(getattr(cls, name, None)):
            raise HookError(f"aiortc {cls.__name__}.{name} is gone")
    for kind in ("audio", "video"):
        receiver = RTCRtpReceiver(kind, cast(RTCDtlsTransport, _NoTransport()))
        decoder_queue = _require(receiver, _DECODER_QUEUE)
        if not all(callable(getattr(decoder_queue, name, None)) for name in ("put", "get")):
            raise HookError(f"aiortc RTCRtpReceiver.{_DECODER_QUEUE} is no longer a queue")
        if _require(receiver, _DECODER_THREAD) is not None:
            raise HookError("aiortc RTCRtpReceiver starts its decoder thread before receive()")
        estimator = _require(receiver, _BITRATE_ESTIMATOR)
        if kind == "video" and not callable(getattr(estimator, "add", None)):
            raise HookError(f"aiortc's video RTCRtpReceiver.{_BITRATE_ESTIMATOR} has no add()")
        if kind == "video":
            _check_skip_past_loss(receiver)
    if not isinstance(_require(RtpRouter(), _ROUTER_SENDERS), dict):
        raise HookError(f"aiortc RtpRouter.{_ROUTER_SENDERS} is no longer a dict")


def _check_skip_past_loss(receiver: RTCRtpReceiver) -> None:
    """Take a fresh video receiver's jitter buffer through a loss, across the sequence number
    wrap: nothing is released behind the missing packet, :func:`skip_past_loss` finds nothing
    before the keyframe has arrived and moves to it once it has, the buffer releases it whole
    with the next packet, and discards the lost packet when it comes late."""
    buffer = _require(receiver, _JITTER_BUFFER)
    for name in (_BUFFER_PACKETS, _BUFFER_REMOVE):
        _require(buffer, name)

    def packet(sequence_number: int, timestamp: int, data: bytes) -> RtpPacket:
        packet = RtpPacket(sequence_number=sequence_number, timestamp=timestamp)
        setattr(packet, _PACKET_DATA, data)
        return packet

    def keyframe(data: bytes) -> bool:
        return data.startswith(b"key")

    # Sequence number 0, the first packet of the frame at 3000, is lost.
    before_loss = [packet(65534, 0, b"a"), packet(65535, 0, b"b")]
    after_loss = [packet(1, 3000, b"c")]
    keyframe_and_next = [packet(2, 6000, b"key"), packet(3, 6000, b"frame"), packet(4, 9000, b"d")]
    try:
        skips = [skip_past_loss(receiver, keyframe)]
        released = [buffer.add(p)[1] for p in before_loss]
        skips.append(skip_past_loss(receiver, keyframe))
        released += [buffer.add(p)[1] for p in after_loss]
        skips.append(skip_past_loss(receiver, keyframe))
        released += [buffer.add(p)[1] for p in keyframe_and_next]
        skips.append(skip_past_loss(receiver, keyframe))
        frame = buffer.add(packet(5, 9000, b"e"))[1]
        late = buffer.add(packet(0, 3000, b"lost"))[1]
    except HookError:
        raise
    except Exception as exc:
        raise HookError(
            f"aiortc's JitterBuffer fails where skip_past_loss uses it: {exc!r}"
        ) from exc
    expected_skips = [
        LossSkip.NOTHING_LOST,
        LossSkip.NOTHING_LOST,
        LossSkip.AWAITING_KEYFRAME,
        LossSkip.SKIPPED,
    ]
    found = None if frame is None else (frame.data, frame.timestamp)
    if skips != expected_skips or any(released) or found != (b"keyframe", 6000) or late:
        raise HookError(
            "aiortc's JitterBuffer goes through a loss other than skip_past_loss expects: "
            f"{skips}, released behind the loss: {released}, after the skip: {found}"
        )


def _require(obj: object, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise HookError(f"aiortc {type(obj).__name__} has no attribute {name}") from None
