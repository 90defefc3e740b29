from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from jiefen.errors import StorageUnavailable
from state import callback_store, case_store, media_store
from state.db import create_engine, migrate, session_factory
from state.models import MediaBlob

NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_postgresql_down_is_storage_unavailable() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/test"
    engine = create_engine(url)
    try:
        with pytest.raises(StorageUnavailable):
            await case_store.list_cases_for_openid(engine, "o-a")
        with pytest.raises(StorageUnavailable):
            await callback_store.record_callback_request(engine, "o-a", None, "", NOW)
    finally:
        await engine.dispose()
    with pytest.raises(StorageUnavailable):
        migrate(url)


async def test_missing_postgresql_database_is_storage_unavailable(pg_database_url: str) -> None:
    engine = create_engine(pg_database_url.rsplit("/", 1)[0] + "/jiefen_no_such_database")
    try:
        with pytest.raises(StorageUnavailable):
            await media_store.get_media_blob(engine, "m")
    finally:
        await engine.dispose()


async def test_unopenable_sqlite_file_is_storage_unavailable(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path.as_posix()}")  # a directory
    try:
        with pytest.raises(StorageUnavailable):
            await media_store.get_media_blob(engine, "m")
    finally:
        await engine.dispose()
    # aiosqlite 0.22 stops the worker thread of a failed connect without waiting for it; let
    # it finish while this loop still runs, or it reports "Event loop is closed" from its thread.
    for _ in range(200):
        if not any("_connection_worker_thread" in t.name for t in threading.enumerate()):
            break
        await asyncio.sleep(0.01)


async def test_sqlite_is_tuned_for_concurrent_use(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{(tmp_path / 'new' / 'jiefen.db').as_posix()}"
    migrate(url)
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            pragmas = [
                (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "foreign_keys", "busy_timeout")
            ]
            assert pragmas == ["wal", 1, 30000]
            with pytest.raises(sa.exc.IntegrityError):
                await connection.execute(
                    sa.text(
                        "INSERT INTO evidence (case_id, media_id, kind, created_at)"
                        " VALUES (999, 'm', 'image', '2026-11-21')"
                    )
                )
    finally:
        await engine.dispose()


async def test_postgresql_recovers_after_its_connections_are_killed(pg_database_url: str) -> None:
    migrate(pg_database_url)
    engine = create_engine(pg_database_url)
    try:
        await media_store.media_blob_pending(engine, "m-1", "o-a", "image", NOW)
        async with engine.connect() as connection:
            await connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        # The pooled connection of the first call is dead; pre-ping replaces it.
        assert await media_store.get_media_blob(engine, "m-1") is not None
    finally:
        await engine.dispose()


async def test_a_pooled_postgresql_connection_is_checked_with_one_statement(
    pg_database_url: str,
) -> None:
    engine = create_engine(pg_database_url)
    try:
        statements: list[str] = []
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            raw.driver_connection.add_query_logger(lambda record: statements.append(record.query))
        async with engine.connect():
            pass
        await asyncio.sleep(0.1)  # asyncpg calls query loggers from the loop, soon after
        # SQLAlchemy's own pre-ping sent BEGIN, ";" and ROLLBACK: three round trips.
        assert statements == ["SELECT 1"]
    finally:
        await engine.dispose()


async def test_a_stuck_database_at_checkout_is_storage_unavailable(
    pg_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(pg_database_url)
    monkeypatch.setattr("state.db.PG_PING_TIMEOUT_S", 0.5)
    engine = create_engine(pg_database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            backend = (await connection.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        os.kill(backend, signal.SIGSTOP)  # alive, but answers nothing: the pooled connection
        try:
            with pytest.raises(StorageUnavailable):
                await media_store.get_media_blob(engine, "m-1")
        finally:
            os.kill(backend, signal.SIGCONT)
    finally:
        await engine.dispose()


async def test_timestamps_come_back_aware_utc(database_url: str) -> None:
    migrate(database_url)
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            kunming = datetime.fromisoformat("2026-11-21T10:00:00+08:00")
            session.add(
                MediaBlob(
                    media_id="m", openid="o", kind="image", status="pending",
                    created_at=kunming, updated_at=kunming,
                )
            )  # fmt: skip
            await session.commit()
        blob = await media_store.get_media_blob(engine, "m")
        assert blob is not None
        assert blob.created_at == NOW and blob.created_at.utcoffset() == NOW.utcoffset()
        async with session_factory(engine)() as session:
            session.add(
                MediaBlob(
                    media_id="n", openid="o", kind="image", status="pending",
                    created_at=datetime(2026, 11, 21), updated_at=NOW,
                )
            )  # fmt: skip
            with pytest.raises(sa.exc.StatementError, match="naive"):
                await session.commit()
    finally:
        await engine.dispose()
