"""``jiefen bench rooms``: N three-party rooms of synthetic participants against a real server.

Starts one ``jiefen serve`` subprocess (embedded defaults in a temporary data directory, or the
Redis and PostgreSQL given), so that its CPU time is measured alone, then opens N rooms one
after another. In each, the applicant and the respondent join and wait in the waiting room,
the mediator joins and admits them, and all three send a pre-encoded 640×480@30 fps VP8 clip
(~800 kb/s) and Opus through the real signalling; recording is on (it starts when the room goes
live). The participants are aiortc peers in this process (:class:`SyntheticPeer`), so they
share the machine's cores with the server. Once every room is joined and media flows, a window
of ``seconds`` is measured; then every sender stops at a mark, the mediator ends each room, and
the recorded files are counted against what was sent.

What each figure means is stated once, in :data:`DEFINITIONS`, which the table prints and the
JSON document carries (``definitions``). The targets of the issue are checked, not enforced:
the command fails (exit 1) only when the run itself cannot complete.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import av
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from bot.bench_webhook import ServerNotReady, free_port, wait_until_healthy
from cases.draft import CaseDraft, Category, LanguageNeed, MediationMode, Place
from config.routing import load_routing_table
from mediation_rooms.synthetic_peer import Clip, ReplayTrack, SyntheticPeer, synthetic_clip
from state import case_store
from state.db import create_engine
from state.personal_data import PersonalDataProtector

SEATS = ("mediator", "applicant", "respondent")
PARTIES = ("applicant", "respondent")
APPLICANT_ID_NUMBER = "53010219900307608X"  # valid GB 11643 checksum; not a real person
RESPONDENT_PHONE = "13900139000"
IDENTITY = {"mediator": None, "applicant": APPLICANT_ID_NUMBER[-6:], "respondent": RESPONDENT_PHONE}

TARGET_FPS = 29.0
TARGET_COMPLETENESS = 1.0
TARGET_FIRST_FRAME_S = 1.0
TARGET_CORES_PER_ROOM = 0.12

#: How long the senders keep quiet before ``end``, for frames in flight and retransmissions.
DRAIN_S = 1.0
#: Media settles this long after the last room joined before the window opens.
SETTLE_S = 1.0
STEP_TIMEOUT_S = 20.0
#: The server gets this long to exit after SIGTERM, then it is killed.
STOP_TIMEOUT_S = 10.0

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
    "server_cores": "utime+stime of the server process (/proc/<pid>/stat) over the window "
    "divided by the window's wall time; one process serves every room, so per room = total / N",
    "client_cores": "CPU time of this process (all 3×N synthetic participants) over the window",
}


class BenchError(RuntimeError):
    """The benchmark could not run to the end (server start, a join, the recordings)."""


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
    data_dir: str | None


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
    server = _Server(options, data_dir)
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


class _Server:
    """The ``jiefen serve`` subprocess under test, its settings and its log."""

    def __init__(self, options: BenchOptions, data_dir: Path) -> None:
        self.options = options
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = uuid.uuid4().hex
        self.data_key = os.urandom(32)
        self.redis_prefix = f"jiefen-bench-rooms:{uuid.uuid4().hex[:8]}:"
        self.database_url = options.database_url or (
            f"sqlite+aiosqlite:///{(data_dir / 'jiefen.db').as_posix()}"
        )
        self.log = data_dir / "server.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIEFEN_")}
        env.update(
            JIEFEN_DATA_DIR=str(self.data_dir),
            JIEFEN_DATABASE_URL=self.database_url,
            JIEFEN_ADMIN_API_TOKEN=self.admin_token,
            JIEFEN_DATA_KEY=base64.b64encode(self.data_key).decode(),
            JIEFEN_VIDEO_CODEC="VP8",
            JIEFEN_LOG_LEVEL="WARNING",
            JIEFEN_EVENT_LOOP=self.options.event_loop,
        )
        if self.options.redis_url:
            env.update(
                JIEFEN_REDIS_URL=self.options.redis_url, JIEFEN_REDIS_PREFIX=self.redis_prefix
            )
        command = [sys.executable, "-m", "jiefen.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--role", "all"]
        _status("starting jiefen serve")
        log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *command, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            os.close(log)
        process = self.process
        try:
            await wait_until_healthy(self.url, lambda: process.returncode is not None, timeout_s=60)
        except ServerNotReady as error:
            raise BenchError(f"{error}:\n{self.tail()}") from None

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; deletes the Redis keys of a real Redis."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.options.redis_url:
            import redis.asyncio as aioredis

            redis = aioredis.from_url(self.options.redis_url)
            try:
                keys = [k async for k in redis.scan_iter(match=f"{self.redis_prefix}*", count=500)]
                if keys:
                    await redis.delete(*keys)
            finally:
                await redis.aclose()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """utime + stime of the server process, from /proc (threads included)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def file_case(self, index: int) -> str:
        """A case in the server's database (a video mediation), as intake would file it."""
        engine = create_engine(self.database_url)
        try:
            now = datetime.now(UTC)
            created = await case_store.create_case(
                engine,
                CaseDraft(
                    category=Category.NEIGHBOUR,
                    applicant_name="张三",
                    applicant_phone="13800138000",
                    applicant_id_number=APPLICANT_ID_NUMBER,
                    respondent_name="李四",
                    respondent_phone=RESPONDENT_PHONE,
                    place=Place("官渡区关上街道某小区"),
                    facts="楼上漏水，多次沟通无果。",
                    claim="赔偿维修费",
                    amount_yuan=Decimal("3500"),
                    mode=MediationMode.VIDEO,
                    language=LanguageNeed(),
                ),
                applicant_openid=f"o_bench_rooms_{index:04d}",
                organisation=load_routing_table(None).default,
                accept_deadline=(now + timedelta(days=7)).date(),
                intake=[],
                protector=PersonalDataProtector(self.data_key),
                now=now,
                submission_key=f"bench-rooms-{uuid.uuid4().hex}",
            )
        finally:
            await engine.dispose()
        return created.case_no

    async def open_room(self, session: aiohttp.ClientSession, case_no: str) -> dict[str, Any]:
        async with session.post(
            f"{self.url}/api/rooms",
            json={"case_no": case_no, "mediator_name": "王调解员"},
            headers={"Authorization": f"Bearer {self.admin_token}"},
        ) as response:
            if response.status != 201:
                raise BenchError(f"POST /api/rooms: {response.status} {await response.text()}")
            opened: dict[str, Any] = await response.json()
            return opened


