"""A media process started under the node id of a running one refuses to start.

``jiefen serve --role media`` as a subprocess, against the real Redis and PostgreSQL, while
this test keeps a node registered under the same ``JIEFEN_MEDIA_NODE_ID`` (what a second
container with the same fixed hostname and port would meet).
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.bench_webhook import free_port
from mediation_rooms.node_heartbeat import NodeHeartbeat
from mediation_rooms.placement import MediaNode, MediaPlacement
from tests.conftest import REDIS_URL
from tests.harness import clean_environment

pytestmark = pytest.mark.services


async def never_lost(room_id: str) -> None:
    raise AssertionError(f"{room_id} was handed over")


@pytest.mark.timeout(120)
async def test_a_media_process_under_a_running_ones_node_id_refuses_to_start(
    pg_database_url: str, redis_client: aioredis.Redis, redis_prefix: str, tmp_path: Path
) -> None:
    placement = MediaPlacement(redis_client, prefix=redis_prefix)
    running = MediaNode("media-1", "ws://10.0.0.1:8091/rooms/ws", capacity=4)
    heartbeat = NodeHeartbeat(placement, running, hosted=lambda: ["room-1"], on_lost=never_lost)
    await heartbeat.start()  # renewed every HEARTBEAT_S, as a running process's node is
    try:
        assert await placement.claim("room-1", "media-1") is None
        env = clean_environment()
        env.update(
            JIEFEN_DATABASE_URL=pg_database_url,
            JIEFEN_REDIS_URL=REDIS_URL,
            JIEFEN_REDIS_PREFIX=redis_prefix,
            JIEFEN_DATA_DIR=str(tmp_path),
            JIEFEN_PUBLIC_URL="http://127.0.0.1:9",
            JIEFEN_MEDIA_NODE_ID="media-1",
            JIEFEN_DATA_KEY=base64.b64encode(bytes(32)).decode(),  # not embedded: configured
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jiefen.cli",
            "serve",
            "--role",
            "media",
            "--port",
            str(free_port()),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), 90)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 2
        message = stderr.decode(errors="replace").strip().splitlines()[-1]
        assert message.startswith("jiefen serve: media node id 'media-1'"), message
        assert "JIEFEN_MEDIA_NODE_ID" in message, message
        # The running node keeps its registration and its room: the refused one wrote nothing.
        assert await placement.node("media-1") == running
        assert await placement.redis.get(placement.room_key("room-1")) == b"media-1"
        assert await placement.redis.smembers(placement.nodes_key) == {b"media-1"}
    finally:
        await heartbeat.stop()
