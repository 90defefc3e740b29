"""Every place where Jiefen reaches into aiortc's internals, and nowhere else.

aiortc decodes every received frame and re-encodes every sent one; a three-party room done
that way needs ~4 cores here (DESIGN.md, "The media plane"). Jiefen forwards packets instead,
which aiortc supports on the sending side (an ``RTCRtpSender`` whose track yields something
other than a decoded ``Frame`` has it *packed*, not encoded) but not on the receiving side.
These hooks close the gap:

- :func:`tap_receiver` takes each re-assembled, still-encoded frame out of an
  ``RTCRtpReceiver`` in place of its decoder thread (the thread still starts, and idles);
- :func:`on_keyframe_request` routes a subscriber's PLI/FIR, which aiortc would turn into a
  "force the next keyframe" flag for its own encoder, to a callback (the publisher);
- :func:`send_picture_loss` asks a publisher for a keyframe (RTCP PLI);
- :func:`cap_bitrate_estimate` clamps the REMB a receiver sends back, capping the publisher.

They rely on private names of aiortc **1.16.0**, the version pinned in ``pyproject.toml``;
:func:`check_compatible` verifies every one of them and ``tests/test_media_forwarding.py`` runs it,
so an upgrade that moves them fails loudly instead of silently decoding again.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import aiortc
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterFrame

#: The aiortc release these hooks were written against and tested with.
PINNED_AIORTC_VERSION = "1.16.0"

_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
_BITRATE_ESTIMATOR = "_RTCRtpReceiver__remote_bitrate_estimator"
_RECEIVER_PLI = "_send_rtcp_pli"
_SENDER_KEYFRAME = "_send_keyframe"


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
    if getattr(receiver, _DECODER_THREAD, None) is not None:
        raise HookError("tap_receiver called after the receiver started decoding")
    _require(receiver, _DECODER_QUEUE)
    setattr(receiver, _DECODER_QUEUE, _FrameTap(sink))


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever the remote end of ``sender`` sends a PLI or FIR."""
    _require(sender, _SENDER_KEYFRAME)
    setattr(sender, _SENDER_KEYFRAME, callback)


async def send_picture_loss(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Ask the remote sender of ``media_ssrc`` for a keyframe (RTCP PLI, RFC 4585 6.3.1)."""
    await getattr(receiver, _RECEIVER_PLI)(media_ssrc)


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


def check_compatible() -> None:
    """Raise :class:`HookError` unless the installed aiortc has every internal used here."""
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
    ):
        if not callable(getattr(cls, name, None)):
            raise HookError(f"aiortc {cls.__name__}.{name} is gone")


def _require(obj: object, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise HookError(f"aiortc {type(obj).__name__} has no attribute {name}") from None
