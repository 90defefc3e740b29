"""What ``jiefen bench rooms`` measures and reports: the figures, their definitions and targets.

A :class:`Snapshot` takes every counter at one moment (the server's and this process's CPU
time, the frames and packets each subscriber received); :func:`count_recorded` counts the
video packets in each seat's recorded files; :func:`compute_figures` turns two snapshots and
those counts into :class:`BenchFigures`, with the targets of the issue checked;
:func:`print_table` prints them for people (``--json`` prints the dataclasses as they are).
What each figure means is stated once, in :data:`DEFINITIONS`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av

from mediation_rooms.bench_rooms_participant import SEATS

if TYPE_CHECKING:
    from mediation_rooms.bench_rooms import BenchOptions
    from mediation_rooms.bench_rooms_participant import BenchRoom
    from mediation_rooms.bench_rooms_server import BenchServer

TARGET_FPS = 29.0
TARGET_COMPLETENESS = 1.0
TARGET_FIRST_FRAME_S = 1.0
TARGET_CORES_PER_ROOM = 0.12

DEFINITIONS = {
    "fps": "video frames from one other seat re-assembled by the subscriber during the window, "
    "divided by the window's wall time",
    "loss": "from the subscriber's aiortc receiver stats (getStats, inbound-rtp) over the "
    "window: packetsLost / (packetsReceived + packetsLost) of the media stream (server to "
    "subscriber), before retransmission; null / n/a where aiortc's report shows the RTX "
    "stream in its place",
    "join_to_first_frame": "from sending `join` to the first video frame re-assembled from any "
    "other seat, less the time in the waiting room (`waiting` to `admitted`); rooms join one "
    "after another while the earlier rooms stream",
    "completeness": "video packets in the seat's recorded files (all parts, demuxed with PyAV) "
    "divided by the frames the seat's sending track produced; the senders start once the room "
    "is live (recording on) and stop at a mark before `end`, followed by one uncounted frame "
    "(aiortc's jitter buffer releases a frame only when the next one begins)",
    "host_calibration_ms": "CPU time of a fixed pure-Python workload on this machine, taken "
    "before the rooms join (jiefen.host_speed): CPU figures of two runs compare in "
    "proportion to it",
    "server_cores": "utime+stime of the server process (/proc/<pid>/stat) over the window "
    "divided by the window's wall time; one process serves every room, so per room = total / N",
    "client_cores": "CPU time of this process (all 3×N synthetic participants) over the window",
}


@dataclass(frozen=True)
class StreamFigures:
    """One subscriber receiving one other seat, over the window."""

    publisher: str
    video_frames: int
    fps: float
    #: ``None``: aiortc's stats showed the retransmission stream instead (see packet_counts).
    video_packets_received: int | None
    video_packets_lost: int | None
    video_loss: float | None
    audio_packets_received: int | None
    audio_packets_lost: int | None
    audio_loss: float | None
    #: From this seat's join (less its waiting-room time) to the first frame from ``publisher``.
    first_frame_s: float | None


@dataclass(frozen=True)
class SeatFigures:
    seat: str
    join_to_first_frame_s: float | None
    waiting_room_s: float
    frames_sent: int
    frames_recorded: int
    recorded_parts: int
    completeness: float
    received: list[StreamFigures]


@dataclass(frozen=True)
class RoomFigures:
    room_id: str
    case_no: str
    #: The server's cores over the window divided by the number of rooms (one process).
    server_cores: float
    min_fps: float
    #: ``None`` when no subscriber's video loss could be read.
    max_video_loss: float | None
    max_join_to_first_frame_s: float | None
    min_completeness: float
    seats: list[SeatFigures]


@dataclass(frozen=True)
class TargetCheck:
    """One target of the issue against the worst value measured (over rooms and seats)."""

    name: str
    target: str
    measured: float | None
    #: ``measured`` for people: with its unit, or a percentage.
    shown: str
    met: bool


@dataclass(frozen=True)
class BenchFigures:
    rooms: int
    window_s: float
    cpu_count: int
    loadavg_before: list[float]
    loadavg_after: list[float]
    server_pid: int
    server_cpu_s: float
    server_cores: float
    server_cores_per_room: float
    client_cores: float
    per_room: list[RoomFigures]
    targets: list[TargetCheck]
    notes: list[str]
    definitions: dict[str, str]
    #: This machine's speed (jiefen.host_speed): CPU figures compare in proportion to it.
    host_calibration_ms: float
    data_dir: str | None


@dataclass(frozen=True)
class Snapshot:
    at: float
    server_cpu: float
    client_cpu: float
    loadavg: list[float]
    frames: dict[tuple[str, str, str], int]  # (room_id, subscriber, publisher)
    packets: dict[tuple[str, str, str, str], tuple[int, int] | None]  # ..., kind


async def snapshot(server: BenchServer, rooms: list[BenchRoom]) -> Snapshot:
    """Every counter at one moment: the clock, both CPU times and the frame counts first, with
    no await between them; then the receivers' stats (aiortc computes them without yielding)."""
    at, server_cpu, times = time.monotonic(), server.cpu_seconds(), os.times()
    frames = {
        (room.room_id, seat, publisher): count
        for room in rooms
        for seat, participant in room.participants.items()
        for publisher, count in participant.video_frames().items()
    }
    packets: dict[tuple[str, str, str, str], tuple[int, int] | None] = {}
    for room in rooms:
        for seat, participant in room.participants.items():
            for (publisher, kind), pair in (await participant.packet_counts()).items():
                packets[(room.room_id, seat, publisher, kind)] = pair
    return Snapshot(
        at=at,
        server_cpu=server_cpu,
        client_cpu=times.user + times.system,
        loadavg=_loadavg(),
        frames=frames,
        packets=packets,
    )


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def count_recorded(data_dir: Path, room_id: str) -> dict[str, tuple[int, int]]:
    """seat -> (video packets in its recorded files, number of files)."""
    counts: dict[str, tuple[int, int]] = {}
    directory = data_dir / "recordings" / room_id
    for seat in SEATS:
        total = 0
        paths = sorted(directory.glob(f"{seat}-video-*.webm"))
        for path in paths:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                total += sum(1 for packet in container.demux(stream) if packet.size)
        counts[seat] = (total, len(paths))
    return counts


