"""The court copy of a recorded session: one MP4 with everyone side by side, audio mixed.

The per-person files (``recording.py``) are the evidence; this is the copy a judge or clerk
watches. It is rendered after the session, as a background job, from those files:

- **Layout**: one 640×480 tile per seat that has a recording, in seat order (mediator,
  applicant, respondent, then any extra seats), three to a row; a picture that is not 4:3 (a
  phone held upright) is fitted inside its tile with black bars. A label names the seat in each
  tile, and a bar below the tiles shows the case number, the wall-clock time (China Standard
  Time) and the time since the session went live. A seat with no picture at that moment (not
  yet joined, reconnecting, camera off) shows a grey tile.
- **Sync**: every input shares the room clock (milliseconds since the room went live), so the
  output is built on that clock too. Output video frame ``k`` shows, for each seat, the latest
  frame whose timestamp is at or before ``k / fps``; output audio sample ``n`` is the sum of
  every seat's sample at ``n / 48000``, silence where a seat sent nothing. Audio and video of
  a person therefore stay within one source frame plus one output frame of each other (under
  75 ms at 25 fps); the test measures it.
- **Encoding**: H.264 (libx264 ``superfast``: measured here on three 800 kb/s streams of moving
  noise, it needs ~0.64 core-second per second of session against ~1.1 for ``veryfast``, for
  files a third larger) and AAC, in MP4 with the index at the front, so it plays in any
  browser or player and streams with HTTP range requests.
- **Robustness**: a file cut short by a crash renders up to its last good frame; a packet that
  does not decode is skipped. Nothing is written under the final name until rendering is
  complete (a hidden partial file of this render, then a rename).

Run as ``python -m mediation_rooms.court_copy SPEC.json``: it renders the spec and prints one
JSON line ``{"progress": 0.0…1.0}`` at most every half second on stdout, then ``{"done": …}``.
The finalisation job runs it that way, in a child process at low priority, so rendering never
takes the CPU that live rooms forward media with.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

TILE_WIDTH, TILE_HEIGHT = 640, 480
TILES_PER_ROW = 3
BAR_HEIGHT = 64
SAMPLE_RATE = 48_000
#: AAC encodes 1024 samples a frame: the mixer works in blocks of that size.
AUDIO_BLOCK = 1024
#: A seat whose last frame is older than this shows the "no picture" tile.
STALE_PICTURE_MS = 2000
CHINA_TIME = timezone(timedelta(hours=8))

#: Seat labels: Chinese when the overlay font has the glyphs, else English.
SEAT_LABELS = {
    "mediator": ("调解员", "Mediator"),
    "applicant": ("申请人", "Applicant"),
    "respondent": ("被申请人", "Respondent"),
    "interpreter": ("翻译", "Interpreter"),
    "applicant_agent": ("申请人代理人", "Applicant's agent"),
    "respondent_agent": ("被申请人代理人", "Respondent's agent"),
}
SEAT_ORDER = tuple(SEAT_LABELS)
#: Fonts with Chinese glyphs, tried in order when no font is configured.
CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)

Plane = npt.NDArray[np.uint8]
Samples = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class CourtCopySpec:
    """What to render. ``live_since`` is the epoch second the room went live (room clock 0)."""

    directory: Path
    output: Path
    case_no: str
    live_since: float
    duration_ms: int
    fps: int = 25
    font_file: Path | None = None
    #: Seats in display order; default: every seat with a file in ``directory``.
    seats: tuple[str, ...] = ()

    def to_json(self) -> str:
        values = asdict(self)
        for name in ("directory", "output", "font_file"):
            values[name] = str(values[name]) if values[name] is not None else None
        values["seats"] = list(self.seats)
        return json.dumps(values, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> CourtCopySpec:
        values: dict[str, Any] = json.loads(text)
        return cls(
            directory=Path(values["directory"]),
            output=Path(values["output"]),
            case_no=str(values["case_no"]),
            live_since=float(values["live_since"]),
            duration_ms=int(values["duration_ms"]),
            fps=int(values.get("fps", 25)),
            font_file=Path(values["font_file"]) if values.get("font_file") else None,
            seats=tuple(values.get("seats") or ()),
        )


#: Suffixes of per-person files: WebM (VP8, Opus), Matroska (H.264), and MPEG-TS, in which
#: rooms recorded before H.264 went into Matroska hold their H.264 video.
RECORDED_SUFFIXES = (".webm", ".mkv", ".ts")


@dataclass(frozen=True, slots=True)
class RecordedFile:
    """One per-person file, named ``{seat}-{kind}-{part:02d}.{webm|mkv|ts}`` by
    ``recording.py``."""

    path: Path
    seat: str
    kind: str
    part: int

    @classmethod
    def parse(cls, path: Path) -> RecordedFile | None:
        """The file's seat, kind and part from its name; ``None`` for any other file."""
        if path.suffix not in RECORDED_SUFFIXES:
            return None
        pieces = path.stem.rsplit("-", 2)
        if len(pieces) != 3 or pieces[1] not in ("audio", "video") or not pieces[2].isdigit():
            return None
        return cls(path, pieces[0], pieces[1], int(pieces[2]))


