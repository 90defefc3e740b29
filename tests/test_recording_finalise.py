"""Finalising an ended room's recording: signed manifest, court copy and its signed record,
archive; and verifying it. (Renders that fail, and the court copy rendered later by hand:
``test_recording_court_copy_missing``.)

Real PostgreSQL and Redis; the recording directory is written by the real ``TrackRecorder``
(``tests.test_court_copy``). The end-to-end path (a live room ended by the mediator, finalised
by the embedded worker) is in ``test_room_signalling``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.background_jobs import BackgroundJobs
from bot.outbox import Outbox
from bot.wechat_api import WeChatAPIClient
from config.settings import Settings
from jiefen.errors import PermanentJobError
from mediation_rooms.finalise import (
    JOB_FINALISE_RECORDING,
    RecordingFinaliser,
    RenderFailed,
    enqueue_finalisation,
    enqueue_unfinalised,
)
from mediation_rooms.manifest import (
    COURT_COPY_RECORD_NAME,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    court_copy_status,
    sha256_of,
    verify_recording,
)
from state import room_store
from state.blob_store import LocalBlobStore
from state.db import create_engine, migrate
from state.job_queue import JobQueue
from state.room_store import SeatRecord
from state.signing_key import SigningKey, load_or_create_signing_key
from tests.test_court_copy import LIVE_SINCE, _record_seat
from tests.test_state_case_store import file_case

pytestmark = pytest.mark.services
NOW = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
#: Stored out of seat order on purpose: the manifest lists them in seat order.
SEAT_NAMES = (("respondent", "李四"), ("mediator", "王调解员"), ("applicant", "张三"))


@pytest.fixture
async def db(pg_database_url: str) -> AsyncIterator[AsyncEngine]:
    migrate(pg_database_url)
    engine = create_engine(pg_database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.generate())


@pytest.fixture
def finaliser(
    db: AsyncEngine, redis_client: aioredis.Redis, redis_prefix: str, tmp_path: Path, signing_key
) -> RecordingFinaliser:
    return RecordingFinaliser(
        db=db,
        redis=redis_client,
        redis_prefix=redis_prefix,
        recordings_dir=tmp_path / "recordings",
        signing_key=signing_key,
    )


async def ended_room(
    db: AsyncEngine,
    recordings: Path,
    *,
    record: bool = True,
    codec: str = "VP8",
    legacy_ts: bool = False,
) -> str:
    """A room of a new case that went live and ended, with two seconds recorded per seat
    (without ``record``: called off before it went live), its video in ``codec`` (with
    ``legacy_ts``: H.264 in MPEG-TS, as rooms were recorded before Matroska)."""
    created = await file_case(db, submission_key=f"k-{datetime.now().timestamp()}")
    room_id = room_store.new_room_id()
    await room_store.create_room(
        db,
        room_id=room_id,
        case_no=created.case_no,
        scheduled_at=NOW,
        video_codec=codec,
        seats=[
            SeatRecord(seat, name, "n", None, None, NOW + timedelta(days=1))
            for seat, name in (
                ("respondent", "李四"),
                ("mediator", "王调解员"),
                ("applicant", "张三"),
            )
        ],
        state="scheduled",
        now=NOW,
    )
    steps = (("scheduled", "open"), ("open", "live"), ("live", "ended"))
    for old, new in steps if record else (("scheduled", "ended"),):
        assert await room_store.set_room_state(db, room_id, expected=old, new=new, now=NOW)
    if record:
        directory = recordings / room_id
        directory.mkdir(parents=True)
        for seat in ("mediator", "applicant", "respondent"):
            _record_seat(directory, seat, 1, 0, 2, [1000], codec=codec, legacy_ts=legacy_ts)
        events = [
            {"t_ms": 0, "event": "recording_started", "room": room_id, "live_since": LIVE_SINCE},
            # As a live room writes it: given in the waiting room, before the room went live.
            {
                "t_ms": -1200,
                "event": "consented",
                "seat": "applicant",
                "recording": True,
                "before_live": True,
            },
            {"t_ms": 2000, "event": "ended"},
        ]
        lines = [json.dumps(event) for event in events]
        # A kill can leave a torn last line: it is skipped, not fatal.
        (directory / "timeline.jsonl").write_text("\n".join(lines) + '\n{"t_ms": 20', "utf-8")
    return room_id


async def test_an_ended_room_is_rendered_signed_and_archived_once(
    db: AsyncEngine, finaliser: RecordingFinaliser, signing_key: SigningKey, tmp_path: Path
) -> None:
    room_id = await ended_room(db, tmp_path / "recordings")
    directory = tmp_path / "recordings" / room_id
    stages: list[tuple[str, float]] = []
    sealed_when_rendering: list[bool] = []

    def watch(stage: str, fraction: float) -> None:
        stages.append((stage, fraction))
        if stage == "rendering" and not sealed_when_rendering:
            # The evidence is sealed (and intact) before the render starts.
            sealed = verify_recording(directory, signing_key.public_key, room_id)
            rendered = (directory / "court-copy.mp4").exists()
            sealed_when_rendering.append(sealed.ok and not rendered)

    done = await finaliser.finalise(room_id, on_progress=watch)
    assert done.done_now and done.court_copy == done.directory / "court-copy.mp4"
    assert stages[0] == ("sealing", 0.0) and stages[-1] == ("archived", 1.0)
    assert sealed_when_rendering == [True]

    verification = verify_recording(done.directory, signing_key.public_key)
    assert verification.ok, verification.problems
    assert verification.checked_files == 8  # seven sealed files and the court copy
    manifest = done.manifest
    assert manifest["format"] == "jiefen-recording-manifest/2"
    # The court copy is recorded beside the manifest, derived from its exact bytes.
    record = verification.court_copy
    assert record is not None and record["format"] == "jiefen-court-copy/1"
    court_copy_digest, court_copy_bytes = sha256_of(done.directory / "court-copy.mp4")
    assert record["file"] == {
        "name": "court-copy.mp4",
        "bytes": court_copy_bytes,
        "sha256": court_copy_digest,
    }
    assert record["derived_from"] == {
        "name": "manifest.json",
        "sha256": sha256_of(done.directory / MANIFEST_NAME)[0],
    }
    assert (record["room_id"], record["signing_key_id"]) == (room_id, signing_key.key_id)
    assert record["render"]["fps"] == 25 and record["render"]["video_frames"] == 51
    assert record["render"]["video"] == {"codec": "h264", "width": 3 * 640, "height": 544}
    assert record["render"]["audio"]["codec"] == "aac"
    assert [p["seat"] for p in manifest["participants"]] == ["mediator", "applicant", "respondent"]
    assert manifest["participants"][1]["consents"] == {"recording": True}
    assert manifest["live_at"] == datetime.fromtimestamp(LIVE_SINCE, UTC).isoformat()
    assert manifest["signing_key_id"] == signing_key.key_id
    assert len(manifest["timeline"]) == 3  # the torn line left out
    names = [f["name"] for f in manifest["files"]]
    assert names == sorted(names) and "timeline.jsonl" in names and "court-copy.mp4" not in names
    assert "court_copy" not in manifest
    video = next(f for f in manifest["files"] if f["name"] == "applicant-video-01.webm")
    assert (video["seat"], video["kind"], video["part"], video["codec"]) == (
        "applicant",
        "video",
        1,
        "vp8",
    )
    assert video["frames"] == 60 and video["first_ms"] == 0 and 1900 < video["last_ms"] < 2000

    room = await room_store.get_room(db, room_id)
    assert room is not None and room.state == "archived"
    assert (await finaliser.progress(room_id)) == {
        "stage": "archived",
        "fraction": 1.0,
        "files": len(names),
        "court_copy": "rendered",
        "updated_at": pytest.approx(datetime.now().timestamp(), abs=60),
    }
    signed = (done.directory / MANIFEST_NAME).read_bytes()
    recorded = (done.directory / COURT_COPY_RECORD_NAME).read_bytes()
    again = await finaliser.finalise(room_id)
    assert not again.done_now and (done.directory / MANIFEST_NAME).read_bytes() == signed
    assert again.court_copy == done.court_copy

    # Rendered but not archived (a crash in between): the retry archives what was sealed and
    # recorded, and neither renders nor signs again.
    # (The store refuses archived -> ended: the row is put back as the crash left it.)
    async with db.begin() as connection:
        await connection.execute(
            sa.text("UPDATE mediation_rooms SET state = 'ended' WHERE id = :id"), {"id": room_id}
        )
    court_copy_written = (done.directory / "court-copy.mp4").stat().st_mtime_ns
    resumed = await finaliser.finalise(room_id)
    assert resumed.done_now and (done.directory / MANIFEST_NAME).read_bytes() == signed
    assert (done.directory / COURT_COPY_RECORD_NAME).read_bytes() == recorded
    assert (done.directory / "court-copy.mp4").stat().st_mtime_ns == court_copy_written
    room = await room_store.get_room(db, room_id)
    assert room is not None and room.state == "archived"


@pytest.mark.parametrize("legacy_ts", [False, True], ids=["mkv", "older-ts"])
async def test_an_h264_room_is_sealed_rendered_and_verified(
    db: AsyncEngine,
    finaliser: RecordingFinaliser,
    signing_key: SigningKey,
    tmp_path: Path,
    legacy_ts: bool,
) -> None:
    room_id = await ended_room(db, tmp_path / "recordings", codec="H264", legacy_ts=legacy_ts)
    done = await finaliser.finalise(room_id)
    assert done.done_now and done.court_copy == done.directory / "court-copy.mp4"
    verification = verify_recording(done.directory, signing_key.public_key, room_id)
    assert verification.ok, verification.problems
    assert verification.checked_files == 8 and not verification.court_copy_missing
    suffix = "ts" if legacy_ts else "mkv"
    media = {f["name"]: f for f in done.manifest["files"] if f.get("kind")}
    assert set(media) == {
        f"{seat}-{kind}-01.{suffix if kind == 'video' else 'webm'}"
        for seat in ("mediator", "applicant", "respondent")
        for kind in ("audio", "video")
    }
    video = media[f"applicant-video-01.{suffix}"]
    assert (video["seat"], video["kind"], video["part"], video["codec"]) == (
        "applicant",
        "video",
        1,
        "h264",
    )
    assert video["frames"] == 60 and video["first_ms"] == 0 and 1900 < video["last_ms"] < 2000
    record = verification.court_copy
    assert record is not None
    assert record["render"]["video"] == {"codec": "h264", "width": 3 * 640, "height": 544}
    with (done.directory / f"mediator-video-01.{suffix}").open("ab") as tampered:
        tampered.write(b"\0")
    assert verify_recording(done.directory, signing_key.public_key, room_id).problems == [
        f"mediator-video-01.{suffix}: changed since it was signed"
    ]


async def test_a_room_that_never_went_live_is_archived_with_an_empty_manifest(
    db: AsyncEngine, finaliser: RecordingFinaliser, signing_key: SigningKey, tmp_path: Path
) -> None:
    room_id = await ended_room(db, tmp_path / "recordings", record=False)
    done = await finaliser.finalise(room_id)
    assert done.court_copy is None and done.manifest["files"] == []
    assert done.court_copy_missing is None  # nothing to render: nothing missing
    verification = verify_recording(done.directory, signing_key.public_key)
    assert verification.ok and not verification.court_copy_missing
    progress = await finaliser.progress(room_id)
    assert progress is not None and progress["court_copy"] == "none"
    assert court_copy_status(done.directory) == "none"
    (done.directory / MANIFEST_NAME).write_text("{not json")
    assert court_copy_status(done.directory) == "not sealed"
    assert court_copy_status(tmp_path / "no-such-room") == "not sealed"


async def test_a_live_room_whose_recording_is_not_here_is_retried_not_sealed_empty(
    db: AsyncEngine, finaliser: RecordingFinaliser, tmp_path: Path
) -> None:
    room_id = await ended_room(db, tmp_path / "recordings")
    moved = tmp_path / "elsewhere"
    (tmp_path / "recordings" / room_id).rename(moved)
    with pytest.raises(RenderFailed, match="is not in"):
        await finaliser.finalise(room_id)
    room = await room_store.get_room(db, room_id)
    assert room is not None and room.state == "ended"


async def test_unknown_and_unfinished_rooms_are_permanent_errors(
    db: AsyncEngine, finaliser: RecordingFinaliser, tmp_path: Path
) -> None:
    with pytest.raises(PermanentJobError, match="no room"):
        await finaliser.finalise("rm_nope")
    created = await file_case(db, submission_key="live-one")
    room_id = room_store.new_room_id()
    await room_store.create_room(
        db,
        room_id=room_id,
        case_no=created.case_no,
        scheduled_at=NOW,
        video_codec="VP8",
        seats=[SeatRecord("mediator", "王调解员", "n", None, None, NOW)],
        state="live",
        now=NOW,
    )
    with pytest.raises(PermanentJobError, match="is live, not ended"):
        await finaliser.finalise(room_id)


async def test_verification_names_every_problem(
    db: AsyncEngine, finaliser: RecordingFinaliser, signing_key: SigningKey, tmp_path: Path
) -> None:
    done = await finaliser.finalise(await ended_room(db, tmp_path / "recordings"))
    directory = done.directory
    other_key = Ed25519PrivateKey.generate().public_key()
    assert verify_recording(directory, other_key).problems == [
        "the signature does not match (altered, or signed by another key)"
    ]
    assert verify_recording(directory, signing_key.public_key, "rm_other").problems == [
        f"the manifest is of room {directory.name}, not rm_other"
    ]
    (directory / "mediator-video-01.webm").unlink()
    (directory / "extra.webm").write_bytes(b"added later")
    problems = verify_recording(directory, signing_key.public_key).problems
    assert problems == ["mediator-video-01.webm: missing", "extra.webm: not in the manifest"]
    with (directory / "court-copy.mp4").open("ab") as court_copy:
        court_copy.write(b"\0")
    problems = verify_recording(directory, signing_key.public_key).problems
    assert "court-copy.mp4: changed since it was signed" in problems
    # Without its record the court copy is one more file nobody signed for.
    (directory / COURT_COPY_RECORD_NAME).rename(tmp_path / "record.json")
    (directory / "court-copy.sig").unlink()
    problems = verify_recording(directory, signing_key.public_key).problems
    assert problems[-2:] == [
        "court-copy.mp4: not in the manifest",
        "extra.webm: not in the manifest",
    ]
    manifest = (directory / MANIFEST_NAME).read_bytes()
    (directory / MANIFEST_NAME).write_bytes(manifest.replace(b"\\u738b", b"\\u674e", 1) + b" ")
    assert not verify_recording(directory, signing_key.public_key).ok
    (directory / SIGNATURE_NAME).unlink()
    assert (
        verify_recording(directory, signing_key.public_key)
        .problems[0]
        .startswith("no signed manifest")
    )


def finalisation_worker(
    session: aiohttp.ClientSession,
    redis_client: aioredis.Redis,
    prefix: str,
    jobs: JobQueue,
    db: AsyncEngine,
    finaliser: RecordingFinaliser,
    tmp_path: Path,
    **options: Any,
) -> BackgroundJobs:
    """The background worker as `jiefen worker` runs it, with only the finalisation job (WeChat
    is never called; ``options`` go to ``BackgroundJobs``, e.g. a retry policy)."""
    worker = BackgroundJobs(
        jobs=jobs,
        outbox=Outbox(redis_client, jobs, prefix=prefix),
        wechat=WeChatAPIClient(
            session,
            redis_client,
            api_base="http://127.0.0.1:9",
            appid="wx",
            secret="s",
            key_prefix=prefix,
        ),
        db=db,
        evidence=LocalBlobStore(tmp_path / "evidence"),
        max_media_bytes=1024,
        **options,
    )
    worker.register(JOB_FINALISE_RECORDING, lambda job: finaliser.run_job(job, jobs))
    return worker


async def test_the_worker_buries_a_finalisation_that_can_never_work(
    db: AsyncEngine,
    finaliser: RecordingFinaliser,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    jobs = JobQueue(redis_client, prefix=redis_prefix)
    async with aiohttp.ClientSession() as session:
        worker = finalisation_worker(
            session, redis_client, redis_prefix, jobs, db, finaliser, tmp_path
        )
        await enqueue_finalisation(jobs, "rm_gone")
        await enqueue_finalisation(jobs, "rm_gone")  # queued once per room
        assert await jobs.pending_count() == 1
        assert await worker.run_once()
        dead = await jobs.dead_jobs()
        assert [(d["kind"], d["payload"]) for d in dead] == [
            (JOB_FINALISE_RECORDING, {"room_id": "rm_gone"})
        ]
        assert "no room rm_gone" in dead[0]["errors"][-1]
        # An ended room goes through the same worker to the archive.
        room_id = await ended_room(db, tmp_path / "recordings")
        await enqueue_finalisation(jobs, room_id)
        assert await worker.run_once()
        assert await jobs.pending_count() == 0
        room = await room_store.get_room(db, room_id)
        assert room is not None and room.state == "archived"


async def test_ended_rooms_whose_finalisation_was_never_queued_are_found(
    db: AsyncEngine,
    finaliser: RecordingFinaliser,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    """A media process killed between ending a room and queueing its job: the sweep queues it;
    a finalisation that failed for good is left to an operator; an archived room is done."""
    jobs = JobQueue(redis_client, prefix=redis_prefix)
    forgotten = await ended_room(db, tmp_path / "recordings", record=False)
    hopeless = await ended_room(db, tmp_path / "recordings", record=False)
    await enqueue_finalisation(jobs, hopeless)
    job = await jobs.claim()
    assert job is not None and job.payload == {"room_id": hopeless}
    assert await jobs.bury(job, error="the disk is gone")

    assert await enqueue_unfinalised(db, jobs) == [forgotten]
    assert await enqueue_unfinalised(db, jobs) == [forgotten]  # queued once all the same
    assert await jobs.pending_count() == 1
    job = await jobs.claim()
    assert job is not None and job.payload == {"room_id": forgotten}
    await finaliser.run_job(job, jobs)
    room = await room_store.get_room(db, forgotten)
    assert room is not None and room.state == "archived"
    assert await enqueue_unfinalised(db, jobs) == []


def _jiefen(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env: dict[str, Any] = {"JIEFEN_DATA_DIR": str(tmp_path / "var"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "jiefen.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


async def test_the_command_line_prints_the_key_and_verifies_a_recording(
    db: AsyncEngine, redis_client: aioredis.Redis, redis_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    key = load_or_create_signing_key(settings)
    shown = _jiefen(tmp_path, "room", "signing-key")
    assert shown.returncode == 0 and shown.stdout == key.public_pem()
    assert f"key id: {key.key_id}" in shown.stderr
    assert load_or_create_signing_key(settings).key_id == key.key_id  # made once, then kept

    finaliser = RecordingFinaliser(
        db=db,
        redis=redis_client,
        redis_prefix=redis_prefix,
        recordings_dir=tmp_path / "recordings",
        signing_key=key,
    )
    done = await finaliser.finalise(await ended_room(db, tmp_path / "recordings"))
    verified = _jiefen(tmp_path, "room", "verify", str(done.directory))
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("OK: signature valid; 8 files match")
    assert "court copy court-copy.mp4: its signed record holds" in verified.stdout
    public = tmp_path / "court.pub.pem"
    public.write_text(key.public_pem())
    (done.directory / "respondent-audio-01.webm").write_bytes(b"swapped")
    refused = _jiefen(tmp_path, "room", "verify", str(done.directory), "--public-key", str(public))
    assert refused.returncode == 1
    assert "respondent-audio-01.webm: changed since it was signed" in refused.stderr
