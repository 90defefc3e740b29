"""The media process killed with SIGKILL in the middle of a session: the recording stays playable.

A real `jiefen serve` subprocess (PostgreSQL, Redis) hosts a live room with two synthetic
participants; after a few seconds of media it is killed without warning. Every recorded file
must still open and decode, up to about the last cluster (0.5 s) before the kill: VP8 in WebM,
and in a room configured for H.264 (``JIEFEN_VIDEO_CODEC``) its video in Matroska.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import av
import pytest

from bot.bench_webhook import free_port, wait_until_healthy
from state import room_store
from state.db import create_engine
from tests.conftest import REDIS_URL
from tests.harness import ADMIN_TOKEN, clean_environment
from tests.test_room_signalling import Client, frames, token_of, wait_frames
from tests.test_state_case_store import ID_NUMBER, file_case

pytestmark = pytest.mark.services


@pytest.mark.parametrize(("codec", "video_suffix"), [("VP8", "webm"), ("H264", "mkv")])
async def test_sigkill_mid_session_leaves_playable_recordings(
    pg_database_url: str, redis_prefix: str, tmp_path: Path, codec: str, video_suffix: str
) -> None:
    port = free_port()
    env = clean_environment()
    env.update(
        JIEFEN_DATABASE_URL=pg_database_url,
        JIEFEN_REDIS_URL=REDIS_URL,
        JIEFEN_REDIS_PREFIX=redis_prefix,
        JIEFEN_ADMIN_API_TOKEN=ADMIN_TOKEN,
        JIEFEN_DATA_KEY=base64.b64encode(bytes(range(32))).decode(),  # the tests' PROTECTOR
        JIEFEN_DATA_DIR=str(tmp_path),
        JIEFEN_VIDEO_CODEC=codec,
    )
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jiefen.cli",
        "serve",
        "--port",
        str(port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    clients: list[Client] = []
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until_healthy(url, lambda: server.returncode is not None, timeout_s=30)
            db = create_engine(pg_database_url)
            try:
                case = await file_case(db, submission_key="kill-test")
            finally:
                await db.dispose()
            async with session.post(
                f"{url}/api/rooms",
                json={"case_no": case.case_no},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as response:
                assert response.status == 201
                opened = await response.json()
            links = opened["links"]

            async def join(seat: str, identity: str | None = None) -> Client:
                client = Client(await session.ws_connect(f"{url}/rooms/ws"), video_codec=codec)
                clients.append(client)
                await client.send_join(token_of(links[seat]), identity)
                return client

            mediator = await join("mediator")
            await mediator.answer_offer()
            applicant = await join("applicant", ID_NUMBER[-6:])
            await applicant.next("waiting")
            await mediator.send("admit", seat="applicant")
            await applicant.answer_offer()
            await wait_frames(mediator, "applicant", 90)
            await wait_frames(applicant, "mediator", 60)
            delivered = await frames(mediator, "applicant")

            server.send_signal(signal.SIGKILL)
            await asyncio.wait_for(server.wait(), 10)
            for client in clients:
                if client.peer is not None:
                    await client.peer.close()
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()

    directory = tmp_path / "recordings" / opened["room_id"]
    files = sorted([*directory.glob("*.webm"), *directory.glob("*.mkv")])
    assert {f.name for f in files} >= {
        f"mediator-video-01.{video_suffix}",
        "mediator-audio-01.webm",
        f"applicant-video-01.{video_suffix}",
        "applicant-audio-01.webm",
    }
    for path in files:
        with av.open(str(path)) as container:
            stream = container.streams[0]
            decoded = sum(1 for _ in container.decode(stream))
        assert decoded > 0, path.name
        if path.name == f"applicant-video-01.{video_suffix}":
            # All but the last half-second cluster (and the frames still in flight) survive.
            assert decoded >= delivered - 30, (decoded, delivered)
    timeline = (directory / "timeline.jsonl").read_text(encoding="utf-8")
    assert '"admitted"' in timeline  # flushed line by line, so it survived too
    db = create_engine(pg_database_url)
    try:
        room = await room_store.get_room(db, opened["room_id"])
    finally:
        await db.dispose()
    assert room is not None and room.state == "live"  # killed: nobody ended it