def recorded_files(directory: Path) -> list[RecordedFile]:
    """Every per-person file in ``directory``, by seat order, kind and part."""
    found = [RecordedFile.parse(path) for path in sorted(directory.iterdir())]
    files = [file for file in found if file is not None]
    return sorted(files, key=lambda f: (seat_rank(f.seat), f.seat, f.kind, f.part))


def seat_rank(seat: str) -> int:
    return SEAT_ORDER.index(seat) if seat in SEAT_ORDER else len(SEAT_ORDER)


# -- reading the inputs ------------------------------------------------------------------------


def _decoded(parts: list[Path], kind: str) -> Iterator[tuple[int, Any]]:
    """(room ms, decoded frame) of every part in turn. A part that will not open or a packet
    that will not decode is skipped with a warning: a crash can leave a damaged tail."""
    for path in parts:
        try:
            container = av.open(str(path))
        except Exception as error:  # a damaged file can fail in many ways inside PyAV
            log.warning("court copy: cannot open %s: %s", path, error)
            continue
        with container:
            streams = container.streams.video if kind == "video" else container.streams.audio
            if not streams:
                continue
            stream = streams[0]
            time_base = stream.time_base or Fraction(1, 1000)
            # The demuxer ends with an empty packet, which flushes the frames the decoder holds.
            for packet in container.demux(stream):
                try:
                    frames: list[Any] = packet.decode()
                except Exception as error:
                    log.warning("court copy: %s: undecodable packet skipped: %s", path, error)
                    continue
                for frame in frames:
                    if frame.pts is not None:
                        yield int(frame.pts * time_base * 1000), frame


class SeatPicture:
    """One seat's video as a sequence of tiles: ``at(ms)`` is the tile to show at room time."""

    def __init__(self, parts: list[Path]) -> None:
        self._frames = _decoded(parts, "video")
        self._next: tuple[int, Any] | None = next(self._frames, None)
        self._tile: tuple[Plane, Plane, Plane] | None = None
        self._tile_ms = -STALE_PICTURE_MS - 1
        self._shown: Any = None

    def at(self, ms: int) -> tuple[Plane, Plane, Plane] | None:
        """The Y, U, V planes of the tile at ``ms``, or ``None`` when there is no picture."""
        latest = None
        while self._next is not None and self._next[0] <= ms:
            latest = self._next
            self._next = next(self._frames, None)
        if latest is not None:
            self._tile_ms, frame = latest
            if frame is not self._shown:
                self._tile = _fit_in_tile(frame)
                self._shown = frame
        if ms - self._tile_ms > STALE_PICTURE_MS:
            return None
        return self._tile


