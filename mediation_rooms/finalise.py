"""Finalising a recording once its room has ended: court copy, digests, signed manifest, archive.

``RecordingFinaliser.finalise(room_id)`` is the whole job, and it is idempotent (the job queue
delivers at least once):

1. the room must be ``ended`` (an ``archived`` room with a manifest is already done);
2. the court copy (``court_copy.py``) is rendered in a child process at low priority, its
   progress kept in Redis (``room:<id>:finalise``) for the API and the console, the job's lease
   renewed as it goes;
3. every file of the directory is digested and listed with the case, room, participants and
   timeline in a manifest signed with the platform's Ed25519 key (``manifest.py``);
4. the room moves to ``archived``.

The room hub enqueues the job (:func:`enqueue_finalisation`) when the mediator ends a room;
``jiefen room finalise ROOM_ID`` runs it by hand with a progress bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from jiefen.errors import JiefenError, PermanentJobError
from mediation_rooms.court_copy import CourtCopySpec, recorded_files, seat_rank
from mediation_rooms.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    TIMELINE_NAME,
    MediaSummary,
    file_entry,
    listed_files,
    read_timeline,
    summarise_media,
    verify_recording,
    write_signed_manifest,
)
from mediation_rooms.room import RoomLifecycle, RoomState
from state import room_store
from state.job_queue import Job, JobQueue
from state.room_store import RoomRecord
from state.signing_key import SigningKey

log = logging.getLogger(__name__)

JOB_FINALISE_RECORDING = "recording.finalise"
COURT_COPY_NAME = "court-copy.mp4"
#: Progress is kept this long after the job (seconds), for whoever looks at the room.
PROGRESS_TTL_S = 7 * 24 * 3600
#: Renew the job's lease this often while finalising (well inside the queue's lease).
KEEP_ALIVE_EVERY_S = 5.0
#: A job that runs this long is stopped (its lease renewals end and another worker retries).
MAX_RUNTIME_S = 6 * 3600

ProgressCallback = Callable[[str, float], None]


class RenderFailed(JiefenError):
    """The court copy could not be rendered (carries the renderer's last error output), or
    its inputs are not there yet: worth retrying."""


class LeaseLost(JiefenError):
    """Another worker owns the job now: this one stops without touching anything further."""


async def enqueue_finalisation(jobs: JobQueue, room_id: str) -> None:
    """Queue the room's finalisation once (the job id is derived from the room)."""
    await jobs.enqueue(JOB_FINALISE_RECORDING, {"room_id": room_id}, job_id=f"finalise:{room_id}")


#: How often a worker looks for ended rooms whose finalisation was never queued (seconds).
SWEEP_INTERVAL_S = 10 * 60


async def enqueue_unfinalised(db: AsyncEngine, jobs: JobQueue) -> list[str]:
    """Queue the finalisation of every ended room that has none queued; returns those rooms.

    A media process killed between ending a room and queueing its job (or Redis lost at that
    moment) leaves an ended room nobody finalises: its people are gone, its recording is
    unsealed. This finds them. Idempotent (the job id is the room's), and a finalisation that
    failed for good (in the dead-letter list) is left for an operator (``jiefen room finalise``).
    """
    dead = {
        str(job.get("payload", {}).get("room_id"))
        for job in await jobs.dead_jobs()
        if job.get("kind") == JOB_FINALISE_RECORDING
    }
    queued = []
    for room_id in await room_store.ended_room_ids(db):
        if room_id in dead:
            continue
        await enqueue_finalisation(jobs, room_id)
        queued.append(room_id)
    return queued


async def sweep_unfinalised(db: AsyncEngine, jobs: JobQueue, stop: asyncio.Event) -> None:
    """Run :func:`enqueue_unfinalised` now and every :data:`SWEEP_INTERVAL_S` until ``stop``."""
    while not stop.is_set():
        try:
            queued = await enqueue_unfinalised(db, jobs)
            if queued:
                log.info("finalisation queued (again) for %d ended room(s)", len(queued))
        except Exception:
            log.exception("looking for ended rooms to finalise failed; trying again later")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=SWEEP_INTERVAL_S)


@dataclass(frozen=True, slots=True)
class Finalised:
    room_id: str
    directory: Path
    manifest: dict[str, Any]
    court_copy: Path | None
    #: False when the room had been finalised before and nothing was done now.
    done_now: bool


