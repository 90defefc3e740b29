"""The evidence is sealed whatever becomes of the court copy.

A render that keeps failing, runs past its limit, or whose workers keep dying leaves the room
archived with its signed manifest and the court copy recorded as missing; a retry never signs
the manifest again; ``jiefen room finalise`` renders the missing court copy later. Real
PostgreSQL and Redis; renders that fail are real child processes that fail (the renderer is the
finaliser's command line), no mocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.background_jobs import RetryPolicy
from config.settings import Settings
from jiefen.errors import PermanentJobError
from mediation_rooms.finalise import (
    RENDER_ATTEMPTS,
    RecordingFinaliser,
    RenderFailed,
    enqueue_finalisation,
)
from mediation_rooms.manifest import (
    COURT_COPY_RECORD_NAME,
    COURT_COPY_SIGNATURE_NAME,
    LEGACY_MANIFEST_FORMAT,
    MANIFEST_NAME,
    court_copy_record,
    file_entry,
    listed_files,
    sha256_of,
    verify_recording,
    write_signed_court_copy_record,
    write_signed_manifest,
)
from state import room_store
from state.job_queue import JobQueue
from state.signing_key import SigningKey, load_or_create_signing_key
from tests import test_recording_finalise
from tests.test_recording_finalise import NOW, ended_room, finalisation_worker

pytestmark = pytest.mark.services

#: Renderers that fail as real ones do: an error exit with a message, and one that hangs.
FAILING = (sys.executable, "-c", "import sys; sys.stderr.write('out of disk'); sys.exit(3)")
# A render that never ends, having begun its partial output (named, as the real one's, after
# its process id) the way a long session's render would.
HANGING = (
    sys.executable,
    "-c",
    "import json, os, sys, time; out = json.load(open(sys.argv[1]))['output'];"
    " d, n = os.path.split(out); open(os.path.join(d, f'.{n}.{os.getpid()}.partial'), 'wb');"
    " time.sleep(60)",
)


# The rooms and the key of the finalisation tests (PostgreSQL, a fresh Ed25519 key).
db = test_recording_finalise.db
signing_key = test_recording_finalise.signing_key


@pytest.fixture
def finaliser_with(
    db: AsyncEngine,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    tmp_path: Path,
    signing_key: SigningKey,
) -> Any:
    def make(**options: Any) -> RecordingFinaliser:
        options.setdefault("signing_key", signing_key)
        return RecordingFinaliser(
            db=db,
            redis=redis_client,
            redis_prefix=redis_prefix,
            recordings_dir=tmp_path / "recordings",
            **options,
        )

    return make


async def _state(db: AsyncEngine, room_id: str) -> str:
    room = await room_store.get_room(db, room_id)
    assert room is not None
    return room.state


def _court_copy_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if "court-copy" in path.name)


async def test_a_render_that_keeps_failing_leaves_the_room_sealed_then_archived_without_it(
    db: AsyncEngine,
    finaliser_with: Any,
    signing_key: SigningKey,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    room_id = await ended_room(db, tmp_path / "recordings")
    directory = tmp_path / "recordings" / room_id
    failing = finaliser_with(renderer=FAILING)

    with pytest.raises(RenderFailed, match="exited with 3: out of disk"):
        await failing.finalise(room_id)
    # The render failed, the evidence did not wait for it: sealed, intact, not re-sealed later.
    sealed = verify_recording(directory, signing_key.public_key, room_id)
    assert sealed.ok, sealed.problems
    assert sealed.court_copy_missing and sealed.court_copy is None
    assert await _state(db, room_id) == "ended"
    signed = (directory / MANIFEST_NAME).read_bytes()

    for _ in range(RENDER_ATTEMPTS - 2):
        with pytest.raises(RenderFailed):
            await failing.finalise(room_id)
        assert (directory / MANIFEST_NAME).read_bytes() == signed
    with caplog.at_level(logging.ERROR, logger="mediation_rooms.finalise"):
        done = await failing.finalise(room_id)  # the last attempt: archive without it
    assert done.done_now and done.court_copy is None
    assert done.court_copy_missing is not None and "out of disk" in done.court_copy_missing
    assert await _state(db, room_id) == "archived"
    assert (directory / MANIFEST_NAME).read_bytes() == signed
    assert _court_copy_files(directory) == []
    progress = await failing.progress(room_id)
    assert progress is not None
    assert (progress["stage"], progress["court_copy"]) == ("archived", "missing")
    assert "out of disk" in progress["court_copy_error"]
    assert f"room {room_id}: archived WITHOUT its court copy" in caplog.text
    assert f"jiefen room finalise {room_id}" in caplog.text
    # The job delivered once more does nothing.
    assert not (await failing.finalise(room_id)).done_now

    # Later, by hand, with a renderer that works: rendered, recorded, nothing else touched.
    working = finaliser_with()
    rendered = await working.finalise(room_id, by_hand=True)
    assert rendered.done_now and rendered.court_copy == directory / "court-copy.mp4"
    assert (directory / MANIFEST_NAME).read_bytes() == signed
    verification = verify_recording(directory, signing_key.public_key, room_id)
    assert verification.ok, verification.problems
    assert verification.court_copy is not None and not verification.court_copy_missing
    assert (
        verification.court_copy["derived_from"]["sha256"] == sha256_of(directory / MANIFEST_NAME)[0]
    )
    assert await _state(db, room_id) == "archived"
    progress = await working.progress(room_id)
    assert progress is not None and progress["court_copy"] == "rendered"
    assert "court_copy_error" not in progress
    # On a complete room it does nothing.
    record = (directory / COURT_COPY_RECORD_NAME).read_bytes()
    again = await working.finalise(room_id, by_hand=True)
    assert not again.done_now and again.court_copy == rendered.court_copy
    assert (directory / COURT_COPY_RECORD_NAME).read_bytes() == record


async def test_the_worker_archives_a_room_whose_render_keeps_failing(
    db: AsyncEngine,
    finaliser_with: Any,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    """Through the real job loop: retried while attempts remain, then settled, not buried."""
    jobs = JobQueue(redis_client, prefix=redis_prefix)
    finaliser = finaliser_with(renderer=FAILING)
    async with aiohttp.ClientSession() as session:
        worker = finalisation_worker(
            session,
            redis_client,
            redis_prefix,
            jobs,
            db,
            finaliser,
            tmp_path,
            retry=RetryPolicy(base_delay_s=0.0),
        )
        room_id = await ended_room(db, tmp_path / "recordings")
        await enqueue_finalisation(jobs, room_id)
        for _ in range(RENDER_ATTEMPTS - 1):
            assert await worker.run_once()
            assert await jobs.pending_count() == 1  # to be retried
            assert await _state(db, room_id) == "ended"
            assert (tmp_path / "recordings" / room_id / MANIFEST_NAME).exists()
        assert await worker.run_once()
        assert await jobs.pending_count() == 0 and await jobs.dead_jobs() == []
        assert await _state(db, room_id) == "archived"


async def test_a_render_past_its_time_limit_archives_at_once(
    db: AsyncEngine, finaliser_with: Any, signing_key: SigningKey, tmp_path: Path
) -> None:
    room_id = await ended_room(db, tmp_path / "recordings")
    finaliser = finaliser_with(renderer=HANGING, render_limit_s=0.5)
    done = await asyncio.wait_for(finaliser.finalise(room_id), timeout=20)
    assert done.court_copy is None
    assert done.court_copy_missing == "the court copy render ran past its limit of 0.5 s"
    assert await _state(db, room_id) == "archived"
    assert verify_recording(done.directory, signing_key.public_key, room_id).ok
    # The killed render's partial file (hidden, so verification ignores it) is gone too.
    assert [p.name for p in done.directory.iterdir() if p.name.endswith(".partial")] == []


async def test_runs_whose_worker_stopped_mid_render_count_and_a_later_run_archives(
    db: AsyncEngine, finaliser_with: Any, signing_key: SigningKey, tmp_path: Path
) -> None:
    """A worker killed (or one that lost its job) during the render never reaches the code that
    counts failures: the count is taken when the render starts."""
    room_id = await ended_room(db, tmp_path / "recordings")
    finaliser = finaliser_with(renderer=HANGING)
    for _ in range(RENDER_ATTEMPTS):
        rendering = asyncio.Event()

        def started(stage: str, _: float, rendering: asyncio.Event = rendering) -> None:
            if stage == "rendering":
                rendering.set()

        run = asyncio.create_task(finaliser.finalise(room_id, on_progress=started))
        await asyncio.wait_for(rendering.wait(), timeout=20)
        await asyncio.sleep(0.2)
        run.cancel()  # what the lease heartbeat does when another worker has the job
        with pytest.raises(asyncio.CancelledError):
            await run
        assert await _state(db, room_id) == "ended"
    done = await finaliser.finalise(room_id)
    assert done.court_copy_missing is not None
    assert f"{RENDER_ATTEMPTS} runs of the job started the render" in done.court_copy_missing
    assert await _state(db, room_id) == "archived"
    assert verify_recording(done.directory, signing_key.public_key, room_id).ok


async def test_a_retry_never_signs_again_nor_renders_from_files_changed_since_the_seal(
    db: AsyncEngine, finaliser_with: Any, signing_key: SigningKey, tmp_path: Path
) -> None:
    room_id = await ended_room(db, tmp_path / "recordings")
    directory = tmp_path / "recordings" / room_id
    with pytest.raises(RenderFailed):
        await finaliser_with(renderer=FAILING).finalise(room_id)
    signed = (directory / MANIFEST_NAME).read_bytes()
    with (directory / "applicant-audio-01.webm").open("ab") as tampered:
        tampered.write(b"\0")

    done = await finaliser_with().finalise(room_id)
    assert done.court_copy is None and done.court_copy_missing is not None
    assert "no longer matches its signed manifest" in done.court_copy_missing
    assert "applicant-audio-01.webm: changed since it was signed" in done.court_copy_missing
    assert (directory / MANIFEST_NAME).read_bytes() == signed  # the change is not laundered
    assert _court_copy_files(directory) == []
    assert verify_recording(directory, signing_key.public_key).problems == [
        "applicant-audio-01.webm: changed since it was signed"
    ]
    with pytest.raises(RenderFailed, match="no longer matches"):
        await finaliser_with().finalise(room_id, by_hand=True)


async def test_a_manifest_that_does_not_verify_is_never_replaced(
    db: AsyncEngine, finaliser_with: Any, tmp_path: Path
) -> None:
    room_id = await ended_room(db, tmp_path / "recordings")
    directory = tmp_path / "recordings" / room_id
    with pytest.raises(RenderFailed):
        await finaliser_with(renderer=FAILING).finalise(room_id)
    signed = (directory / MANIFEST_NAME).read_bytes()
    other = finaliser_with(signing_key=SigningKey(Ed25519PrivateKey.generate()))
    with pytest.raises(PermanentJobError, match="never replaced"):
        await other.finalise(room_id)
    assert (directory / MANIFEST_NAME).read_bytes() == signed
    assert await _state(db, room_id) == "ended"


async def test_recordings_sealed_in_the_old_order_still_verify_and_finish(
    db: AsyncEngine, finaliser_with: Any, signing_key: SigningKey, tmp_path: Path
) -> None:
    """Format 1: rendered first, then one manifest listing the court copy among the files."""
    room_id = await ended_room(db, tmp_path / "recordings")
    directory = tmp_path / "recordings" / room_id
    (directory / "court-copy.mp4").write_bytes(b"rendered by an earlier version")
    manifest = {
        "format": LEGACY_MANIFEST_FORMAT,
        "case_no": "JF20261122-0001",
        "room_id": room_id,
        "session_no": 1,
        "live_at": "2026-09-21T08:53:20+00:00",
        "participants": [],
        "files": [file_entry(path) for path in listed_files(directory)],
        "court_copy": "court-copy.mp4",
        "timeline": [],
        "signed_at": NOW.isoformat(),
        "signing_key_id": signing_key.key_id,
    }
    signed = write_signed_manifest(directory, manifest, signing_key)
    verification = verify_recording(directory, signing_key.public_key, room_id)
    assert verification.ok, verification.problems
    assert verification.checked_files == 8 and not verification.court_copy_missing

    # Sealed by the old order and not archived yet (upgraded in between): archived as it is.
    done = await finaliser_with(renderer=FAILING).finalise(room_id)
    assert done.done_now and done.court_copy == directory / "court-copy.mp4"
    assert done.court_copy_missing is None
    assert (directory / MANIFEST_NAME).read_bytes() == signed
    assert _court_copy_files(directory) == ["court-copy.mp4"]
    assert await _state(db, room_id) == "archived"

    (directory / "court-copy.mp4").write_bytes(b"swapped")
    assert verify_recording(directory, signing_key.public_key).problems == [
        "court-copy.mp4: changed since it was signed"
    ]


async def test_a_court_copy_record_is_checked_against_its_manifest_and_key(
    db: AsyncEngine, finaliser_with: Any, signing_key: SigningKey, tmp_path: Path
) -> None:
    done = await finaliser_with().finalise(await ended_room(db, tmp_path / "recordings"))
    directory = done.directory
    assert verify_recording(directory, signing_key.public_key).ok

    # Re-signed by someone else's key.
    original = (directory / COURT_COPY_SIGNATURE_NAME).read_bytes()
    (directory / COURT_COPY_SIGNATURE_NAME).write_bytes(
        Ed25519PrivateKey.generate().sign((directory / COURT_COPY_RECORD_NAME).read_bytes())
    )
    assert verify_recording(directory, signing_key.public_key).problems == [
        "court-copy.json: the signature does not match (altered, or signed by another key)",
        "court-copy.mp4: not in the manifest",
    ]
    (directory / COURT_COPY_SIGNATURE_NAME).write_bytes(original)

    # A genuine record, but of another manifest (e.g. another session's, copied over).
    forged = court_copy_record(
        b'{"room_id": "%s"}' % directory.name.encode(),
        directory / "court-copy.mp4",
        {},
        signing_key,
    )
    write_signed_court_copy_record(directory, forged, signing_key)
    assert verify_recording(directory, signing_key.public_key).problems == [
        "court-copy.json: it was derived from another manifest.json than this one"
    ]
    # A record pointing outside the directory is not followed.
    write_signed_court_copy_record(
        directory,
        json.loads(json.dumps(forged)) | {"file": {"name": "../x", "bytes": 0, "sha256": ""}},
        signing_key,
    )
    problems = verify_recording(directory, signing_key.public_key).problems
    assert "court-copy.json: names no court copy file" in problems
    assert "court-copy.mp4: not in the manifest" in problems


def _jiefen(tmp_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "JIEFEN_DATA_DIR": str(tmp_path / "var"),
        "JIEFEN_DATABASE_URL": database_url,
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, "-m", "jiefen.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_the_command_renders_a_missing_court_copy_later(
    db: AsyncEngine,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    pg_database_url: str,
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "var")  # embedded: the key is made here, once
    key = load_or_create_signing_key(settings)
    finaliser = RecordingFinaliser(
        db=db,
        redis=redis_client,
        redis_prefix=redis_prefix,
        recordings_dir=settings.recordings_dir,
        signing_key=key,
        renderer=HANGING,
        render_limit_s=0.2,
    )
    room_id = await ended_room(db, settings.recordings_dir)
    archived = await finaliser.finalise(room_id)
    assert archived.court_copy_missing is not None
    directory = settings.recordings_dir / room_id

    verified = await asyncio.to_thread(
        _jiefen, tmp_path, pg_database_url, "room", "verify", str(directory)
    )
    assert verified.returncode == 0, verified.stderr
    assert "court copy: not rendered yet" in verified.stdout
    assert f"jiefen room finalise {room_id}" in verified.stdout

    listed = await asyncio.to_thread(
        _jiefen, tmp_path, pg_database_url, "room", "list", "--missing-court-copy"
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith(room_id) and "archived   court copy: missing" in listed.stdout
    assert "1 room(s)" in listed.stderr and "jiefen room finalise ROOM" in listed.stderr

    rendered = await asyncio.to_thread(
        _jiefen, tmp_path, pg_database_url, "room", "finalise", room_id
    )
    assert rendered.returncode == 0, rendered.stderr
    assert "court copy: " in rendered.stdout and "court-copy.mp4 (recorded" in rendered.stdout
    verification = verify_recording(directory, key.public_key, room_id)
    assert verification.ok and verification.court_copy is not None

    again = await asyncio.to_thread(_jiefen, tmp_path, pg_database_url, "room", "finalise", room_id)
    assert again.returncode == 0, again.stderr
    assert "was finalised before; nothing to do" in again.stdout

    # Rendered now: no longer listed as missing; listed as rendered among the archived rooms.
    missing = await asyncio.to_thread(
        _jiefen, tmp_path, pg_database_url, "room", "list", "--missing-court-copy"
    )
    assert missing.returncode == 0 and missing.stdout == "" and "0 room(s)" in missing.stderr
    archived_rooms = await asyncio.to_thread(
        _jiefen, tmp_path, pg_database_url, "room", "list", "--state", "archived"
    )
    assert (
        f"{room_id}  " in archived_rooms.stdout and "court copy: rendered" in archived_rooms.stdout
    )
    ended_rooms = await asyncio.to_thread(
        _jiefen, tmp_path, pg_database_url, "room", "list", "--state", "ended"
    )
    assert ended_rooms.stdout == "", ended_rooms.stdout


async def test_only_one_run_finalises_a_room_at_a_time(
    db: AsyncEngine, finaliser_with: Any, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    room_id = await ended_room(db, tmp_path / "recordings")
    directory = tmp_path / "recordings" / room_id
    finaliser = finaliser_with()
    # Another run (a worker's job, or an operator's `jiefen room finalise`) holds the room.
    await redis_client.set(finaliser.lock_key(room_id), "another-run", px=60_000)
    with pytest.raises(RenderFailed, match="being finalised by another run"):
        await finaliser.finalise(room_id, by_hand=True)
    assert not (directory / MANIFEST_NAME).exists()  # it wrote nothing
    assert await redis_client.get(finaliser.lock_key(room_id)) == b"another-run"  # not taken
    await redis_client.delete(finaliser.lock_key(room_id))
    done = await finaliser.finalise(room_id)
    assert done.done_now and done.court_copy is not None
    assert await redis_client.get(finaliser.lock_key(room_id)) is None  # released


async def test_the_last_attempt_archives_and_drops_a_court_copy_never_recorded(
    db: AsyncEngine, finaliser_with: Any, signing_key: SigningKey, tmp_path: Path
) -> None:
    room_id = await ended_room(db, tmp_path / "recordings")
    directory = tmp_path / "recordings" / room_id
    failing = finaliser_with(renderer=FAILING)
    with pytest.raises(RenderFailed):
        await failing.finalise(room_id)
    # A run that died between putting the court copy in place and signing its record.
    (directory / "court-copy.mp4").write_bytes(b"rendered, never recorded")
    # The job's last attempt (the worker would bury it next) archives rather than raises,
    # though fewer than RENDER_ATTEMPTS runs started the render.
    done = await failing.finalise(room_id, last_chance=True)
    assert done.done_now and done.court_copy is None and done.court_copy_missing
    assert await _state(db, room_id) == "archived"
    assert _court_copy_files(directory) == []
    verification = verify_recording(directory, signing_key.public_key, room_id)
    assert verification.ok, verification.problems  # no unlisted file: the evidence verifies