def _fit_in_tile(frame: Any) -> tuple[Plane, Plane, Plane]:
    """The frame scaled to fit a tile, centred on black, as I420 planes."""
    scale = min(TILE_WIDTH / frame.width, TILE_HEIGHT / frame.height)
    width = max(2, int(frame.width * scale) // 2 * 2)
    height = max(2, int(frame.height * scale) // 2 * 2)
    picture = frame.reformat(width=width, height=height, format="yuv420p").to_ndarray()
    y = np.full((TILE_HEIGHT, TILE_WIDTH), 16, np.uint8)
    u = np.full((TILE_HEIGHT // 2, TILE_WIDTH // 2), 128, np.uint8)
    v = u.copy()
    top, left = (TILE_HEIGHT - height) // 2 // 2 * 2, (TILE_WIDTH - width) // 2 // 2 * 2
    chroma = (height // 2) * (width // 2)
    y[top : top + height, left : left + width] = picture[:height]
    flat = picture[height:].reshape(-1)
    u[top // 2 : (top + height) // 2, left // 2 : (left + width) // 2] = flat[:chroma].reshape(
        height // 2, width // 2
    )
    v[top // 2 : (top + height) // 2, left // 2 : (left + width) // 2] = flat[chroma:].reshape(
        height // 2, width // 2
    )
    return y, u, v


class SeatSound:
    """One seat's audio, mono float samples at 48 kHz placed by the room clock."""

    def __init__(self, parts: list[Path]) -> None:
        self._blocks = self._samples(parts)
        self._pending: tuple[int, Samples] | None = None

    @staticmethod
    def _samples(parts: list[Path]) -> Iterator[tuple[int, Samples]]:
        for ms, frame in _decoded(parts, "audio"):
            samples = frame.to_ndarray().astype(np.float32)
            if frame.format.is_planar:
                mono = samples.mean(axis=0)
            else:  # interleaved: one row of channel-interleaved samples
                mono = samples.reshape(-1, len(frame.layout.channels)).mean(axis=1)
            if frame.sample_rate != SAMPLE_RATE:
                positions = np.arange(0, len(mono), frame.sample_rate / SAMPLE_RATE)
                mono = np.interp(positions, np.arange(len(mono)), mono).astype(np.float32)
            yield ms * SAMPLE_RATE // 1000, mono

    def add_into(self, mix: Samples, start: int) -> None:
        """Add this seat's samples for ``[start, start + len(mix))`` into ``mix``."""
        end = start + len(mix)
        while True:
            if self._pending is None:
                self._pending = next(self._blocks, None)
                if self._pending is None:
                    return
            first, samples = self._pending
            last = first + len(samples)
            if last <= start:
                self._pending = None  # entirely before this block (overlap after a reconnect)
                continue
            if first >= end:
                return
            low, high = max(first, start), min(last, end)
            mix[low - start : high - start] += samples[low - first : high - first]
            if last > end:
                return
            self._pending = None


# -- the overlay ---------------------------------------------------------------------------------


class Overlay:
    """Text drawn into the luma plane: seat labels and the case/time bar."""

    def __init__(self, font_file: Path | None) -> None:
        self.chinese = False
        path = font_file or next((Path(p) for p in CJK_FONT_CANDIDATES if Path(p).exists()), None)
        self._font: Any
        self._small: Any
        if path is not None:
            try:
                self._font = ImageFont.truetype(str(path), 30)
                self._small = ImageFont.truetype(str(path), 24)
                self.chinese = _has_glyph(self._font, "调")
            except OSError as error:
                log.warning("court copy: font %s unusable (%s); using the default", path, error)
                path = None
        if path is None:
            self._font = ImageFont.load_default(30)
            self._small = ImageFont.load_default(24)
        self._bar_cache: tuple[str, Plane] | None = None

    def label(self, seat: str) -> Plane:
        chinese, english = SEAT_LABELS.get(seat, (seat, seat))
        text = chinese if self.chinese else english
        box = self._small.getbbox(text)
        image = Image.new("L", (box[2] + 16, box[3] + 12), 0)
        ImageDraw.Draw(image).text((8, 6), text, fill=255, font=self._small)
        return np.asarray(image, dtype=np.uint8)

    def bar(self, text: str, width: int) -> Plane:
        """The bar's luma: white text on black (cached while the text stays the same)."""
        if self._bar_cache is None or self._bar_cache[0] != text:
            image = Image.new("L", (width, BAR_HEIGHT), 16)
            ImageDraw.Draw(image).text((16, 14), text, fill=235, font=self._font)
            self._bar_cache = (text, np.asarray(image, dtype=np.uint8))
        return self._bar_cache[1]


def _has_glyph(font: Any, character: str) -> bool:
    """Whether ``font`` draws ``character`` as something other than its missing-glyph box."""
    try:
        drawn = font.getmask(character).getbbox()
        missing = font.getmask("\ufffe").getbbox()
    except Exception:
        return False
    return drawn is not None and drawn != missing


def _stamp(planes: tuple[Plane, Plane, Plane], mask: Plane, top: int, left: int) -> None:
    """Draw ``mask`` as white text on a darkened grey box at (top, left); both even."""
    y, u, v = planes
    height = min(mask.shape[0], y.shape[0] - top) // 2 * 2
    width = min(mask.shape[1], y.shape[1] - left) // 2 * 2
    region = y[top : top + height, left : left + width]
    darkened = (region.astype(np.uint16) * 2 // 5).astype(np.uint8)
    region[...] = np.maximum(darkened, mask[:height, :width])
    u[top // 2 : (top + height) // 2, left // 2 : (left + width) // 2] = 128
    v[top // 2 : (top + height) // 2, left // 2 : (left + width) // 2] = 128


# -- rendering -----------------------------------------------------------------------------------


@dataclass
class RenderResult:
    output: Path
    duration_ms: int
    video_frames: int
    seats: tuple[str, ...]
    render_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def render_court_copy(
    spec: CourtCopySpec, progress: Callable[[float], None] | None = None
) -> RenderResult:
    """Render ``spec`` to ``spec.output`` (see the module docstring for what it contains).

    Raises ``ValueError`` when the directory holds no recording to render. ``progress`` is
    called with the fraction done, at most every half second and once with 1.0 at the end.
    """
    started = time.monotonic()
    files = recorded_files(spec.directory)
    seats = spec.seats or tuple(dict.fromkeys(file.seat for file in files))
    if not seats or not files:
        raise ValueError(f"no recording to render in {spec.directory}")

    def parts(seat: str, kind: str) -> list[Path]:
        return [f.path for f in files if f.seat == seat and f.kind == kind]

    pictures = [SeatPicture(parts(seat, "video")) for seat in seats]
    sounds = [SeatSound(parts(seat, "audio")) for seat in seats]
    overlay = Overlay(spec.font_file)
    labels = [overlay.label(seat) for seat in seats]

    columns = min(len(seats), TILES_PER_ROW)
    rows = math.ceil(len(seats) / TILES_PER_ROW)
    width, tiles_height = columns * TILE_WIDTH, rows * TILE_HEIGHT
    height = tiles_height + BAR_HEIGHT
    canvas = np.empty((height * 3 // 2, width), np.uint8)
    y_plane = canvas[:height]
    chroma = canvas[height:].reshape(-1)
    u_plane = chroma[: height * width // 4].reshape(height // 2, width // 2)
    v_plane = chroma[height * width // 4 :].reshape(height // 2, width // 2)
    y_plane.fill(16)
    u_plane.fill(128)
    v_plane.fill(128)
    shown: list[object] = [object() for _ in seats]  # what each tile holds now
    no_picture: tuple[Plane, Plane, Plane] = (
        np.full((TILE_HEIGHT, TILE_WIDTH), 60, np.uint8),
        np.full((TILE_HEIGHT // 2, TILE_WIDTH // 2), 128, np.uint8),
        np.full((TILE_HEIGHT // 2, TILE_WIDTH // 2), 128, np.uint8),
    )

    spec.output.parent.mkdir(parents=True, exist_ok=True)
    # Each render has its own partial file: two renders of one room (a retry racing a slow
    # first attempt) must never write into one file. Hidden, so no manifest lists it.
    partial = spec.output.with_name(f".{spec.output.name}.{os.getpid()}.partial")
    total_frames = max(1, math.ceil(spec.duration_ms * spec.fps / 1000))
    total_samples = spec.duration_ms * SAMPLE_RATE // 1000
    container = av.open(str(partial), "w", format="mp4", options={"movflags": "+faststart"})
    try:
        video = container.add_stream(
            "libx264",
            rate=spec.fps,
            options={"preset": "superfast", "crf": "23", "g": str(spec.fps * 2)},
        )
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        audio.bit_rate = 96_000
        samples_done = 0
        last_report = 0.0
        for index in range(total_frames):
            at_ms = index * 1000 // spec.fps
            for seat_index, picture in enumerate(pictures):
                tile = picture.at(at_ms) or no_picture
                if tile is shown[seat_index]:
                    continue
                shown[seat_index] = tile
                top = (seat_index // TILES_PER_ROW) * TILE_HEIGHT
                left = (seat_index % TILES_PER_ROW) * TILE_WIDTH
                y_plane[top : top + TILE_HEIGHT, left : left + TILE_WIDTH] = tile[0]
                u_plane[
                    top // 2 : (top + TILE_HEIGHT) // 2, left // 2 : (left + TILE_WIDTH) // 2
                ] = tile[1]
                v_plane[
                    top // 2 : (top + TILE_HEIGHT) // 2, left // 2 : (left + TILE_WIDTH) // 2
                ] = tile[2]
                _stamp((y_plane, u_plane, v_plane), labels[seat_index], top + 8, left + 8)
            y_plane[tiles_height:] = overlay.bar(_bar_text(spec, at_ms), width)
            frame = av.VideoFrame.from_ndarray(canvas, format="yuv420p")
            frame.pts = index
            frame.time_base = Fraction(1, spec.fps)
            container.mux(video.encode(frame))

            # Audio up to the end of this video frame, in whole AAC blocks.
            audio_target = min(total_samples, (index + 1) * SAMPLE_RATE // spec.fps)
            while samples_done + AUDIO_BLOCK <= audio_target or (
                index == total_frames - 1 and samples_done < total_samples
            ):
                container.mux(audio.encode(_mixed_block(sounds, samples_done)))
                samples_done += AUDIO_BLOCK

            now = time.monotonic()
            if progress is not None and now - last_report >= 0.5:
                last_report = now
                progress(index / total_frames)
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
        container.close()  # writes the index (and moves it to the front): can fail too
    except BaseException:
        with contextlib.suppress(Exception):
            container.close()
        partial.unlink(missing_ok=True)
        raise
    partial.replace(spec.output)
    if progress is not None:
        progress(1.0)
    return RenderResult(
        output=spec.output,
        duration_ms=spec.duration_ms,
        video_frames=total_frames,
        seats=seats,
        render_seconds=time.monotonic() - started,
    )


def _mixed_block(sounds: list[SeatSound], start: int) -> Any:
    mix = np.zeros(AUDIO_BLOCK, np.float32)
    for sound in sounds:
        sound.add_into(mix, start)
    np.clip(mix, -1.0, 1.0, out=mix)
    frame = av.AudioFrame.from_ndarray(mix.reshape(1, -1), format="fltp", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = start
    frame.time_base = Fraction(1, SAMPLE_RATE)
    return frame


def _bar_text(spec: CourtCopySpec, at_ms: int) -> str:
    wall = datetime.fromtimestamp(spec.live_since + at_ms / 1000, UTC).astimezone(CHINA_TIME)
    elapsed = at_ms // 1000
    return (
        f"{spec.case_no}    {wall:%Y-%m-%d %H:%M:%S} (UTC+8)    "
        f"{elapsed // 3600:02d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}"
    )


def _exit_with_parent() -> None:
    """On Linux, have the kernel end this renderer when the worker that started it dies (a
    killed worker must not leave a render running that a retry then races)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warning("court copy: cannot tie the renderer to its parent's life")


_PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: render the spec file named on the command line (see module doc)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mediation_rooms.court_copy SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if hasattr(os, "nice"):
        os.nice(10)  # behind live media on a shared machine
    _exit_with_parent()

    def report(fraction: float) -> None:
        print(json.dumps({"progress": round(fraction, 4)}), flush=True)

    spec = CourtCopySpec.from_json(Path(args[0]).read_text(encoding="utf-8"))
    result = render_court_copy(spec, report)
    print(
        json.dumps(
            {
                "done": str(result.output),
                "video_frames": result.video_frames,
                "render_seconds": round(result.render_seconds, 2),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
