"""The `jiefen` command as the README uses it: `serve` on embedded defaults, `chat`, `bench`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.bench_webhook import free_port, intake_script
from tests.conftest import DATABASE_ADMIN_URL, REDIS_URL
from tests.harness import clean_environment, eventually, platform_signing_key_file

JIEFEN = [sys.executable, "-m", "jiefen.cli"]


def _wait_healthy(url: str, exited: Callable[[], bool]) -> None:
    """Wait until ``url`` answers /healthz; fail at once if the server process ``exited()``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert not exited(), "jiefen serve exited early"
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("jiefen serve did not become healthy")


def test_serve_on_embedded_defaults_and_chat_files_a_case(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [*JIEFEN, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=clean_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, lambda: server.poll() is not None)
        lines = ["人工", *intake_script(3), "查询", "/图片", "/退出"]
        chat = subprocess.run(
            [*JIEFEN, "chat", "--url", url],
            cwd=tmp_path,
            env=clean_environment(),
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        # A video session for the case: the links, and the mediator's link lets them in.
        case_no = re.findall(r"JF\d{8}-\d{4}", chat.stdout)[0]
        opened = _run(
            tmp_path,
            [*JIEFEN, "room", "open", case_no, "--at", "2026-11-23T09:30", "--interpreter", "阿依"],
        )
        links = dict(re.findall(r"^\s+(\w+)\s+(\S+/join#\S+)$", opened, re.MULTILINE))
        assert set(links) == {"mediator", "applicant", "respondent", "interpreter"}, opened
        assert "2026-11-23 09:30" in opened
        with urllib.request.urlopen(f"{url}/join") as page:
            assert "视频调解室" in page.read().decode()
        welcome = asyncio.run(_join_as(url, links["mediator"].split("#", 1)[1]))
        assert welcome["type"] == "welcome" and welcome["room"]["case_no"] == case_no
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=20)
    assert server.returncode == 0, output
    assert f"{url}/wechat" in output  # serve prints the URLs it serves
    assert "start-up heap frozen" in output  # the long-lived process left its heap to itself
    assert "公众号：您好，欢迎使用「解纷」" in chat.stdout  # the welcome on following
    case_numbers = set(re.findall(r"JF\d{8}-\d{4}", chat.stdout))
    assert len(case_numbers) == 1, chat.stdout  # filed, then listed by 「查询」
    assert chat.stdout.count(case_numbers.pop()) >= 2
    case_no = re.findall(r"JF\d{8}-\d{4}", chat.stdout)[0]
    admin = [*JIEFEN, "admin"]
    shown = _run(tmp_path, [*admin, "case", case_no])
    assert '"id_number_masked": "5301**********608X"' in shown
    assert "53010219900307608" not in shown  # the full ID is never shown
    assert "官渡区" in _run(tmp_path, [*admin, "routing"])
    waiting = _run(tmp_path, [*admin, "callbacks"])
    request_id = re.findall(r"^#(\d+)", waiting, re.MULTILINE)
    assert len(request_id) == 1, waiting  # the 「人工」 sent before filing
    _run(tmp_path, [*admin, "callbacks", "--handled", request_id[0]])
    assert _run(tmp_path, [*admin, "callbacks"]).strip() == ""
    # Embedded defaults: SQLite and the data key under ./var of the working directory.
    assert (tmp_path / "var" / "jiefen.db").is_file()
    assert (tmp_path / "var" / "keys" / "data.key").stat().st_mode & 0o077 == 0


async def _join_as(url: str, token: str) -> dict[str, object]:
    """Join as the page does: placement (the in-process stand-in runs its Lua), then the
    socket it names, which in embedded mode is a path on the same origin."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/rooms/placement", json={"token": token}) as response:
            assert response.status == 200, await response.text()
            placed = await response.json()
        assert placed["signalling_url"] == "/rooms/ws"
        async with session.ws_connect(url + placed["signalling_url"]) as ws:
            await ws.send_json({"type": "join", "token": token})
            message: dict[str, object] = await ws.receive_json(timeout=10)
            return message


def _run(cwd: Path, command: list[str]) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=clean_environment(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.timeout(150)
async def test_room_open_beside_embedded_serve_invites_the_applicant_in_chat(
    tmp_path: Path,
) -> None:
    """The README walkthrough on embedded defaults: `serve` in one terminal, `chat` in another,
    `room open` in a third; the invitation reaches the chat terminal with nothing typed. With
    no server running, `room open` still opens the room and says nobody was invited."""
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        *JIEFEN,
        *("serve", "--port", str(port)),
        cwd=tmp_path,
        env=clean_environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    chat: asyncio.subprocess.Process | None = None
    transcript: list[str] = []
    try:
        await asyncio.to_thread(_wait_healthy, url, lambda: server.returncode is not None)
        chat = await asyncio.create_subprocess_exec(
            *JIEFEN,
            *("chat", "--url", url),
            cwd=tmp_path,
            env=clean_environment(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert chat.stdin is not None and chat.stdout is not None
        chat.stdin.write(("\n".join(intake_script(7)) + "\n").encode())
        await chat.stdin.drain()
        filed = await _read_until(chat.stdout, transcript, r"JF\d{8}-\d{4}", wait_s=60)
        case_no = filed.group(0)

        # `room open` is told nothing of the server (not its port): it finds the one of its
        # installation, which opens the room and queues the invitation in its own outbox.
        opened = await asyncio.to_thread(_run, tmp_path, [*JIEFEN, "room", "open", case_no])
        assert "sent to them in WeChat" in opened, opened
        links = dict(re.findall(r"^\s+(\w+)\s+(\S+/join#\S+)$", opened, re.MULTILINE))
        assert links["applicant"].startswith(f"{url}/join#")  # the server's own address
        await _read_until(
            chat.stdout,
            transcript,
            rf"公众号（推送）：您的案件 {case_no} 已安排视频调解",
            wait_s=20,
        )
        await _read_until(chat.stdout, transcript, re.escape(links["applicant"]), wait_s=5)
        chat.stdin.write("/退出\n".encode())
        await chat.stdin.drain()
        assert await asyncio.wait_for(chat.wait(), 20) == 0
        token_file = tmp_path / "var" / "keys" / "admin-api.token"
        assert token_file.stat().st_mode & 0o077 == 0
        assert json.loads((tmp_path / "var" / "run" / "serve.json").read_text())["url"] == url
    finally:
        if chat is not None and chat.returncode is None:
            chat.kill()
            await chat.wait()
        server.terminate()
        output, _ = await asyncio.wait_for(server.communicate(), 20)
    assert server.returncode == 0, output.decode()[-3000:]
    assert not (tmp_path / "var" / "run" / "serve.json").exists()  # withdrawn at exit

    # No server: the room is opened all the same, and the command says who was not invited.
    alone = await asyncio.to_thread(_run_unchecked, tmp_path, [*JIEFEN, "room", "open", case_no])
    assert alone.returncode == 0, alone.stderr
    assert "/join#" in alone.stdout
    assert "NOT sent to the applicant in WeChat" in alone.stderr
    assert "no `jiefen serve` is running" in alone.stderr
    # A server that was killed left its record: nobody answers there, and it is said so.
    record = tmp_path / "var" / "run" / "serve.json"
    record.write_text(json.dumps({"url": f"http://127.0.0.1:{free_port()}", "pid": 1}))
    stale = await asyncio.to_thread(_run_unchecked, tmp_path, [*JIEFEN, "room", "open", case_no])
    assert stale.returncode == 0, stale.stderr
    assert "NOT sent to the applicant in WeChat" in stale.stderr
    assert "does not answer" in stale.stderr


async def _read_until(
    stream: asyncio.StreamReader, transcript: list[str], pattern: str, *, wait_s: float
) -> re.Match[str]:
    """Read lines from ``stream`` (kept in ``transcript``) until one matches ``pattern``."""
    deadline = time.monotonic() + wait_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {pattern!r} in:\n" + "\n".join(transcript[-40:]))
        try:
            raw = await asyncio.wait_for(stream.readline(), remaining)
        except TimeoutError:
            continue
        if not raw:
            raise AssertionError(f"ended before {pattern!r}:\n" + "\n".join(transcript[-40:]))
        line = raw.decode().rstrip("\n")
        transcript.append(line)
        found = re.search(pattern, line)
        if found:
            return found


def _run_unchecked(cwd: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=clean_environment(), capture_output=True, text=True, timeout=60
    )


async def test_the_webhook_benchmark_runs_and_reports(redis_client: aioredis.Redis) -> None:
    env = dict(
        clean_environment(),
        JIEFEN_BENCH_REDIS_URL=REDIS_URL,
        JIEFEN_BENCH_DATABASE_URL=DATABASE_ADMIN_URL,
    )
    bench = await asyncio.create_subprocess_exec(
        *JIEFEN,
        *("bench", "webhook", "--users", "3", "--concurrency", "2", "--json"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(bench.communicate(), timeout=120)
    assert bench.returncode == 0, stderr.decode()[-3000:]
    figures = json.loads(stdout)
    assert figures["failures"] == 0
    assert figures["cases_created"] == 3
    assert figures["messages"] == 3 * len(intake_script(0))
    assert figures["server_cpu_us_per_message"] > 0
    assert figures["host_calibration_ms"] > 0
    assert figures["latency_p50_ms"] <= figures["latency_p99_ms"]


async def test_web_and_worker_processes_share_the_work(
    redis_client: aioredis.Redis, redis_prefix: str, pg_database_url: str, tmp_path: Path
) -> None:
    """Production shape: `serve --role web` answers WeChat, a separate `jiefen worker` pushes
    the replies that missed the passive window; they share only Redis and PostgreSQL."""
    from bot.fake_wechat_api import running_fake_wechat_api
    from bot.wechat_simulator import CryptoMode, NoReply, WeChatSimulator
    from config.settings import DEV_WECHAT_AES_KEY, DEV_WECHAT_APPID, DEV_WECHAT_TOKEN

    async with running_fake_wechat_api() as (fake, fake_url):
        env = dict(
            clean_environment(),
            JIEFEN_DATABASE_URL=pg_database_url,
            JIEFEN_REDIS_URL=REDIS_URL,
            JIEFEN_REDIS_PREFIX=redis_prefix,
            JIEFEN_DATA_DIR=str(tmp_path),
            JIEFEN_WECHAT_API_BASE=fake_url,
            JIEFEN_PASSIVE_REPLY_DEADLINE_S="0",
            # Not embedded: the deployment's keys are configured, the same for both processes.
            JIEFEN_SIGNING_KEY_FILE=str(platform_signing_key_file(tmp_path)),
            JIEFEN_DATA_KEY=base64.b64encode(os.urandom(32)).decode(),
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        web_process = await asyncio.create_subprocess_exec(
            *JIEFEN, "serve", "--port", str(port), "--role", "web", env=env
        )
        worker = await asyncio.create_subprocess_exec(*JIEFEN, "worker", env=env)
        try:
            await asyncio.to_thread(_wait_healthy, url, lambda: web_process.returncode is not None)
            simulator = WeChatSimulator(
                DEV_WECHAT_TOKEN, DEV_WECHAT_APPID, DEV_WECHAT_AES_KEY, CryptoMode.SAFE
            )
            async with aiohttp.ClientSession() as session:
                delivery = await simulator.deliver(
                    session, f"{url}/wechat", simulator.subscribe("o_two_processes")
                )
            assert isinstance(delivery.reply, NoReply)  # missed the (zero) passive window
            await eventually(lambda: _as_awaitable(fake.sent), wait_s=20)
            assert [m.touser for m in fake.sent] == ["o_two_processes"]
            assert "我要调解" in (fake.sent[0].content or "")
            # Neither a web process nor a worker hosts rooms: no media node was registered.
            assert await redis_client.smembers(f"{redis_prefix}media:nodes") == set()
        finally:
            for process in (web_process, worker):
                process.terminate()
            codes = [await asyncio.wait_for(p.wait(), 20) for p in (web_process, worker)]
        assert codes == [0, 0]


def test_roles_that_share_work_refuse_to_start_without_a_shared_redis(tmp_path: Path) -> None:
    for role in ("web", "media"):
        result = subprocess.run(
            [*JIEFEN, "serve", "--role", role],
            env=dict(clean_environment(), JIEFEN_DATA_DIR=str(tmp_path)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result
        assert "JIEFEN_REDIS_URL" in result.stderr
    # A media process must know where the join page is (the links it writes).
    result = subprocess.run(
        [*JIEFEN, "serve", "--role", "media"],
        env=dict(clean_environment(), JIEFEN_DATA_DIR=str(tmp_path), JIEFEN_REDIS_URL=REDIS_URL),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert "JIEFEN_PUBLIC_URL" in result.stderr


async def _as_awaitable(value: object) -> object:
    return value
