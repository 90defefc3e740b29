"""The database engine: creating it, migrating the schema, and what "unavailable" means.

- ``create_engine(url)`` gives an AsyncEngine tuned for the backend: SQLite (the embedded
  default) in WAL mode with foreign keys on and a busy timeout, so concurrent writers wait
  instead of failing; PostgreSQL with a bounded pool, a ping at every checkout (connections
  killed by a restart or a proxy are replaced, not handed out) and connect/command timeouts.
- ``migrate(url)`` upgrades the schema to the newest revision in ``state/migrations``; it is
  the only way tables are created. ``upgrade(engine)`` does the same from async code.
- ``storage_errors()`` turns a database that cannot be reached (refused, timed out, dropped,
  locked past the busy timeout, pool exhausted) into ``StorageUnavailable``; other database
  errors (constraint violations, SQL mistakes) are bugs and pass through unchanged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine

from jiefen.errors import StorageUnavailable

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

#: How long an SQLite writer waits for another to finish before giving up (seconds).
SQLITE_BUSY_TIMEOUT_S = 30.0
#: How long a PostgreSQL connect, or one statement, may take (seconds).
PG_CONNECT_TIMEOUT_S = 10.0
PG_COMMAND_TIMEOUT_S = 30.0
#: How long the check of a pooled connection may take before the database counts as unavailable.
PG_PING_TIMEOUT_S = 5.0
_FRESH = "jiefen_fresh"
#: Key of the advisory lock that makes concurrent migrations of one PostgreSQL database wait.
_MIGRATION_LOCK_KEY = 0x4A494546454E  # "JIEFEN"


def create_engine(database_url: str, *, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    """An AsyncEngine for an ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://`` URL.

    For SQLite the folder of the file is created if missing.

    Connecting is lazy: a database that is down shows up as StorageUnavailable on first use.
    ``pool_size``/``max_overflow`` bound the PostgreSQL pool per engine (i.e. per process).
    """
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = _create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
        return engine
    if backend == "postgresql":
        engine = _create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=PG_CONNECT_TIMEOUT_S,
            pool_recycle=1800,
            connect_args={
                "timeout": PG_CONNECT_TIMEOUT_S,
                "command_timeout": PG_COMMAND_TIMEOUT_S,
                "server_settings": {"application_name": "jiefen"},
            },
        )
        event.listen(engine.sync_engine, "connect", _mark_fresh)
        event.listen(engine.sync_engine, "checkout", _ping_postgresql)
        return engine
    raise ValueError(f"unsupported database backend {backend!r} (use SQLite or PostgreSQL)")


def _mark_fresh(_dbapi_connection: Any, record: Any) -> None:
    record.info[_FRESH] = True


def _ping_postgresql(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Make sure a pooled connection is alive before it is handed out; a dead one is replaced.

    What ``pool_pre_ping`` does, in one round trip instead of its three: SQLAlchemy's asyncpg
    ping wraps its ``;`` in BEGIN and ROLLBACK (for PgBouncer's transaction mode, which a lone
    simple-protocol statement suits as well). Like it, a connection made for this checkout is
    not pinged. A failed ping raises ``DisconnectionError``, SQLAlchemy's documented way to have
    the pool discard the connection and take a fresh one; except a server too slow to answer
    within ``PG_PING_TIMEOUT_S``: that propagates, and ``storage_errors`` reports the database
    unavailable instead of the pool retrying a server that is not dead but stuck.
    """
    if record.info.pop(_FRESH, False):
        return
    try:
        dbapi_connection.run_async(
            lambda driver: driver.execute("SELECT 1", timeout=PG_PING_TIMEOUT_S)
        )
    except TimeoutError:  # a stuck server, not a dead connection
        raise
    except Exception as error:
        # Whatever a dead connection raises (asyncpg has several: "connection is closed", a
        # protocol left mid-operation by the server's goodbye, ...): replace it. The fresh one
        # is not pinged, so a database that is down shows up on connecting, as unavailable.
        raise sqlalchemy.exc.DisconnectionError(f"pooled connection is dead: {error!r}") from error


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers run while one writer writes; NORMAL sync is durable enough under WAL
        # (a power cut may lose the last commits, never corrupt the file).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    finally:
        cursor.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """ORM sessions on ``engine``; objects stay readable after commit (no expiry)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def is_unavailable(error: BaseException) -> bool:
    """True if ``error`` means the database cannot be reached or cannot take the work now."""
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        # No statement means it failed while connecting (refused, no such database, too many
        # connections, server starting up): whatever the driver called it, we cannot reach it.
        return (
            error.connection_invalidated
            or error.statement is None
            or isinstance(error, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError)
        )
    # Pool exhausted, or the driver failing before SQLAlchemy could wrap its error (asyncpg
    # raises OSError for a refused connection and TimeoutError for a slow one).
    return isinstance(error, sqlalchemy.exc.TimeoutError | OSError | TimeoutError)


@contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Re-raise database unavailability inside the block as StorageUnavailable(``action``)."""
    try:
        yield
    except Exception as error:
        if is_unavailable(error):
            log.warning("database unavailable while trying to %s: %r", action, error)
            raise StorageUnavailable(f"database unavailable: could not {action}") from error
        raise


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _upgrade_on(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several processes starting together: the first migrates, the others wait, then
        # find nothing left to do. Released when this transaction ends.
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
    command.upgrade(_alembic_config(connection), "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Upgrade the database behind ``engine`` to the newest schema revision, in one transaction."""
    with storage_errors("migrate the database"):
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade_on)


async def _migrate(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


def migrate(database_url: str) -> None:
    """Upgrade the database at ``database_url`` to the newest schema revision.

    Blocking. Safe to call from synchronous code and from inside a running event loop
    (start-up of ``jiefen serve``, tests): the work runs on its own loop in a helper thread.
    Raises StorageUnavailable if the database cannot be reached.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(lambda: asyncio.run(_migrate(database_url))).result()