class CountedTrack(ReplayTrack):
    """A :class:`ReplayTrack` that starts when ``gate`` opens and stops at a mark.

    ``frames_sent`` is the number of frames handed to the RTP sender up to :meth:`halt`. One
    more frame follows the mark, uncounted, so that a receiver's jitter buffer (which releases
    a frame only when the next one's first packet arrives) releases the last counted one; after
    that the track sends nothing.
    """

    def __init__(self, kind: str, clip: Clip, gate: asyncio.Event) -> None:
        super().__init__(kind, clip)
        self._gate = gate
        self._mark: int | None = None
        self._stopped = asyncio.Event()

    @property
    def frames_sent(self) -> int:
        return self.sent if self._mark is None else self._mark

    def halt(self) -> None:
        if self._mark is None:
            self._mark = self.sent

    async def recv(self) -> Any:
        await self._gate.wait()
        if self._mark is not None and self.sent > self._mark:
            await self._stopped.wait()
            raise MediaStreamError
        return await super().recv()

    def stop(self) -> None:
        super().stop()
        self._stopped.set()


class Participant:
    """One seat: a signalling connection driven as the join page would, and its peer."""

    def __init__(self, seat: str, token: str, clip: Clip) -> None:
        self.seat = seat
        self.token = token
        # The mediator's media waits for the room to go live, so that all it sends is recorded.
        self.gate = asyncio.Event()
        if seat != "mediator":
            self.gate.set()
        self.peer = SyntheticPeer(clip)
        self.video = CountedTrack("video", clip, self.gate)
        self.audio = CountedTrack("audio", clip, self.gate)
        self.peer.video_track, self.peer.audio_track = self.video, self.audio
        self.join_sent_at = 0.0
        self.waiting_at: float | None = None
        self.admitted_at: float | None = None
        self.waiting = asyncio.Event()
        self.ended = asyncio.Event()
        self.failure: str | None = None
        self._admit_sent: set[str] = set()
        self._rtx_ssrcs: set[int] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def join(self, session: aiohttp.ClientSession, url: str) -> None:
        """Join as the page does: ask where the room is hosted, then open that socket (the
        time to first frame counts from the placement request)."""
        self.join_sent_at = time.monotonic()
        async with session.post(f"{url}/rooms/placement", json={"token": self.token}) as response:
            placed = await response.json()
            if response.status != 200:
                raise RuntimeError(f"placement refused for {self.seat}: {placed}")
        self._ws = await session.ws_connect(urljoin(url, placed["signalling_url"]))
        self._reader = asyncio.create_task(self._read(), name=f"bench-{self.seat}")
        await self.send(
            "join",
            token=self.token,
            identity=IDENTITY[self.seat],
            consent_recording=True,
            acknowledged_notices=True,
        )

    async def send(self, kind: str, **fields: Any) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps({"type": kind, **fields}))

    async def _read(self) -> None:
        assert self._ws is not None
        async for raw in self._ws:
            if raw.type != aiohttp.WSMsgType.TEXT:
                break
            try:
                await self._on_message(json.loads(raw.data))
            except Exception as error:  # a participant that fails ends the run, with the reason
                self.failure = f"{self.seat}: {error!r}"
                break
        if not self.ended.is_set() and self.failure is None:
            self.failure = f"{self.seat}: socket closed ({self._ws.close_code})"

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        now = time.monotonic()
        if kind == "waiting":
            self.waiting_at = now
            self.waiting.set()
        elif kind == "admitted":
            self.admitted_at = now
        elif kind == "offer":
            if self.peer.tracks:
                raise BenchError("a second offer (the connection was replaced?)")
            await self.send("answer", sdp=await self.peer.answer(message["sdp"], message["tracks"]))
        elif kind == "presence" and self.seat == "mediator":
            for person in message["participants"]:
                if person["waiting"] and person["seat"] not in self._admit_sent:
                    self._admit_sent.add(person["seat"])
                    await self.send("admit", seat=person["seat"])
            if message["state"] == "live":
                self.gate.set()
        elif kind == "ended":
            self.ended.set()
        elif kind == "error":
            raise BenchError(f"server error {message.get('code')}: {message.get('message')}")

    def check(self) -> None:
        if self.failure is not None:
            raise BenchError(self.failure)

    @property
    def waiting_room_s(self) -> float:
        if self.waiting_at is None or self.admitted_at is None:
            return 0.0
        return self.admitted_at - self.waiting_at

    def first_frame_s(self, publisher: str) -> float | None:
        at = self.peer.received_from(publisher, "video").first_frame_at
        return None if at is None else at - self.join_sent_at - self.waiting_room_s

    def others(self) -> list[str]:
        return [seat for seat in SEATS if seat != self.seat]

    def video_frames(self) -> dict[str, int]:
        return {seat: self.peer.received_from(seat, "video").frames for seat in self.others()}

    async def packet_counts(self) -> dict[tuple[str, str], tuple[int, int] | None]:
        """(publisher, kind) -> (packets received, packets lost), from the receivers' stats.

        ``None`` where the stats do not show the media stream: aiortc 1.16 files every SSRC of
        a receiver under one stats id, so once a retransmission (RTX) arrived, the RTX stream's
        entry hides the media stream's.
        """
        if self._rtx_ssrcs is None:
            self._rtx_ssrcs = _rtx_ssrcs(self.peer.pc.remoteDescription.sdp)
        counts: dict[tuple[str, str], tuple[int, int] | None] = {}
        for transceiver in self.peer.pc.getTransceivers():
            slot = self.peer.tracks.get(transceiver.mid or "")
            if slot is None or slot[0] == self.seat:
                continue
            counts[slot] = (0, 0)
            for stats in (await transceiver.receiver.getStats()).values():
                if getattr(stats, "type", None) != "inbound-rtp":
                    continue
                if stats.ssrc in self._rtx_ssrcs:
                    counts[slot] = None
                else:
                    counts[slot] = (stats.packetsReceived, max(0, stats.packetsLost))
        return counts

    def halt(self) -> None:
        self.video.halt()
        self.audio.halt()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.peer.close()


