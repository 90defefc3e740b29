"""Recording a live room: the forwarded packets muxed to disk (codec copy), plus a timeline.

Layout of one room session's directory (``<recordings_dir>/<room_id>/``)::

    timeline.jsonl                 one JSON object a line: {"t_ms", "event", ...}
    applicant-video-01.webm        one file per seat, kind and connection part
    applicant-audio-01.webm        (an H.264 room's video: applicant-video-01.mkv)
    ...

Contract:

- Every file and the timeline share one **room clock**: milliseconds since the room went live
  (``RoomClock``). A track's first frame is placed at its arrival on that clock; later frames
  by their RTP timestamps, so jitter in arrival does not jitter the recording, and the audio and
  video of one participant stay in step (lip-sync) because both are anchored the same way.
- Nothing is decoded or encoded. VP8 and Opus go into WebM; H.264 into Matroska (``.mkv``:
  WebM does not admit H.264), with the SPS and PPS of the file's first frame as its
  CodecPrivate and the picture size read from that SPS. Rooms recorded before this held their
  H.264 in MPEG-TS (``.ts``); those files are still read (``court_copy.RecordedFile``).
- Files survive a kill: the muxer flushes each packet and closes a cluster every
  ``CLUSTER_MS``, so a ``SIGKILL`` loses at most about that much.
- A write error is logged and counted, never raised into the forwarding path: a full disk must
  not end the mediation (the timeline records it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from av.container import OutputContainer
from av.stream import Stream

from mediation_rooms import h264
from mediation_rooms.forwarding import ForwardedFrame, Publication

log = logging.getLogger(__name__)

MS = Fraction(1, 1000)
#: A Matroska cluster is written out at least this often; what a kill can lose.
CLUSTER_MS = 500


class RoomClock:
    """Milliseconds since the room went live (monotonic, so wall-clock steps do not matter).

    ``live_since`` is the wall-clock moment (epoch seconds) the room went live, kept in Redis:
    a media process that takes the room over after a crash continues the same clock.
    """

    def __init__(self, live_since: float | None = None) -> None:
        wall_now, mono_now = time.time(), time.monotonic()
        self.live_since = wall_now if live_since is None else live_since
        self.started = mono_now - (wall_now - self.live_since)

    def ms(self, at: float | None = None) -> int:
        return int(((time.monotonic() if at is None else at) - self.started) * 1000)


def container_for(codec_name: str) -> tuple[str, str]:
    """(FFmpeg muxer, file suffix) of a recorded file of ``codec_name``."""
    return ("matroska", "mkv") if codec_name == "H264" else ("webm", "webm")


def h264_dimensions(access_unit: bytes) -> tuple[int, int] | None:
    """Width and height from the first SPS of an H.264 access unit, or ``None``."""
    for nal in h264.nal_units(access_unit):
        if h264.nal_type(nal) == h264.NAL_SPS:
            try:
                sps = h264.SequenceParameterSet.parse(nal)
            except ValueError:
                return None
            return sps.width, sps.height
    return None


def vp8_dimensions(keyframe: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 key frame header (RFC 6386 9.1), or ``None``."""
    if len(keyframe) < 10 or keyframe[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(keyframe[6:8], "little") & 0x3FFF
    height = int.from_bytes(keyframe[8:10], "little") & 0x3FFF
    return width, height


@dataclass
class TrackFile:
    """What is known about one recorded file, for the manifest."""

    seat: str
    kind: str
    part: int
    path: Path
    codec: str
    first_ms: int | None = None
    last_ms: int | None = None
    frames: int = 0
    write_errors: int = 0


class TrackRecorder:
    """Muxes one publication's frames into one file, opened at its first decodable frame."""

    def __init__(self, clock: RoomClock, info: TrackFile, codec_name: str, clock_rate: int):
        self.clock = clock
        self.info = info
        self._codec_name = codec_name
        self._clock_rate = clock_rate
        self._container: OutputContainer | None = None
        self._stream: Stream | None = None
        self._anchor: tuple[int, int] | None = None  # (room ms, pts) of the first frame
        self._last_ms = -1
        self._closed = False
        self._waiting_for_parameter_sets = False

    def write(self, frame: ForwardedFrame) -> None:
        if self._closed:
            return
        try:
            if self._container is None:
                if not self._opens_file(frame):
                    return
                self._open(frame)
            assert self._anchor is not None and self._stream is not None
            anchor_ms, anchor_pts = self._anchor
            ms = anchor_ms + (frame.pts - anchor_pts) * 1000 // self._clock_rate
            ms = max(ms, self._last_ms + 1)  # the muxer needs strictly rising timestamps
            self._last_ms = ms
            packet = av.Packet(frame.data)
            packet.pts = packet.dts = ms
            packet.time_base = MS
            packet.stream = self._stream
            if frame.keyframe and self.info.kind == "video":
                packet.is_keyframe = True
            assert self._container is not None
            self._container.mux(packet)
            self.info.frames += 1
            if self.info.first_ms is None:
                self.info.first_ms = ms
            self.info.last_ms = ms
        except Exception:
            self.info.write_errors += 1
            if self.info.write_errors in (1, 10, 100) or self.info.write_errors % 1000 == 0:
                log.exception(
                    "recording %s: write error %d", self.info.path, self.info.write_errors
                )

    def _opens_file(self, frame: ForwardedFrame) -> bool:
        """Whether the file can start with ``frame``: one that decodes on its own."""
        if not frame.keyframe:
            return False
        # Matroska's CodecPrivate (the avcC) is written with the header, from the first frame's
        # SPS and PPS, and cannot be added later. aiortc hands the parameter sets over in band,
        # in the IDR's frame (a browser sends them with every IDR); from a sender that put
        # them only out of band (SDP sprop-parameter-sets, which aiortc ignores) the file
        # waits for the first keyframe that carries both.
        if self._codec_name == "H264" and h264.parameter_sets(frame.data) is None:
            if not self._waiting_for_parameter_sets:
                self._waiting_for_parameter_sets = True
                log.warning("recording %s: keyframe without SPS/PPS, waiting", self.info.path)
            return False
        return True

    def _open(self, frame: ForwardedFrame) -> None:
        path = self.info.path
        path.parent.mkdir(parents=True, exist_ok=True)
        container_format, _ = container_for(self._codec_name)
        options = {"flush_packets": "1", "cluster_time_limit": str(CLUSTER_MS)}
        container = av.open(str(path), "w", format=container_format, options=options)
        stream: Any
        if self._codec_name == "H264":
            width, height = h264_dimensions(frame.data) or (640, 480)
            # A stream without a codec context: PyAV (>= 18) takes the extradata from the
            # first packet muxed (FFmpeg's extract_extradata: its SPS and PPS, which
            # _opens_file made sure are there) before it writes the header, and the muxer
            # turns it into an avcC and each Annex B packet into length-prefixed NAL units.
            # (add_stream("h264") would not do: PyAV opens a libx264 encoder for it when the
            # header is written, which replaces any extradata set with its own parameter
            # sets, not this stream's.)
            stream = container.add_mux_stream("h264", width=width, height=height)
        elif self.info.kind == "video":
            stream = container.add_stream("libvpx")
            width, height = vp8_dimensions(frame.data) or (640, 480)
            stream.width, stream.height = width, height
        else:
            stream = container.add_stream("libopus", rate=48_000)
            stream.layout = "stereo"
        stream.time_base = MS
        self._container, self._stream = container, stream
        self._anchor = (self.clock.ms(frame.arrival), frame.pts)

    def close(self) -> None:
        """Finish the file (writes its index); the recorder ignores frames afterwards."""
        if self._closed:
            return
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                log.exception("recording %s: close failed", self.info.path)
        else:
            # Nothing decodable arrived: drop the reserved, empty name.
            with contextlib.suppress(FileNotFoundError):
                if self.info.path.stat().st_size == 0:
                    self.info.path.unlink()


@dataclass
class RoomRecording:
    """Everything recorded in one live session of a room."""

    directory: Path
    clock: RoomClock = field(default_factory=RoomClock)
    files: list[TrackFile] = field(default_factory=list)
    _recorders: dict[tuple[str, str], TrackRecorder] = field(default_factory=dict)
    _parts: dict[tuple[str, str], int] = field(default_factory=dict)  # next part number
    _closed: bool = False

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._timeline = (self.directory / "timeline.jsonl").open("a", encoding="utf-8")

    def event(self, event: str, *, at: float | None = None, **details: Any) -> None:
        """Append one event to the timeline, flushed at once, at the current room time or at
        ``at`` (``time.monotonic()`` seconds; before the room went live, a negative ``t_ms``).
        Lines are in the order written: events from before the room went live are written
        when it does, after ``recording_started``, in their own order (see ``timeline.py``)."""
        if self._closed:
            return
        line = {"t_ms": self.clock.ms(at), "event": event, **details}
        self._timeline.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
        self._timeline.flush()

    def record(self, publication: Publication) -> None:
        """Record ``publication`` from now on; a connection part gets its own file."""
        if self._closed:
            return
        key = (publication.seat, publication.kind)
        previous = self._recorders.pop(key, None)
        if previous is not None:
            previous.close()
        _, suffix = container_for(publication.codec_name)
        part = max(self._parts.get(key, 1), self._next_part_on_disk(publication))
        while True:
            path = self.directory / f"{publication.seat}-{publication.kind}-{part:02d}.{suffix}"
            try:
                # Reserve the name now (exclusive create): another process recording this room
                # meanwhile (a takeover while this one was thought dead) gets the next part
                # rather than truncating this one.
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))
                break
            except FileExistsError:
                part += 1
        self._parts[key] = part + 1
        info = TrackFile(
            seat=publication.seat,
            kind=publication.kind,
            part=part,
            path=path,
            codec=publication.codec_name,
        )
        self.files.append(info)
        recorder = TrackRecorder(self.clock, info, publication.codec_name, publication.clock_rate)
        self._recorders[key] = recorder
        publication.sink = recorder

    def _next_part_on_disk(self, publication: Publication) -> int:
        # A process that took the room over after a crash must not overwrite earlier parts.
        parts = [
            int(path.stem.rsplit("-", 1)[1])
            for path in self.directory.glob(f"{publication.seat}-{publication.kind}-*.*")
            if path.stem.rsplit("-", 1)[1].isdigit()
        ]
        return max(parts, default=0) + 1

    def stop_recording(self, publication: Publication) -> None:
        """The publication's connection ended: close its file."""
        recorder = self._recorders.pop((publication.seat, publication.kind), None)
        if recorder is not None:
            recorder.close()
        if publication.sink is recorder:
            publication.sink = None

    def close(self) -> None:
        """Close every file and the timeline."""
        if self._closed:
            return
        for recorder in self._recorders.values():
            recorder.close()
        self._recorders.clear()
        self.event("recording_closed")
        self._closed = True
        self._timeline.close()