def compute_figures(
    options: BenchOptions,
    server: BenchServer,
    rooms: list[BenchRoom],
    before: Snapshot,
    after: Snapshot,
    recorded: dict[str, dict[str, tuple[int, int]]],
    host_calibration_ms: float,
) -> BenchFigures:
    window = after.at - before.at
    server_cpu = after.server_cpu - before.server_cpu
    server_cores = server_cpu / window
    per_room: list[RoomFigures] = []
    for room in rooms:
        seats: list[SeatFigures] = []
        for seat, participant in room.participants.items():
            streams = []
            for publisher in participant.others():
                key = (room.room_id, seat, publisher)
                frames = after.frames[key] - before.frames[key]
                video = _delta(before.packets, after.packets, (*key, "video"))
                audio = _delta(before.packets, after.packets, (*key, "audio"))
                streams.append(
                    StreamFigures(
                        publisher=publisher,
                        video_frames=frames,
                        fps=round(frames / window, 2),
                        video_packets_received=None if video is None else video[0],
                        video_packets_lost=None if video is None else video[1],
                        video_loss=_loss(video),
                        audio_packets_received=None if audio is None else audio[0],
                        audio_packets_lost=None if audio is None else audio[1],
                        audio_loss=_loss(audio),
                        first_frame_s=_round(participant.first_frame_s(publisher)),
                    )
                )
            firsts = [s.first_frame_s for s in streams if s.first_frame_s is not None]
            sent = participant.video.frames_sent
            frames_recorded, parts = recorded[room.room_id][seat]
            seats.append(
                SeatFigures(
                    seat=seat,
                    join_to_first_frame_s=min(firsts) if firsts else None,
                    waiting_room_s=round(participant.waiting_room_s, 3),
                    frames_sent=sent,
                    frames_recorded=frames_recorded,
                    recorded_parts=parts,
                    completeness=round(frames_recorded / sent, 4) if sent else 0.0,
                    received=streams,
                )
            )
        first_frames = [s.join_to_first_frame_s for s in seats]
        per_room.append(
            RoomFigures(
                room_id=room.room_id,
                case_no=room.case_no,
                server_cores=round(server_cores / len(rooms), 3),
                min_fps=min(r.fps for s in seats for r in s.received),
                max_video_loss=max(
                    (r.video_loss for s in seats for r in s.received if r.video_loss is not None),
                    default=None,
                ),
                max_join_to_first_frame_s=(
                    None if None in first_frames else max(f for f in first_frames if f is not None)
                ),
                min_completeness=min(s.completeness for s in seats),
                seats=seats,
            )
        )
    cores_per_room = server_cores / len(rooms)
    worst_first = [r.max_join_to_first_frame_s for r in per_room]
    first_frame = None if None in worst_first else max(f for f in worst_first if f is not None)
    min_fps = min(r.min_fps for r in per_room)
    min_completeness = min(r.min_completeness for r in per_room)
    targets = [
        TargetCheck(
            "fps delivered (min)",
            f">= {TARGET_FPS:g} fps",
            min_fps,
            f"{min_fps:.2f} fps",
            min_fps >= TARGET_FPS,
        ),
        TargetCheck(
            "recording complete (min)",
            f"{TARGET_COMPLETENESS:.0%}",
            min_completeness,
            f"{min_completeness:.2%}",
            min_completeness >= TARGET_COMPLETENESS,
        ),
        TargetCheck(
            "join→first frame (max)",
            f"< {TARGET_FIRST_FRAME_S:g} s",
            first_frame,
            "-" if first_frame is None else f"{first_frame:.3f} s",
            first_frame is not None and first_frame < TARGET_FIRST_FRAME_S,
        ),
        TargetCheck(
            "server CPU per room",
            f"<= {TARGET_CORES_PER_ROOM:g} core",
            round(cores_per_room, 3),
            f"{cores_per_room:.3f} core",
            cores_per_room <= TARGET_CORES_PER_ROOM,
        ),
    ]
    return BenchFigures(
        rooms=len(rooms),
        window_s=round(window, 3),
        cpu_count=os.cpu_count() or 1,
        loadavg_before=before.loadavg,
        loadavg_after=after.loadavg,
        server_pid=server.pid,
        server_cpu_s=round(server_cpu, 3),
        server_cores=round(server_cores, 3),
        server_cores_per_room=round(cores_per_room, 3),
        client_cores=round((after.client_cpu - before.client_cpu) / window, 3),
        per_room=per_room,
        targets=targets,
        notes=[
            "one `jiefen serve` process serves every room: per-room CPU is its total / rooms",
            f"the {3 * len(rooms)} synthetic participants run in the bench process and share "
            f"the machine's {os.cpu_count()} cores with the server",
            "rooms joined one after another; each joined while the earlier ones streamed",
            "the synthetic subscribers cannot recover a lost packet: aiortc 1.16 routes RTX "
            "by SSRC or by a payload type only one receiver has, and each of them has two video "
            "receivers on one bundle, so retransmissions are dropped; under loss, their fps is "
            "lower than a browser's would be",
        ],
        definitions=DEFINITIONS,
        host_calibration_ms=host_calibration_ms,
        data_dir=None,
    )


