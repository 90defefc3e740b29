"""Finalising a recording once its room has ended: seal the evidence, render, archive.

``RecordingFinaliser.finalise(room_id)`` is the whole job, and it is idempotent (the job queue
delivers at least once):

1. the room must be ``ended`` (an ``archived`` room with a manifest is already done);
2. **seal**: every file of the directory is digested and listed with the case, room,
   participants and timeline in a manifest signed with the platform's Ed25519 key
   (``manifest.py``), before anything else: the evidence is protected from the first minute,
   whatever happens to the render. A signed manifest is never rewritten: a retry finds it,
   checks its signature and goes on;
3. **render**: the court copy (``court_copy.py``) is rendered from the sealed files in a child
   process at low priority (``court_copy_renderer.py``), its progress kept in Redis
   (``room:<id>:finalise``) for the API and the console, the job's lease renewed as it goes;
   then recorded in its own signed document (``court-copy.json``) naming the manifest it was
   derived from;
4. the room moves to ``archived``.

A render that cannot be done does not keep the evidence from the archive. It is tried by at
most :data:`RENDER_ATTEMPTS` runs of the job (counted in Redis when each starts, so runs whose
worker died count too); a render that fails on the last of them, or runs past
:data:`RENDER_LIMIT_S` (it would again), or whose inputs no longer match the seal, leaves the
room archived without its court copy: the finalise status says ``"court_copy": "missing"`` and
why, and an error is logged. ``jiefen room finalise ROOM_ID`` (``by_hand``) renders it later,
with a progress bar; on a complete room it does nothing.

The room hub enqueues the job (:func:`enqueue_finalisation`) when the mediator ends a room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import LockNotOwnedError
from sqlalchemy.ext.asyncio import AsyncEngine

from jiefen.errors import ConfigurationError, JiefenError, PermanentJobError, SealBroken
from mediation_rooms.court_copy import seat_rank
from mediation_rooms.court_copy_renderer import (
    RENDERER,
    court_copy_spec,
    render_facts,
    render_in_child,
)
from mediation_rooms.court_copy_renderer import RenderFailed as RenderFailed
from mediation_rooms.manifest import (
    COURT_COPY_NAME,
    COURT_COPY_RECORD_NAME,
    LEGACY_MANIFEST_FORMAT,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    TIMELINE_NAME,
    changed_files,
    court_copy_record,
    evidence_files,
    expects_court_copy,
    file_entry,
    read_timeline,
    sealed_manifest,
    write_signed_court_copy_record,
    write_signed_manifest,
)
from mediation_rooms.room import RoomState
from state import room_store
from state.job_queue import Job, JobQueue
from state.room_store import RoomRecord
from state.signing_key import SigningKey

log = logging.getLogger(__name__)

T = TypeVar("T")

JOB_FINALISE_RECORDING = "recording.finalise"
#: Progress is kept this long after the job (seconds), for whoever looks at the room.
PROGRESS_TTL_S = 7 * 24 * 3600
#: Renew the job's lease this often while finalising (well inside the queue's lease).
KEEP_ALIVE_EVERY_S = 5.0
#: A job that runs this long is stopped (its lease renewals end and another worker retries).
MAX_RUNTIME_S = 6 * 3600
#: One render may run this long: less than the job's limit, so that the job is still there to
#: archive the room without its court copy when the render runs out of time.
RENDER_LIMIT_S = MAX_RUNTIME_S - 30 * 60
#: Runs of the job that may start the render; a later run archives without the court copy.
#: Below the worker's ``RetryPolicy.max_attempts`` (8), which would bury the job.
RENDER_ATTEMPTS = 3
#: Only one finalisation of a room runs at a time (a worker's job, an operator's hand run):
#: a Redis lock with this TTL (seconds), renewed every third of it while the run lasts.
FINALISE_LOCK_S = 60.0

ProgressCallback = Callable[[str, float], None]


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
    #: The court copy, when there is one recorded (its signed record, or a legacy manifest).
    court_copy: Path | None
    #: False when the room had been finalised before and nothing was done now.
    done_now: bool
    #: Why the court copy of a recorded session is missing (the room is archived without it).
    court_copy_missing: str | None = None


class RecordingFinaliser:
    """Turns an ended room's recording directory into a sealed, archived recording."""

    def __init__(
        self,
        *,
        db: AsyncEngine,
        redis: aioredis.Redis,
        redis_prefix: str,
        recordings_dir: Path,
        signing_key: SigningKey | None,
        job_attempts: int = 8,
        font_file: Path | None = None,
        fps: int = 25,
        renderer: tuple[str, ...] = RENDERER,
        render_limit_s: float = RENDER_LIMIT_S,
    ) -> None:
        self._db = db
        self._redis = redis
        self._prefix = redis_prefix
        self._recordings_dir = recordings_dir
        self._key = signing_key
        #: The worker's ``RetryPolicy.max_attempts``: its last run archives whatever it can.
        self._job_attempts = job_attempts
        self._font_file = font_file
        self._fps = fps
        self._renderer = renderer
        self._render_limit_s = render_limit_s

    @property
    def _signing_key(self) -> SigningKey:
        """The key that seals; a process built without one (it runs no jobs: a ``web`` or
        ``media`` process only reads progress) refuses to seal."""
        if self._key is None:
            raise ConfigurationError(
                "this process runs no finalisation jobs and has no signing key: run them in "
                "`jiefen worker` or `jiefen room finalise`, with JIEFEN_SIGNING_KEY_FILE set"
            )
        return self._key

    def progress_key(self, room_id: str) -> str:
        return f"{self._prefix}room:{room_id}:finalise"

    def lock_key(self, room_id: str) -> str:
        return f"{self._prefix}room:{room_id}:finalise:lock"

    def renders_key(self, room_id: str) -> str:
        """How many runs of the job started the room's render (see the module docstring)."""
        return f"{self._prefix}room:{room_id}:finalise:renders"

    async def progress(self, room_id: str) -> dict[str, Any] | None:
        """``{"stage": …, "fraction": 0…1, "updated_at": epoch s}`` or ``None`` (not started).
        Once ``archived``, also ``files`` (sealed) and ``court_copy``: ``"rendered"``, ``"none"``
        (nothing was recorded) or ``"missing"``, with the reason in ``court_copy_error``."""
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
        finalising = self.finalise(
            str(job.payload["room_id"]),
            keep_alive=lambda: jobs.extend(job),
            last_chance=job.attempts >= self._job_attempts,
        )
        try:
            await _while_renewed(
                finalising,
                lambda: jobs.extend(job),
                every_s=KEEP_ALIVE_EVERY_S,
                what=f"finalising {job.payload}: the job's lease",
            )
        except (_RenewalLost, LeaseLost):
            log.warning("finalising %s: another worker took the job over", job.payload)
            return True  # not ours to settle any more
        return False

    async def finalise(
        self,
        room_id: str,
        *,
        keep_alive: Callable[[], Awaitable[bool]] | None = None,
        on_progress: ProgressCallback | None = None,
        by_hand: bool = False,
        last_chance: bool = False,
    ) -> Finalised:
        """Finalise ``room_id`` (see the module docstring).

        One run per room at a time, job or hand run alike (a lock in Redis): another run
        meanwhile raises ``RenderFailed`` (the job is retried later; an operator is told).
        ``last_chance`` is the job's last attempt: a failed render then archives the room
        without its court copy instead of asking for another run.

        Raises ``PermanentJobError`` for an unknown room, one that has not ended, or one whose
        ``manifest.json`` does not verify with this key (it is never replaced: an operator must
        look); ``RenderFailed`` when the recording is not on this host yet, or when a render
        failed that is worth another run of the job. ``by_hand`` is an operator's run
        (``jiefen room finalise``): it also renders the missing court copy of an archived room,
        does not count or limit attempts, and raises ``RenderFailed`` for any failed render.
        """
        lock = self._redis.lock(self.lock_key(room_id), timeout=FINALISE_LOCK_S)
        if not await lock.acquire(blocking=False):
            raise RenderFailed(
                f"room {room_id} is being finalised by another run (a worker's job or "
                "`jiefen room finalise`); try again once it is done"
            )

        async def still_locked() -> bool:
            try:
                await lock.reacquire()  # the TTL starts again
            except LockNotOwnedError:
                return False
            return True

        try:
            return await _while_renewed(
                self._finalise(room_id, keep_alive, on_progress, by_hand, last_chance),
                still_locked,
                every_s=FINALISE_LOCK_S / 3,
                what=f"room {room_id}: the finalisation lock",
            )
        except _RenewalLost:
            raise RenderFailed(
                f"room {room_id}: this run lost its finalisation lock (stalled for over "
                f"{FINALISE_LOCK_S:.0f} s) and stopped, so that two runs never write at once"
            ) from None
        finally:
            with contextlib.suppress(Exception):
                await lock.release()

    async def _finalise(
        self,
        room_id: str,
        keep_alive: Callable[[], Awaitable[bool]] | None,
        on_progress: ProgressCallback | None,
        by_hand: bool,
        last_chance: bool,
    ) -> Finalised:
        record = await room_store.get_room(self._db, room_id)
        if record is None:
            raise PermanentJobError(f"no room {room_id}")
        directory = self._recordings_dir / room_id
        state = RoomState(record.state)
        if state is RoomState.ARCHIVED and (directory / MANIFEST_NAME).exists():
            manifest = json.loads((directory / MANIFEST_NAME).read_bytes())
            existing = _recorded_court_copy(directory, manifest)
            if not by_hand or existing is not None or not expects_court_copy(manifest):
                return Finalised(room_id, directory, manifest, existing, False)
        elif state is not RoomState.ENDED:
            raise PermanentJobError(f"room {room_id} is {state.value}, not ended")
        elif record.live_at is not None and not (directory / TIMELINE_NAME).exists():
            # It went live, so its recording exists somewhere: not (yet) on this host's storage.
            raise RenderFailed(f"the recording of {room_id} is not in {self._recordings_dir}")
        directory.mkdir(parents=True, exist_ok=True)
        progress = self._progress_to(room_id, on_progress)

        # 1. Seal the evidence, once: a manifest already signed (by an earlier run, which then
        # stopped) is checked and kept, byte for byte.
        sealed_before = (directory / MANIFEST_NAME).exists()
        if sealed_before:
            manifest_data = await self._sealed(room_id, directory)
        else:
            manifest_data = await self._seal(record, directory, progress, keep_alive)
        manifest = json.loads(manifest_data)

        # 2. Render the court copy from the sealed files, unless it is recorded already.
        court_copy = _recorded_court_copy(directory, manifest)
        missing: str | None = None
        if court_copy is None and expects_court_copy(manifest):
            court_copy, missing = await self._court_copy(
                record,
                directory,
                manifest_data,
                progress,
                keep_alive,
                check_inputs=sealed_before,
                by_hand=by_hand,
                last_chance=last_chance,
            )

        # 3. Archive, with or without the court copy: the evidence is sealed either way.
        await self._archive(room_id, state, manifest, court_copy, missing, on_progress)
        return Finalised(room_id, directory, manifest, court_copy, True, missing)

    def _progress_to(
        self, room_id: str, on_progress: ProgressCallback | None
    ) -> Callable[[str, float], Awaitable[None]]:
        """Report progress to ``on_progress`` and to Redis (best effort: it is for people)."""

        async def progress(stage: str, fraction: float) -> None:
            if on_progress is not None:
                on_progress(stage, fraction)
            try:
                await self._report(room_id, stage, fraction)
            except Exception:  # progress is for people watching; the work goes on
                log.warning("room %s: could not store finalisation progress", room_id)

        return progress

    async def _sealed(self, room_id: str, directory: Path) -> bytes:
        """The signed bytes of the room's existing manifest, checked against this key."""
        try:
            return await asyncio.to_thread(
                sealed_manifest, directory, self._signing_key.public_key, room_id
            )
        except SealBroken as error:
            raise PermanentJobError(
                f"room {room_id}: {MANIFEST_NAME} is there but does not verify ({error}); "
                "a signed manifest is never replaced: look at it (jiefen room verify)"
            ) from error

    async def _seal(
        self,
        record: RoomRecord,
        directory: Path,
        progress: Callable[[str, float], Awaitable[None]],
        keep_alive: Callable[[], Awaitable[bool]] | None,
    ) -> bytes:
        """Digest the evidence and sign its manifest; the signed bytes."""
        await progress("sealing", 0.0)
        timeline = await asyncio.to_thread(read_timeline, directory / TIMELINE_NAME)
        live_since = _live_since(record, timeline)
        entries = await asyncio.to_thread(
            lambda: [file_entry(path) for path in evidence_files(directory)]
        )
        manifest = _manifest(record, live_since, timeline, entries, self._signing_key)
        if keep_alive is not None and not await keep_alive():
            raise LeaseLost(record.room_id)
        data = await asyncio.to_thread(
            write_signed_manifest, directory, manifest, self._signing_key
        )
        log.info("room %s: recording sealed (%d files)", record.room_id, len(entries))
        return data

    async def _court_copy(
        self,
        record: RoomRecord,
        directory: Path,
        manifest_data: bytes,
        progress: Callable[[str, float], Awaitable[None]],
        keep_alive: Callable[[], Awaitable[bool]] | None,
        *,
        check_inputs: bool,
        by_hand: bool,
        last_chance: bool,
    ) -> tuple[Path | None, str | None]:
        """(the court copy, None) once rendered and recorded; (None, why) when this run gives
        up on it and the room is to be archived without it. ``RenderFailed`` when a failed
        render is worth another run (always, ``by_hand``)."""
        # A court copy without its record (a run stopped between the render and the record)
        # was never sealed: it goes, or verification would report an unlisted file.
        with contextlib.suppress(FileNotFoundError):
            (directory / COURT_COPY_NAME).unlink()
            log.warning("room %s: removed a court copy that was never recorded", record.room_id)
        renders = 0
        if not by_hand:
            renders = await self._count_render(record.room_id)
            if renders > RENDER_ATTEMPTS:
                return None, (
                    f"{RENDER_ATTEMPTS} runs of the job started the render and none of them "
                    "finished it"
                )
        try:
            if check_inputs:
                changed = await asyncio.to_thread(
                    changed_files, directory, json.loads(manifest_data)
                )
                if changed:
                    raise RenderFailed(
                        "the recording no longer matches its signed manifest ("
                        + "; ".join(changed)
                        + "): no court copy is rendered from it",
                        permanent=True,
                    )
            return await self._render_and_record(
                record, directory, manifest_data, progress, keep_alive
            ), None
        except RenderFailed as error:
            if by_hand or not (error.permanent or renders >= RENDER_ATTEMPTS or last_chance):
                raise
            return None, str(error)

    async def _count_render(self, room_id: str) -> int:
        """Count one more run starting the render; the count so far, this one included."""
        key = self.renders_key(room_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, PROGRESS_TTL_S)
            count, _ = await pipe.execute()
        return int(count)

    async def _render_and_record(
        self,
        record: RoomRecord,
        directory: Path,
        manifest_data: bytes,
        progress: Callable[[str, float], Awaitable[None]],
        keep_alive: Callable[[], Awaitable[bool]] | None,
    ) -> Path:
        """Render the court copy from the sealed manifest and sign its record."""
        spec = court_copy_spec(
            json.loads(manifest_data), directory, fps=self._fps, font_file=self._font_file
        )
        await progress("rendering", 0.0)
        done = await render_in_child(
            spec, progress, command=self._renderer, limit_s=self._render_limit_s
        )
        render = await asyncio.to_thread(render_facts, spec, done)
        document = court_copy_record(manifest_data, spec.output, render, self._signing_key)
        if keep_alive is not None and not await keep_alive():
            raise LeaseLost(record.room_id)
        await asyncio.to_thread(
            write_signed_court_copy_record, directory, document, self._signing_key
        )
        log.info("room %s: court copy rendered and recorded", record.room_id)
        return spec.output

    async def _archive(
        self,
        room_id: str,
        state: RoomState,
        manifest: dict[str, Any],
        court_copy: Path | None,
        missing: str | None,
        on_progress: ProgressCallback | None,
    ) -> None:
        """The recording is sealed: ``ended`` → ``archived`` (the store checks the move against
        the lifecycle rules), and the finalise status says what became of the court copy."""
        if state is RoomState.ENDED:
            moved = await room_store.set_room_state(
                self._db,
                room_id,
                expected=RoomState.ENDED,
                new=RoomState.ARCHIVED,
                now=datetime.now(UTC),
            )
            if not moved:
                log.warning("room %s was archived meanwhile by another finaliser", room_id)
        files = len(manifest["files"])
        if missing is not None:
            log.error(
                "room %s: archived WITHOUT its court copy (%s); the recording is sealed; "
                "render the court copy with `jiefen room finalise %s`",
                room_id,
                missing,
                room_id,
            )
            await self._report(
                room_id,
                "archived",
                1.0,
                files=files,
                court_copy="missing",
                court_copy_error=missing,
            )
        else:
            log.info("room %s: recording finalised (%d files sealed)", room_id, files)
            await self._report(
                room_id,
                "archived",
                1.0,
                files=files,
                court_copy="rendered" if court_copy is not None else "none",
            )
        if on_progress is not None:
            on_progress("archived", 1.0)