class RecordingFinaliser:
    """Turns an ended room's recording directory into a sealed, archived recording."""

    def __init__(
        self,
        *,
        db: AsyncEngine,
        redis: aioredis.Redis,
        redis_prefix: str,
        recordings_dir: Path,
        signing_key: SigningKey,
        font_file: Path | None = None,
        fps: int = 25,
    ) -> None:
        self._db = db
        self._redis = redis
        self._prefix = redis_prefix
        self._recordings_dir = recordings_dir
        self._key = signing_key
        self._font_file = font_file
        self._fps = fps

    def progress_key(self, room_id: str) -> str:
        return f"{self._prefix}room:{room_id}:finalise"

    async def progress(self, room_id: str) -> dict[str, Any] | None:
        """``{"stage": …, "fraction": 0…1, "updated_at": epoch s}`` or ``None`` (not started)."""
        raw = await self._redis.get(self.progress_key(room_id))
        return json.loads(raw) if raw else None

    async def _report(self, room_id: str, stage: str, fraction: float, **extra: Any) -> None:
        value = {"stage": stage, "fraction": round(fraction, 4), "updated_at": time.time()}
        await self._redis.set(
            self.progress_key(room_id), json.dumps(value | extra), ex=PROGRESS_TTL_S
        )

    async def run_job(self, job: Job, jobs: JobQueue) -> bool:
        """The queue's handler: finalise while a heartbeat renews the lease (every
        ``KEEP_ALIVE_EVERY_S``); the work stops the moment the job is another worker's."""
        work = asyncio.ensure_future(
            self.finalise(str(job.payload["room_id"]), keep_alive=lambda: jobs.extend(job))
        )
        lost = False

        async def heartbeat() -> None:
            nonlocal lost
            while not work.done():
                await asyncio.sleep(KEEP_ALIVE_EVERY_S)
                try:
                    still_ours = await jobs.extend(job)
                except Exception:
                    log.warning("finalising %s: lease renewal failed; retrying", job.payload)
                    continue
                if not still_ours:
                    lost = True
                    work.cancel()
                    return

        beat = asyncio.create_task(heartbeat())
        try:
            await work
        except asyncio.CancelledError:
            if not lost:
                raise
            log.warning("finalising %s: another worker took the job over", job.payload)
            return True  # not ours to settle any more
        except LeaseLost:
            log.warning("finalising %s: another worker took the job over", job.payload)
            return True
        finally:
            beat.cancel()
        return False

    async def finalise(
        self,
        room_id: str,
        *,
        keep_alive: Callable[[], Awaitable[bool]] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Finalised:
        """Finalise ``room_id`` (see the module docstring). Raises ``PermanentJobError`` for an
        unknown room or one that has not ended, ``RenderFailed`` when rendering fails."""
        record = await room_store.get_room(self._db, room_id)
        if record is None:
            raise PermanentJobError(f"no room {room_id}")
        directory = self._recordings_dir / room_id
        state = RoomState(record.state)
        if state is RoomState.ARCHIVED and (directory / MANIFEST_NAME).exists():
            manifest = json.loads((directory / MANIFEST_NAME).read_bytes())
            existing = directory / COURT_COPY_NAME
            return Finalised(
                room_id, directory, manifest, existing if existing.exists() else None, False
            )
        if state is not RoomState.ENDED:
            raise PermanentJobError(f"room {room_id} is {state.value}, not ended")
        if record.live_at is not None and not (directory / TIMELINE_NAME).exists():
            # It went live, so its recording exists somewhere: not (yet) on this host's storage.
            raise RenderFailed(f"the recording of {room_id} is not in {self._recordings_dir}")
        directory.mkdir(parents=True, exist_ok=True)

        async def progress(stage: str, fraction: float) -> None:
            if on_progress is not None:
                on_progress(stage, fraction)
            try:
                await self._report(room_id, stage, fraction)
            except Exception:  # progress is for people watching; the work goes on
                log.warning("room %s: could not store finalisation progress", room_id)

        # A previous attempt sealed it and stopped before archiving: archive what it sealed.
        if (directory / MANIFEST_NAME).exists():
            sealed = await asyncio.to_thread(
                verify_recording, directory, self._key.public_key, room_id
            )
            if sealed.ok and sealed.manifest is not None:
                await self._archive(room_id, state, len(sealed.manifest["files"]), on_progress)
                existing = directory / COURT_COPY_NAME
                return Finalised(
                    room_id,
                    directory,
                    sealed.manifest,
                    existing if existing.exists() else None,
                    True,
                )

        await progress("rendering", 0.0)
        timeline = await asyncio.to_thread(read_timeline, directory / TIMELINE_NAME)
        live_since = _live_since(record, timeline)
        court_copy: Path | None = None
        media = await asyncio.to_thread(recorded_files, directory)
        if media and live_since is not None:
            # Only the timestamps here (demuxing): the files are digested once, when sealing.
            summaries = await asyncio.to_thread(lambda: [summarise_media(f.path) for f in media])
            spec = CourtCopySpec(
                directory=directory,
                output=directory / COURT_COPY_NAME,
                case_no=record.case_no,
                live_since=live_since,
                duration_ms=_duration_ms(summaries, timeline),
                fps=self._fps,
                font_file=self._font_file,
            )
            await self._render(spec, progress)
            court_copy = spec.output

        await progress("sealing", 1.0)
        entries = await asyncio.to_thread(
            lambda: [file_entry(path) for path in listed_files(directory)]
        )
        manifest = _manifest(record, live_since, timeline, entries, court_copy, self._key)
        if keep_alive is not None and not await keep_alive():
            raise LeaseLost(room_id)
        await asyncio.to_thread(write_signed_manifest, directory, manifest, self._key)

        await self._archive(room_id, state, len(entries), on_progress)
        log.info("room %s: recording finalised (%d files)", room_id, len(entries))
        return Finalised(room_id, directory, manifest, court_copy, True)

    async def _archive(
        self, room_id: str, state: RoomState, files: int, on_progress: ProgressCallback | None
    ) -> None:
        """The recording is sealed: ``ended`` → ``archived`` (checked by the lifecycle rules)."""
        RoomLifecycle(room_id, state).set_state(RoomState.ARCHIVED)
        moved = await room_store.set_room_state(
            self._db,
            room_id,
            expected=RoomState.ENDED.value,
            new=RoomState.ARCHIVED.value,
            now=datetime.now(UTC),
        )
        if not moved:
            log.warning("room %s was archived meanwhile by another finaliser", room_id)
        await self._report(room_id, "archived", 1.0, files=files)
        if on_progress is not None:
            on_progress("archived", 1.0)

    async def _render(
        self, spec: CourtCopySpec, progress: Callable[[str, float], Awaitable[None]]
    ) -> None:
        """Run the renderer in a child process, relaying its progress."""
        descriptor, spec_path = tempfile.mkstemp(prefix="court-copy-", suffix=".json")
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(spec.to_json())
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mediation_rooms.court_copy",
            spec_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        errors = asyncio.create_task(_read_tail(child.stderr))
        try:
            assert child.stdout is not None
            async with asyncio.timeout(MAX_RUNTIME_S):
                async for line in child.stdout:
                    try:
                        message = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if "progress" in message:
                        await progress("rendering", float(message["progress"]))
                returncode = await child.wait()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
            tail = await errors
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spec_path)
        if returncode != 0:
            raise RenderFailed(f"court copy renderer exited with {returncode}: {tail[-2000:]}")