@dataclass
class _Room:
    room_id: str
    case_no: str
    participants: dict[str, Participant] = field(default_factory=dict)


@dataclass(frozen=True)
class _Snapshot:
    at: float
    server_cpu: float
    client_cpu: float
    loadavg: list[float]
    frames: dict[tuple[str, str, str], int]  # (room_id, subscriber, publisher)
    packets: dict[tuple[str, str, str, str], tuple[int, int] | None]  # ..., kind


async def _drive(options: BenchOptions, server: _Server) -> BenchFigures:
    clip = synthetic_clip()
    rooms: list[_Room] = []
    async with aiohttp.ClientSession() as session:
        try:
            for index in range(options.rooms):
                _status(f"room {index + 1}/{options.rooms}: joining")
                rooms.append(await _join_room(server, session, clip, index))
            await _sleep_checked(rooms, SETTLE_S)
            before = await _snapshot(server, rooms)
            while (elapsed := time.monotonic() - before.at) < options.seconds:
                _progress(elapsed, options.seconds)
                await _sleep_checked(rooms, min(0.25, options.seconds - elapsed))
            after = await _snapshot(server, rooms)
            _progress(options.seconds, options.seconds)
            sys.stderr.write("\n")
            _status("stopping the senders, ending the rooms")
            for room in rooms:
                for participant in room.participants.values():
                    participant.halt()
            await asyncio.sleep(DRAIN_S)
            await asyncio.gather(*(_end_room(server, room) for room in rooms))
        finally:
            for room in rooms:
                await asyncio.gather(*(p.close() for p in room.participants.values()))
    recorded = {
        room.room_id: await asyncio.to_thread(_count_recorded, server.data_dir, room.room_id)
        for room in rooms
    }
    _status("")
    return _figures(options, server, rooms, before, after, recorded)