def _delta(
    before: dict[tuple[str, str, str, str], tuple[int, int] | None],
    after: dict[tuple[str, str, str, str], tuple[int, int] | None],
    key: tuple[str, str, str, str],
) -> tuple[int, int] | None:
    start, end = before.get(key), after.get(key)
    if start is None or end is None:
        return None
    return end[0] - start[0], max(0, end[1] - start[1])


def _loss(counts: tuple[int, int] | None) -> float | None:
    if counts is None:
        return None
    received, lost = counts
    return round(lost / (received + lost), 5) if received + lost else 0.0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def print_table(figures: BenchFigures) -> None:
    """The figures as text: one block per room, then the server, the clients and the targets."""
    load = " ".join(f"{x:.2f}" for x in figures.loadavg_before)
    load_after = " ".join(f"{x:.2f}" for x in figures.loadavg_after)
    print(
        f"{figures.rooms} room(s) × 3 participants, 640×480@30 fps VP8 (~800 kb/s) + Opus, "
        f"recording on; window {figures.window_s:.1f} s; load average {load} -> {load_after}"
    )
    for number, room in enumerate(figures.per_room, start=1):
        print(f"\nroom {number}  {room.case_no}  {room.room_id}")
        print(f"  {'seat':<11} {'join→1st frame':>14} {'sent':>6} {'recorded':>9} {'complete':>9}")
        for seat in room.seats:
            first = (
                "-" if seat.join_to_first_frame_s is None else f"{seat.join_to_first_frame_s:.3f} s"
            )
            print(
                f"  {seat.seat:<11} {first:>14} {seat.frames_sent:>6} "
                f"{seat.frames_recorded:>9} {seat.completeness:>9.2%}"
            )
        print(f"  {'subscriber':<11} {'from':<11} {'fps':>6} {'video loss':>11} {'audio loss':>11}")
        for seat in room.seats:
            for stream in seat.received:
                print(
                    f"  {seat.seat:<11} {stream.publisher:<11} {stream.fps:>6.2f} "
                    f"{_percent(stream.video_loss):>11} {_percent(stream.audio_loss):>11}"
                )
        print(f"  server CPU (total / rooms): {room.server_cores:.3f} core")
    print(
        f"\nserver: {figures.server_cores:.3f} cores ({figures.server_cpu_s:.2f} s CPU over "
        f"{figures.window_s:.1f} s) = {figures.server_cores_per_room:.3f} core per room"
    )
    print(f"clients: {figures.client_cores:.3f} cores (this process)")
    print(f"host calibration: {figures.host_calibration_ms} ms (lower is faster)")
    for note in figures.notes:
        print(f"  note: {note}")
    print("\ntargets:")
    for target in figures.targets:
        verdict = "met" if target.met else "NOT met"
        print(f"  {target.name:<25} {target.target:<13} {target.shown:>12}  {verdict}")
    print("\ndefinitions:")
    for name, text in figures.definitions.items():
        print(f"  {name}: {text}")
    if figures.data_dir:
        print(f"\ndata kept in {figures.data_dir}")


def _percent(ratio: float | None) -> str:
    return "n/a (rtx)" if ratio is None else f"{ratio:.3%}"