async def _read_tail(stream: asyncio.StreamReader | None, keep: int = 8192) -> str:
    """Everything the stream says, keeping only the last ``keep`` characters."""
    if stream is None:
        return ""
    tail = ""
    with contextlib.suppress(Exception):
        async for line in stream:
            tail = (tail + line.decode(errors="replace"))[-keep:]
    return tail


def _live_since(record: RoomRecord, timeline: list[dict[str, Any]]) -> float | None:
    """The epoch second of room time 0: from the timeline, else the database."""
    for event in timeline:
        if event.get("event") == "recording_started" and event.get("live_since") is not None:
            return float(event["live_since"])
    return record.live_at.replace(tzinfo=UTC).timestamp() if record.live_at else None


def _duration_ms(media: list[MediaSummary], timeline: list[dict[str, Any]]) -> int:
    """From room time 0 to the last frame of any file or the end of the session."""
    last_frame = max((summary.last_ms or 0 for summary in media), default=0)
    ended = max(
        (int(e["t_ms"]) for e in timeline if e.get("event") == "ended" and "t_ms" in e),
        default=0,
    )
    return max(last_frame, ended) + 40


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _manifest(
    record: RoomRecord,
    live_since: float | None,
    timeline: list[dict[str, Any]],
    files: list[dict[str, Any]],
    court_copy: Path | None,
    key: SigningKey,
) -> dict[str, Any]:
    participants = []
    for seat in sorted(record.seats, key=lambda s: seat_rank(s.seat)):
        mine = [e for e in timeline if e.get("seat") == seat.seat]
        consents = [e for e in mine if e.get("event") == "consented"]
        participants.append(
            {
                "seat": seat.seat,
                "name": seat.person_name,
                "joined_ms": [e["t_ms"] for e in mine if e.get("event") == "joined"],
                "left_ms": [e["t_ms"] for e in mine if e.get("event") == "left"],
                "consents": (
                    {k: v for k, v in consents[-1].items() if k not in ("event", "seat", "t_ms")}
                    if consents
                    else None
                ),
                "recorded_files": [f["name"] for f in files if f.get("seat") == seat.seat],
            }
        )
    return {
        "format": MANIFEST_FORMAT,
        "case_no": record.case_no,
        "room_id": record.room_id,
        "session_no": record.session_no,
        "scheduled_at": _iso(record.scheduled_at),
        "live_at": (
            datetime.fromtimestamp(live_since, UTC).isoformat() if live_since is not None else None
        ),
        "ended_at": _iso(record.ended_at),
        "clock": "t_ms, first_ms and last_ms are milliseconds since live_at",
        "participants": participants,
        "files": files,
        "court_copy": court_copy.name if court_copy is not None else None,
        "timeline": timeline,
        "signed_at": datetime.now(UTC).isoformat(),
        "signing_key_id": key.key_id,
    }
