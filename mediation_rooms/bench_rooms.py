"""``jiefen bench rooms``: N three-party rooms of synthetic participants against a real server.

Starts one ``jiefen serve`` subprocess (embedded defaults in a temporary data directory, or the
Redis and PostgreSQL given), so that its CPU time is measured alone, then opens N rooms one
after another. In each, the applicant and the respondent join and wait in the waiting room,
the mediator joins and admits them, and all three send a pre-encoded 640×480@30 fps VP8 clip
(~800 kb/s) and Opus through the real signalling; recording is on (it starts when the room goes
live). The participants are aiortc peers in this process
(:class:`~mediation_rooms.synthetic_peer.SyntheticPeer`), so they share the machine's cores
with the server. Once every room is joined and media flows, a window of ``seconds`` is
measured; then every sender stops at a mark, the mediator ends each room, and the recorded files
are counted against what was sent.

What each figure means is stated once, in
:data:`~mediation_rooms.bench_rooms_figures.DEFINITIONS`, which the table prints and the JSON
document carries (``definitions``). The targets of the issue are checked, not enforced: the
command fails (exit 1) only when the run itself cannot complete.

The parts: :mod:`~mediation_rooms.bench_rooms_server` (the server under test),
:mod:`~mediation_rooms.bench_rooms_participant` (the synthetic participants),
:mod:`~mediation_rooms.bench_rooms_figures` (the figures and the table); this module runs them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from jiefen.host_speed import calibration_ms
from mediation_rooms.bench_rooms_figures import (
    BenchFigures,
    compute_figures,
    count_recorded,
    print_table,
    snapshot,
)
from mediation_rooms.bench_rooms_participant import PARTIES, SEATS, BenchRoom, Participant
from mediation_rooms.bench_rooms_server import BenchError, BenchServer, status
from mediation_rooms.synthetic_peer import Clip, synthetic_clip

#: How long the senders keep quiet before ``end``, for frames in flight and retransmissions.
DRAIN_S = 1.0
#: Media settles this long after the last room joined before the window opens.
SETTLE_S = 1.0
STEP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class BenchOptions:
    """What to run: ``rooms`` rooms measured for ``seconds`` seconds."""

    rooms: int
    seconds: float
    #: Real Redis (a fresh key prefix, deleted afterwards); None: the in-process stand-in.
    redis_url: str | None = None
    #: SQLAlchemy URL of the server's database (cases and rooms are added to it); None: SQLite
    #: in the temporary data directory.
    database_url: str | None = None
    #: Keep the temporary data directory (recordings, server log) instead of deleting it.
    keep: bool = False
    #: ``Settings.event_loop`` for the server (the bench's own loop is its caller's choice).
    event_loop: str = "auto"

    def __post_init__(self) -> None:
        if self.rooms < 1:
            raise ValueError("--rooms must be at least 1")
        if self.seconds <= 0:
            raise ValueError("--seconds must be positive")


def run_benchmark(
    options: BenchOptions,
    *,
    as_json: bool = False,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int:
    """Run the benchmark and print its figures (a table, or one JSON document).

    Returns 0 when the run completed (missed targets are reported, not failed), 1 when it could
    not (the reason and the server log's tail go to standard error).
    """
    # The participants' ICE and the case filing narrate at INFO, over the progress bar.
    root = logging.getLogger()
    root.setLevel(max(root.level, logging.WARNING))
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            figures = runner.run(measure(options))
    except BenchError as error:
        print(f"\nbench rooms failed: {error}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(asdict(figures), indent=2, ensure_ascii=False))
    else:
        print_table(figures)
    return 0


async def measure(options: BenchOptions) -> BenchFigures:
    """Start the server, run the rooms, measure; always stops the server and cleans up."""
    data_dir = Path(tempfile.mkdtemp(prefix="jiefen-bench-rooms-"))
    server = BenchServer(options, data_dir)
    try:
        await server.start()
        try:
            figures = await _drive(options, server)
        except (BenchError, aiohttp.ClientError, OSError) as error:
            raise BenchError(f"{error}\n--- server log (tail) ---\n{server.tail()}") from error
        return figures if not options.keep else _with_data_dir(figures, data_dir)
    finally:
        await server.stop()
        if options.keep:
            print(f"kept {data_dir} (recordings, server.log)", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def _with_data_dir(figures: BenchFigures, data_dir: Path) -> BenchFigures:
    return dataclasses.replace(figures, data_dir=str(data_dir))


async def _drive(options: BenchOptions, server: BenchServer) -> BenchFigures:
    calibration = calibration_ms()  # before the load, which would slow it
    clip = synthetic_clip()
    rooms: list[BenchRoom] = []
    async with aiohttp.ClientSession() as session:
        try:
            for index in range(options.rooms):
                status(f"room {index + 1}/{options.rooms}: joining")
                rooms.append(await _join_room(server, session, clip, index))
            await _sleep_checked(rooms, SETTLE_S)
            before = await snapshot(server, rooms)
            while (elapsed := time.monotonic() - before.at) < options.seconds:
                _progress(elapsed, options.seconds)
                await _sleep_checked(rooms, min(0.25, options.seconds - elapsed))
            after = await snapshot(server, rooms)
            _progress(options.seconds, options.seconds)
            sys.stderr.write("\n")
            status("stopping the senders, ending the rooms")
            for room in rooms:
                for participant in room.participants.values():
                    participant.halt()
            await asyncio.sleep(DRAIN_S)
            await asyncio.gather(*(_end_room(server, room) for room in rooms))
        finally:
            for room in rooms:
                await asyncio.gather(*(p.close() for p in room.participants.values()))
    recorded = {
        room.room_id: await asyncio.to_thread(count_recorded, server.data_dir, room.room_id)
        for room in rooms
    }
    status("")
    return compute_figures(options, server, rooms, before, after, recorded, calibration)


async def _join_room(
    server: BenchServer, session: aiohttp.ClientSession, clip: Clip, index: int
) -> BenchRoom:
    """File a case, open its room; the parties wait, the mediator joins and admits them."""
    case_no = await server.file_case(index)
    opened = await server.open_room(session, case_no)
    room = BenchRoom(opened["room_id"], case_no)
    tokens = {seat: link.split("#", 1)[1] for seat, link in opened["links"].items()}
    room.participants = {seat: Participant(seat, tokens[seat], clip) for seat in SEATS}
    rooms = [room]
    try:
        for seat in PARTIES:
            await room.participants[seat].join(session, server.url)
        await _until(
            rooms,
            lambda: all(room.participants[s].waiting.is_set() for s in PARTIES),
            f"the parties of {room.room_id} to reach the waiting room",
        )
        await room.participants["mediator"].join(session, server.url)

        def flowing() -> bool:
            return all(
                all(frames > 0 for frames in participant.video_frames().values())
                for participant in room.participants.values()
            )

        await _until(rooms, flowing, f"video between every seat of {room.room_id}")
    except BaseException:
        await asyncio.gather(*(p.close() for p in room.participants.values()))
        raise
    return room


async def _end_room(server: BenchServer, room: BenchRoom) -> None:
    """The mediator ends the room; returns once the server has closed the recording."""
    await room.participants["mediator"].send("end")
    await _until(
        [],
        lambda: all(p.ended.is_set() for p in room.participants.values()),
        f"`ended` in {room.room_id}",
    )
    timeline = server.data_dir / "recordings" / room.room_id / "timeline.jsonl"

    def closed() -> bool:
        try:
            return '"recording_closed"' in timeline.read_text(encoding="utf-8")
        except OSError:
            return False

    await _until([], closed, f"the recording of {room.room_id} to close")


async def _until(rooms: list[BenchRoom], condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition``; BenchError if a participant of ``rooms`` failed, or on timeout."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not condition():
        for room in rooms:
            for participant in room.participants.values():
                participant.check()
        if time.monotonic() > deadline:
            raise BenchError(f"waited {STEP_TIMEOUT_S:.0f} s for {what}")
        await asyncio.sleep(0.02)


async def _sleep_checked(rooms: list[BenchRoom], seconds: float) -> None:
    await asyncio.sleep(seconds)
    for room in rooms:
        for participant in room.participants.values():
            participant.check()


def _progress(elapsed: float, total: float) -> None:
    width = 30
    filled = int(width * min(elapsed, total) / total)
    status(f"[{'#' * filled}{'.' * (width - filled)}] {elapsed:4.1f}/{total:g} s measuring")