class _RenewalLost(Exception):
    """What :func:`_while_renewed` was renewing is another run's now."""


async def _while_renewed(
    work: Coroutine[Any, Any, T],
    renew: Callable[[], Awaitable[bool]],
    *,
    every_s: float,
    what: str,
) -> T:
    """Run ``work`` while ``renew()`` keeps what it holds (a lease, a lock) every ``every_s``.

    A renewal that answers False cancels the work and raises :class:`_RenewalLost`; one that
    fails (Redis unreachable for a moment) is logged and tried again at the next beat, while
    what it holds still has its TTL to run.
    """
    task = asyncio.ensure_future(work)
    lost = False

    async def beat() -> None:
        nonlocal lost
        while not task.done():
            await asyncio.sleep(every_s)
            try:
                held = await renew()
            except Exception:
                log.warning("%s: renewal failed; retrying", what)
                continue
            if not held:
                lost = True
                task.cancel()
                return

    beating = asyncio.create_task(beat())
    try:
        return await task
    except asyncio.CancelledError:
        if not lost:
            raise
        raise _RenewalLost(what) from None
    finally:
        beating.cancel()
        if not task.done():
            task.cancel()


def _live_since(record: RoomRecord, timeline: list[dict[str, Any]]) -> float | None:
    """The epoch second of room time 0: from the timeline, else the database."""
    for event in timeline:
        if event.get("event") == "recording_started" and event.get("live_since") is not None:
            return float(event["live_since"])
    return record.live_at.replace(tzinfo=UTC).timestamp() if record.live_at else None


