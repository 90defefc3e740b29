"""Fixtures shared by the whole suite: the real Redis and PostgreSQL servers, isolated per test.

Each test gets its own Redis key prefix (deleted afterwards) and its own PostgreSQL database
(created empty, dropped afterwards), so tests never see each other's data. When a server is down,
a test that needs it fails under CI (``CI`` or ``JIEFEN_REQUIRE_SERVICES`` set) and is skipped
otherwise, with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
import redis.asyncio as aioredis

if TYPE_CHECKING:
    from playwright.async_api import Browser

    from tests.harness import RunningJiefen

REDIS_URL = os.environ.get("JIEFEN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_ADMIN_URL = os.environ.get(
    "JIEFEN_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SERVICES_REQUIRED = bool(os.environ.get("CI") or os.environ.get("JIEFEN_REQUIRE_SERVICES"))
#: Debian's Chromium (the real binary, not the /usr/bin/chromium wrapper script); Playwright's own
#: browser download does not work on these machines.
CHROMIUM = Path(os.environ.get("JIEFEN_TEST_CHROMIUM", "/usr/lib/chromium/chromium"))
#: Flags known to work here: no sandbox or GPU in the containers, no traffic to Google, and a
#: fake camera and microphone (a test pattern and a beep) granted without a permission prompt.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
)


def _service_missing(what: str, error: BaseException) -> None:
    message = f"{what} is not reachable ({error!r}); start it as DESIGN.md 'Services' says"
    if SERVICES_REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses."""
    return f"jiefen-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def redis_client(redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the real Redis server; every key under ``redis_prefix`` is deleted afterwards."""
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as error:  # any connection failure means the service is missing
        await client.aclose()
        _service_missing("Redis", error)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{redis_prefix}*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def pg_database_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for this test, as a SQLAlchemy asyncpg URL."""
    name = f"jiefen_t_{uuid.uuid4().hex[:16]}"
    try:
        admin = await asyncpg.connect(DATABASE_ADMIN_URL, timeout=5)
    except Exception as error:  # any connection failure means the service is missing
        _service_missing("PostgreSQL", error)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = DATABASE_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    yield f"{base}/{name}"
    admin = await asyncpg.connect(DATABASE_ADMIN_URL, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def sqlite_database_url(tmp_path: Path) -> str:
    """A new SQLite file for this test, as a SQLAlchemy aiosqlite URL."""
    return f"sqlite+aiosqlite:///{(tmp_path / 'jiefen.db').as_posix()}"


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Run the test once on PostgreSQL and once on SQLite."""
    fixture = "pg_database_url" if request.param == "postgresql" else "sqlite_database_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium with a fake camera and microphone, driven by Playwright's async API.

    Missing Chromium fails the test under CI (``.ci/run`` installs it) and skips it otherwise.
    """
    if not os.access(CHROMIUM, os.X_OK):
        message = f"Chromium is missing ({CHROMIUM}); .ci/run installs it, see DESIGN.md 'Services'"
        if SERVICES_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright  # only the browser tests need it

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_ARGS)
        )
        yield launched
        await launched.close()


@pytest.fixture
async def jiefen(
    pg_database_url: str, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[RunningJiefen]:
    """A running Jiefen on the real PostgreSQL and Redis with the rooms API on (bearer
    ``tests.harness.ADMIN_TOKEN``). A module that needs another set-up defines its own."""
    from tests.harness import ADMIN_TOKEN, running_jiefen  # the whole app: imported when used

    async with running_jiefen(
        database_url=pg_database_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        data_dir=tmp_path,
        admin_api_token=ADMIN_TOKEN,
    ) as running:
        yield running
