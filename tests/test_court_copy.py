"""The court copy: tiles in seat order, everyone on the room clock, lip-sync measured.

The inputs are written by the real ``TrackRecorder`` (as a live room writes them) from
synthetic media in which each seat flashes white and beeps at the same known moments; the test
finds the flashes in the output's tiles and the beeps in its audio and compares the times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from mediation_rooms.court_copy import (
    BAR_HEIGHT,
    TILE_HEIGHT,
    TILE_WIDTH,
    CourtCopySpec,
    Overlay,
    _bar_text,
    recorded_files,
    render_court_copy,
)
from mediation_rooms.forwarding import ForwardedFrame
from mediation_rooms.recording import RoomClock, TrackFile, TrackRecorder, container_for

FPS = 30
LIVE_SINCE = 1_790_000_000.0  # epoch seconds of room time 0


class LegacyTsRecorder:
    """Writes H.264 as ``TrackRecorder`` did before it used Matroska: Annex B packets in
    MPEG-TS, flushed packet by packet, on the same room clock (``{seat}-video-NN.ts``)."""

    def __init__(self, clock: RoomClock, info: TrackFile) -> None:
        self.clock, self.info = clock, info
        self._container: Any = None
        self._stream: Any = None
        self._anchor = (0, 0)

    def write(self, frame: ForwardedFrame) -> None:
        if self._container is None:
            if not frame.keyframe:
                return
            self._container = av.open(
                str(self.info.path), "w", format="mpegts", options={"flush_packets": "1"}
            )
            self._stream = self._container.add_mux_stream("h264")
            self._stream.time_base = Fraction(1, 1000)
            self._anchor = (self.clock.ms(frame.arrival), frame.pts)
        ms = self._anchor[0] + (frame.pts - self._anchor[1]) // 90
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = ms
        packet.time_base = Fraction(1, 1000)
        packet.stream = self._stream
        packet.is_keyframe = frame.keyframe
        self._container.mux(packet)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()


def _record_seat(
    directory: Path,
    seat: str,
    part: int,
    start_ms: int,
    seconds: float,
    events_ms: list[int],
    size: tuple[int, int] = (640, 480),
    codec: str = "VP8",
    legacy_ts: bool = False,
) -> None:
    """Record one seat's part as the live recorder would: the picture is dark except for
    100 ms white flashes at ``events_ms`` (room time), the sound silent except for 100 ms
    beeps at the same moments. ``codec`` is the room's video codec (``VP8``: ``.webm``,
    ``H264``: ``.mkv``, or with ``legacy_ts`` the ``.ts`` that H.264 rooms were recorded in
    before)."""
    clock = RoomClock(LIVE_SINCE)
    arrival = clock.started + start_ms / 1000  # room time of the first frame
    width, height = size

    if codec == "H264":
        video_encoder = av.CodecContext.create("libx264", "w")
        video_encoder.profile = "Baseline"
        video_encoder.options = {"preset": "veryfast", "tune": "zerolatency", "threads": "1"}
        video_encoder.framerate = Fraction(FPS, 1)
    else:
        video_encoder = av.CodecContext.create("libvpx", "w")
        video_encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    video_encoder.width, video_encoder.height, video_encoder.pix_fmt = width, height, "yuv420p"
    video_encoder.time_base = Fraction(1, FPS)
    video_encoder.gop_size = FPS
    suffix = "ts" if legacy_ts else container_for(codec)[1]
    info = TrackFile(seat, "video", part, directory / f"{seat}-video-{part:02d}.{suffix}", codec)
    video: TrackRecorder | LegacyTsRecorder = (
        LegacyTsRecorder(clock, info) if legacy_ts else TrackRecorder(clock, info, codec, 90_000)
    )
    for index in range(int(seconds * FPS)):
        at_ms = start_ms + index * 1000 / FPS
        lit = any(event <= at_ms < event + 100 for event in events_ms)
        picture = np.full((height * 3 // 2, width), 128, np.uint8)  # grey chroma
        picture[:height] = 235 if lit else 40
        frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
        frame.pts = index
        for packet in video_encoder.encode(frame):
            video.write(
                ForwardedFrame(
                    bytes(packet),
                    index * 3000,
                    Fraction(1, 90_000),
                    packet.is_keyframe,
                    arrival,
                )
            )
    video.close()

    audio_encoder = av.CodecContext.create("libopus", "w")
    audio_encoder.sample_rate, audio_encoder.layout, audio_encoder.format = 48_000, "stereo", "s16"
    audio = TrackRecorder(
        clock,
        TrackFile(seat, "audio", part, directory / f"{seat}-audio-{part:02d}.webm", "opus"),
        "opus",
        48_000,
    )
    samples = 960
    for index in range(int(seconds * 50)):
        at_ms = start_ms + index * 20
        t = (np.arange(samples) + index * samples) / 48_000
        loud = any(event <= at_ms < event + 100 for event in events_ms)
        tone = (np.sin(2 * np.pi * 1000 * t) * (20000 if loud else 0)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = 48_000, index * samples
        for packet in audio_encoder.encode(frame):
            audio.write(
                ForwardedFrame(bytes(packet), int(packet.pts), Fraction(1, 48_000), True, arrival)
            )
    audio.close()


def _tile_brightness(path: Path, tiles: int) -> tuple[list[float], list[list[float]]]:
    """(frame times in ms, per-tile mean luma of the tile's centre) for every output frame."""
    times: list[float] = []
    brightness: list[list[float]] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            luma = frame.to_ndarray()[: frame.height]
            times.append(float(frame.pts * stream.time_base * 1000))
            centre = luma[TILE_HEIGHT // 4 : TILE_HEIGHT * 3 // 4]
            brightness.append(
                [
                    float(
                        centre[
                            :, (4 * i + 1) * TILE_WIDTH // 4 : (4 * i + 3) * TILE_WIDTH // 4
                        ].mean()
                    )
                    for i in range(tiles)
                ]
            )
    return times, brightness


def _audio(path: Path) -> tuple[np.ndarray, int]:
    """(mono samples, the first sample's time in samples) of the output's audio."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks, first = [], None
        for frame in container.decode(stream):
            if first is None:
                first = int(frame.pts * stream.time_base * frame.sample_rate)
            chunks.append(frame.to_ndarray().mean(axis=0))
    return np.concatenate(chunks), first or 0


def _onsets_ms(values: Any, times_ms: np.ndarray, threshold: float) -> list[float]:
    """Times at which ``values`` rise through ``threshold``."""
    above = np.asarray(values) > threshold
    rising = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    return [float(times_ms[i]) for i in rising]


def test_three_seats_side_by_side_in_sync(tmp_path: Path) -> None:
    flashes = [1000, 2500, 4000]
    _record_seat(tmp_path, "mediator", 1, 0, 5, flashes)
    # The applicant joined late and from a phone held upright.
    _record_seat(tmp_path, "applicant", 1, 700, 4.3, flashes, size=(480, 640))
    # The respondent dropped out at 2 s and came back at 3 s (a second part).
    _record_seat(tmp_path, "respondent", 1, 0, 2.0, flashes)
    _record_seat(tmp_path, "respondent", 2, 3000, 2.0, flashes)
    assert [f.path.name for f in recorded_files(tmp_path)] == [
        "mediator-audio-01.webm",
        "mediator-video-01.webm",
        "applicant-audio-01.webm",
        "applicant-video-01.webm",
        "respondent-audio-01.webm",
        "respondent-audio-02.webm",
        "respondent-video-01.webm",
        "respondent-video-02.webm",
    ]
    progress: list[float] = []
    output = tmp_path / "court-copy.mp4"
    result = render_court_copy(
        CourtCopySpec(tmp_path, output, "JF20261122-0001", LIVE_SINCE, duration_ms=5000),
        progress.append,
    )
    assert result.seats == ("mediator", "applicant", "respondent")
    assert progress[-1] == 1.0 and progress == sorted(progress)
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".partial")]

    with av.open(str(output)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (
            3 * TILE_WIDTH,
            TILE_HEIGHT + BAR_HEIGHT,
        )
        assert container.streams.audio[0].codec_context.name == "aac"
        assert abs(float(container.duration / av.time_base) - 5.0) < 0.2

    times, brightness = _tile_brightness(output, 3)
    frame_times = np.asarray(times)
    # The respondent was away at 2.5 s: their tile has only two flashes.
    for tile, seen_flashes in enumerate([flashes, flashes, [1000, 4000]]):
        onsets = _onsets_ms([b[tile] for b in brightness], frame_times, 150)
        assert len(onsets) == len(seen_flashes), (tile, onsets)
        for onset, flash in zip(onsets, seen_flashes, strict=True):
            assert flash <= onset < flash + 1000 / 25 + 1000 / FPS + 1, (tile, onset, flash)
    # Before the applicant's first frame their tile is the grey "no picture" one; during the
    # respondent's one-second gap their last picture is held (a gap over 2 s would go grey).
    assert 55 < brightness[0][1] < 65
    at_2900 = int(np.searchsorted(frame_times, 2900))
    assert 30 < brightness[at_2900][2] < 50

    samples, first = _audio(output)
    sample_times = (np.arange(len(samples)) + first) / 48.0
    envelope = np.convolve(np.abs(samples), np.ones(96) / 96, mode="same")
    beeps = _onsets_ms(envelope, sample_times, 0.05)
    assert len(beeps) == 3, beeps
    video_onsets = _onsets_ms([max(b) for b in brightness], frame_times, 150)
    for beep, flash, seen in zip(beeps, flashes, video_onsets, strict=True):
        assert abs(beep - flash) < 30, (beep, flash)  # audio placed on the room clock
        assert abs(seen - beep) <= 100, (seen, beep)  # lip-sync


def test_a_file_cut_short_by_a_crash_still_renders(tmp_path: Path) -> None:
    _record_seat(tmp_path, "mediator", 1, 0, 3, [1000])
    _record_seat(tmp_path, "applicant", 1, 0, 3, [1000])
    damaged = tmp_path / "applicant-video-01.webm"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size * 2 // 3])
    result = render_court_copy(
        CourtCopySpec(tmp_path, tmp_path / "court.mp4", "JF20261122-0002", LIVE_SINCE, 3000)
    )
    assert result.seats == ("mediator", "applicant")
    with av.open(str(tmp_path / "court.mp4")) as container:
        assert container.streams.video[0].codec_context.width == 2 * TILE_WIDTH


def test_nothing_to_render_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "timeline.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="no recording"):
        render_court_copy(CourtCopySpec(tmp_path, tmp_path / "x.mp4", "JF1", LIVE_SINCE, 1000))


def test_the_child_process_entry_reports_progress_as_json_lines(tmp_path: Path) -> None:
    _record_seat(tmp_path, "mediator", 1, 0, 2, [])
    spec = CourtCopySpec(tmp_path, tmp_path / "c.mp4", "JF20261122-0003", LIVE_SINCE, 2000)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json(), encoding="utf-8")
    assert CourtCopySpec.from_json(spec.to_json()) == spec
    run = subprocess.run(
        [sys.executable, "-m", "mediation_rooms.court_copy", str(spec_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert lines[-2] == {"progress": 1.0}
    assert lines[-1]["done"] == str(tmp_path / "c.mp4") and lines[-1]["video_frames"] == 50


def test_h264_rooms_render_from_matroska_and_from_the_older_mpeg_ts(tmp_path: Path) -> None:
    flashes = [500, 1500]
    _record_seat(tmp_path, "mediator", 1, 0, 2, flashes, size=(320, 240), codec="H264")
    # Recorded before H.264 went into Matroska, from a camera with a 16:9 picture.
    _record_seat(
        tmp_path, "applicant", 1, 300, 1.7, flashes, size=(320, 180), codec="H264", legacy_ts=True
    )
    assert [f.path.name for f in recorded_files(tmp_path)] == [
        "mediator-audio-01.webm",
        "mediator-video-01.mkv",
        "applicant-audio-01.webm",
        "applicant-video-01.ts",
    ]
    output = tmp_path / "court-copy.mp4"
    result = render_court_copy(CourtCopySpec(tmp_path, output, "JF20261122-0004", LIVE_SINCE, 2000))
    assert result.seats == ("mediator", "applicant")
    times, brightness = _tile_brightness(output, 2)
    frame_times = np.asarray(times)
    for tile in range(2):
        onsets = _onsets_ms([b[tile] for b in brightness], frame_times, 150)
        assert len(onsets) == len(flashes), (tile, onsets)
        for onset, flash in zip(onsets, flashes, strict=True):
            assert flash <= onset < flash + 1000 / 25 + 1000 / FPS + 1, (tile, onset, flash)
    # Before the applicant's first frame (300 ms) their tile is the "no picture" one.
    assert 55 < brightness[0][1] < 65


def _luma_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]


def test_the_overlay_names_each_seat_and_shows_the_case_and_the_time(tmp_path: Path) -> None:
    for seat in ("mediator", "applicant"):
        _record_seat(tmp_path, seat, 1, 0, 3, [])
    spec = CourtCopySpec(tmp_path, tmp_path / "court.mp4", "JF20261122-0009", LIVE_SINCE, 3000)
    render_court_copy(spec)
    frames = _luma_frames(spec.output)
    width = 2 * TILE_WIDTH

    # The bar: the case number, China time and the time since the session went live.
    china = timezone(timedelta(hours=8))
    for at_ms in (400, 2400):
        wall = datetime.fromtimestamp(LIVE_SINCE + at_ms / 1000, china)
        assert _bar_text(spec, at_ms) == (
            f"JF20261122-0009    {wall:%Y-%m-%d %H:%M:%S} (UTC+8)    00:00:0{at_ms // 1000}"
        )
    overlay = Overlay(spec.font_file)  # the font the render chose
    early, late = (overlay.bar(_bar_text(spec, at), width).astype(float) for at in (400, 2400))
    changed = np.abs(early - late) > 100  # the pixels of the digits that differ
    assert changed.sum() > 50
    for index, expected, other in ((10, early, late), (60, late, early)):  # 25 fps
        bar = frames[index][TILE_HEIGHT:].astype(float)
        assert bar.shape == expected.shape
        assert np.corrcoef(bar.ravel(), expected.ravel())[0, 1] > 0.9
        # Where the two moments' texts differ, the frame shows its own moment's.
        own = np.abs(bar[changed] - expected[changed]).mean()
        assert own < 30 < np.abs(bar[changed] - other[changed]).mean(), (index, own)

    # Each tile is labelled with its own seat, at its top left corner.
    labels = {seat: overlay.label(seat).astype(float) for seat in ("mediator", "applicant")}
    assert labels["mediator"].shape != labels["applicant"].shape or np.any(
        labels["mediator"] != labels["applicant"]
    )
    frame = frames[30].astype(float)
    for tile, seat in enumerate(("mediator", "applicant")):
        height, label_width = labels[seat].shape
        region = frame[8 : 8 + height, tile * TILE_WIDTH + 8 : tile * TILE_WIDTH + 8 + label_width]
        text = labels[seat] > 128
        # White text on the darkened box: the label's glyphs are bright, the rest dark.
        assert region[text].mean() > 180 > 60 > region[~text].mean(), (seat, region[text].mean())