def _recorded_court_copy(directory: Path, manifest: dict[str, Any]) -> Path | None:
    """The court copy a sealed recording has: listed in a legacy manifest, or recorded in its
    own signed document beside the manifest."""
    if manifest.get("format") == LEGACY_MANIFEST_FORMAT:
        name = manifest.get("court_copy")
        return directory / name if isinstance(name, str) else None
    return directory / COURT_COPY_NAME if (directory / COURT_COPY_RECORD_NAME).exists() else None


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


#: The fields of a ``consented`` timeline event that say when and whose, not what was agreed.
_NOT_CONSENTS = frozenset({"event", "seat", "t_ms", "before_live"})


def _manifest(
    record: RoomRecord,
    live_since: float | None,
    timeline: list[dict[str, Any]],
    files: list[dict[str, Any]],
    key: SigningKey,
) -> dict[str, Any]:
    """The manifest of the evidence (the court copy has its own record, made later)."""
    participants = []
    for seat in sorted(record.seats, key=lambda s: seat_rank(s.seat)):
        mine = [e for e in timeline if e.get("seat") == seat.seat]
        consents = [e for e in mine if e.get("event") == "consented"]
        participants.append(
            {
                "seat": seat.seat,
                "name": seat.person_name,
                "joined_ms": [e["t_ms"] for e in mine if e.get("event") == "joined"],
                "reconnected_ms": [e["t_ms"] for e in mine if e.get("event") == "reconnected"],
                "left_ms": [e["t_ms"] for e in mine if e.get("event") == "left"],
                "consents": (
                    {k: v for k, v in consents[-1].items() if k not in _NOT_CONSENTS}
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
        "timeline": timeline,
        "signed_at": datetime.now(UTC).isoformat(),
        "signing_key_id": key.key_id,
    }
