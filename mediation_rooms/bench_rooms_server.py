"""The server under test of ``jiefen bench rooms``: one ``jiefen serve`` subprocess.

:class:`BenchServer` starts it on embedded defaults in the run's data directory (or the Redis and
PostgreSQL given), reads its CPU time from ``/proc``, files the case of each room in its database
and opens the room through its API, and stops it. Also the run's one error, :class:`BenchError`,
and its progress line on standard error (:func:`status`), which the rest of the run shares.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bot.bench_webhook import ServerNotReady, free_port, wait_until_healthy
from cases.draft import CaseDraft, Category, LanguageNeed, MediationMode, Place
from config.routing import load_routing_table
from state import case_store
from state.db import create_engine
from state.personal_data import PersonalDataProtector

if TYPE_CHECKING:
    from mediation_rooms.bench_rooms import BenchOptions

APPLICANT_ID_NUMBER = "53010219900307608X"  # valid GB 11643 checksum; not a real person
RESPONDENT_PHONE = "13900139000"

#: The server gets this long to exit after SIGTERM, then it is killed.
STOP_TIMEOUT_S = 10.0


class BenchError(RuntimeError):
    """The benchmark could not run to the end (server start, a join, the recordings)."""


class BenchServer:
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
        status("starting jiefen serve")
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


def status(text: str) -> None:
    sys.stderr.write(f"\r\033[K{text}")
    sys.stderr.flush()