async def _join_room(
    server: _Server, session: aiohttp.ClientSession, clip: Clip, index: int
) -> _Room:
    """File a case, open its room; the parties wait, the mediator joins and admits them."""
    case_no = await server.file_case(index)
    opened = await server.open_room(session, case_no)
    room = _Room(opened["room_id"], case_no)
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


async def _end_room(server: _Server, room: _Room) -> None:
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


async def _until(rooms: list[_Room], condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition``; BenchError if a participant of ``rooms`` failed, or on timeout."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not condition():
        for room in rooms:
            for participant in room.participants.values():
                participant.check()
        if time.monotonic() > deadline:
            raise BenchError(f"waited {STEP_TIMEOUT_S:.0f} s for {what}")
        await asyncio.sleep(0.02)


async def _sleep_checked(rooms: list[_Room], seconds: float) -> None:
    await asyncio.sleep(seconds)
    for room in rooms:
        for participant in room.participants.values():
            participant.check()


async def _snapshot(server: _Server, rooms: list[_Room]) -> _Snapshot:
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
    return _Snapshot(
        at=at,
        server_cpu=server_cpu,
        client_cpu=times.user + times.system,
        loadavg=_loadavg(),
        frames=frames,
        packets=packets,
    )


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _rtx_ssrcs(sdp: str) -> set[int]:
    """The retransmission SSRCs an offer announces (second SSRC of each ``FID`` group)."""
    return {
        int(group.items[1])
        for media in SessionDescription.parse(sdp).media
        for group in media.ssrc_group
        if group.semantic == "FID" and len(group.items) > 1
    }


def _count_recorded(data_dir: Path, room_id: str) -> dict[str, tuple[int, int]]:
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


def _figures(
    options: BenchOptions,
    server: _Server,
    rooms: list[_Room],
    before: _Snapshot,
    after: _Snapshot,
    recorded: dict[str, dict[str, tuple[int, int]]],
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


def _status(text: str) -> None:
    sys.stderr.write(f"\r\033[K{text}")
    sys.stderr.flush()


def _progress(elapsed: float, total: float) -> None:
    width = 30
    filled = int(width * min(elapsed, total) / total)
    _status(f"[{'#' * filled}{'.' * (width - filled)}] {elapsed:4.1f}/{total:g} s measuring")


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
