"""Rooms on several media processes: placement, a wrong node, and failover after a SIGKILL.

The production shape on one machine: a web process (here in-process, ``--role web``) and two
media processes (``jiefen serve --role media`` subprocesses) sharing PostgreSQL, Redis and the
data directory. The join goes through ``POST /rooms/placement`` as the page's does; when the
hosting process is killed, the same people are placed on the survivor, get straight back into
the room, and the recording carries on there, then is finalised and verifies.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.bench_webhook import free_port, wait_until_healthy
from mediation_rooms.manifest import verify_recording
from mediation_rooms.signalling import CLOSE_MOVED
from state.signing_key import load_or_create_signing_key
from tests.conftest import REDIS_URL
from tests.harness import (
    ADMIN_TOKEN,
    RunningJiefen,
    clean_environment,
    eventually,
    running_jiefen,
)
from tests.test_room_signalling import (
    RESPONDENT_PHONE,
    Client,
    admit_applicant,
    file_case,
    frames,
    open_room,
    token_of,
    wait_frames,
)
from tests.test_state_case_store import ID_NUMBER

pytestmark = pytest.mark.services


class MediaProcess:
    """One ``jiefen serve --role media`` subprocess."""

    def __init__(self, node_id: str, process: asyncio.subprocess.Process, url: str) -> None:
        self.node_id = node_id
        self.process = process
        self.url = url


@pytest.fixture
async def web(pg_database_url: str, redis_prefix: str, tmp_path: Path) -> AsyncIterator[Any]:
    async with running_jiefen(
        database_url=pg_database_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        data_dir=tmp_path,
        admin_api_token=ADMIN_TOKEN,
        role="web",
    ) as running:
        yield running


@pytest.fixture
async def media_processes(
    web: RunningJiefen, pg_database_url: str, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[dict[str, MediaProcess]]:
    env = clean_environment()
    env.update(
        JIEFEN_DATABASE_URL=pg_database_url,
        JIEFEN_REDIS_URL=REDIS_URL,
        JIEFEN_REDIS_PREFIX=redis_prefix,
        # The same data key and recordings as the web process, and no signing key: a media
        # process runs no finalisation jobs and never loads it.
        JIEFEN_DATA_DIR=str(tmp_path),
        JIEFEN_DATA_KEY=str(web.settings.data_key),
        JIEFEN_MEDIA_NODE_CAPACITY="1",
        JIEFEN_PUBLIC_URL=web.url,  # join links (a seat opened in the session) lead to the web
    )
    started: dict[str, MediaProcess] = {}
    try:
        for node_id in ("m1", "m2"):
            port = free_port()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "jiefen.cli",
                "serve",
                "--role",
                "media",
                "--port",
                str(port),
                env=env | {"JIEFEN_MEDIA_NODE_ID": node_id},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            started[node_id] = MediaProcess(node_id, process, f"http://127.0.0.1:{port}")
        for media in started.values():
            await wait_until_healthy(
                media.url, lambda m=media: m.process.returncode is not None, timeout_s=60
            )
        yield started
    finally:
        for media in started.values():
            if media.process.returncode is None:
                media.process.terminate()
                try:
                    await asyncio.wait_for(media.process.wait(), 15)
                except TimeoutError:
                    media.process.kill()
                    await media.process.wait()


async def place(web: RunningJiefen, token: str) -> tuple[int, dict[str, Any]]:
    async with web.session.post(f"{web.url}/rooms/placement", json={"token": token}) as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


async def join(
    web: RunningJiefen, clients: list[Client], token: str, identity: str | None = None
) -> Client:
    """Join as the page does: ask placement, then open the socket it names."""
    status, body = await place(web, token)
    assert status == 200, body
    client = Client(await web.session.ws_connect(body["signalling_url"]))
    clients.append(client)
    await client.send_join(token, identity)
    return client


@pytest.mark.timeout(240)
async def test_rooms_are_placed_on_media_processes_and_fail_over(
    web: RunningJiefen, media_processes: dict[str, MediaProcess]
) -> None:
    clients: list[Client] = []
    try:
        await _session_across_a_failover(web, media_processes, clients)
    finally:
        for client in clients:
            await client.close()


async def _session_across_a_failover(
    web: RunningJiefen, media_processes: dict[str, MediaProcess], clients: list[Client]
) -> None:
    # Each role serves its own part.
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await web.session.ws_connect(f"{web.url}/rooms/ws")
    any_media = next(iter(media_processes.values()))
    async with web.session.get(f"{any_media.url}/join") as response:
        assert response.status == 404

    case_no = await file_case(web)
    first = await open_room(web, case_no)
    second = await open_room(web, case_no)
    links = first["links"]

    # A bad token gets the page's refusal; capacity 1 each: the two rooms land on both nodes.
    status, body = await place(web, token_of(links["mediator"])[:-2] + "xx")
    assert status == 403 and body["message"]
    _, first_node = await place(web, token_of(links["mediator"]))
    _, second_node = await place(web, token_of(second["links"]["mediator"]))
    assert {first_node["node"], second_node["node"]} == {"m1", "m2"}
    host = media_processes[first_node["node"]]
    survivor = media_processes[second_node["node"]]
    assert first_node["signalling_url"] == host.url.replace("http://", "ws://") + "/rooms/ws"

    mediator, applicant = await admit_applicant(partial(join, web, clients), links, at_least=30)

    # A join that reaches the other process is sent back to placement, not hosted twice.
    stray = Client(await web.session.ws_connect(survivor.url.replace("http", "ws") + "/rooms/ws"))
    clients.append(stray)
    await stray.send_join(token_of(links["respondent"]), RESPONDENT_PHONE)
    assert (await stray.next("error"))["code"] == "moved"
    assert (await stray.ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
    assert stray.ws.close_code == CLOSE_MOVED

    host.process.send_signal(signal.SIGKILL)
    await asyncio.wait_for(host.process.wait(), 10)
    for client in (mediator, applicant):
        await client.close()

    # Once the dead process's registration runs out, the room is placed on the survivor.
    deadline = time.monotonic() + 30
    while True:
        status, body = await place(web, token_of(links["mediator"]))
        if status == 200 and body["node"] == survivor.node_id:
            break
        assert time.monotonic() < deadline, (status, body)
        await asyncio.sleep(0.5)

    mediator = await join(web, clients, token_of(links["mediator"]))
    await mediator.answer_offer()
    applicant = await join(web, clients, token_of(links["applicant"]), ID_NUMBER[-6:])
    await applicant.answer_offer()  # admitted before the crash: no waiting room this time
    assert not any(m["type"] == "waiting" for m in applicant.messages)
    await wait_frames(mediator, "applicant", 30)
    await wait_frames(applicant, "mediator", 30)
    assert await frames(mediator, "applicant") >= 30

    # A seat opened on the media process gets a link to the web processes' join page.
    await mediator.send("open_seat", seat="interpreter", name="阿依")
    opened_seat = await mediator.next("seat_opened")
    assert opened_seat["link"].startswith(f"{web.url}/join#")
    status, body = await place(web, token_of(opened_seat["link"]))
    assert status == 200 and body["node"] == survivor.node_id

    await mediator.send("end")
    await mediator.next("ended")

    directory = web.settings.recordings_dir / first["room_id"]
    timeline = directory / "timeline.jsonl"

    # "ended" goes out just before the recording is closed.
    async def closed() -> bool:
        return '"recording_closed"' in timeline.read_text(encoding="utf-8")

    assert await eventually(closed)
    names = {path.name for path in directory.iterdir()}
    for seat in ("mediator", "applicant"):
        # Part 01 from the killed process, part 02 from the survivor, in the shared directory.
        assert {f"{seat}-video-01.webm", f"{seat}-video-02.webm"} <= names, names
    events = [
        json.loads(line)["event"] for line in timeline.read_text().splitlines() if line.strip()
    ]
    assert "recording_resumed" in events and events[-1] == "recording_closed"
    after_end = events[events.index("ended") + 1 : -1]
    assert set(after_end) <= {"connection_closed"}, after_end  # the media, closing

    # The web process's embedded worker finalises it; the manifest covers both parts.
    deadline = time.monotonic() + 120
    while True:
        async with web.session.get(
            f"{web.url}/api/rooms/{first['room_id']}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as response:
            shown = await response.json()
        if shown["state"] == "archived":
            break
        assert time.monotonic() < deadline, shown
        await asyncio.sleep(0.5)
    public_key = load_or_create_signing_key(web.settings).public_key
    verification = verify_recording(directory, public_key, first["room_id"])
    assert verification.ok, verification.problems
