from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlmodel import SQLModel

import state.models  # noqa: F401  (the tables the migrations must produce)
from state.db import create_engine, migrate

TABLES = {
    "alembic_version",
    "callback_requests",
    "case_number_counters",
    "case_status_changes",
    "cases",
    "evidence",
    "intake_messages",
    "media_blobs",
    "mediation_rooms",
    "organisations",
    "parties",
    "room_seats",
}


def schema_diff(connection: Connection, metadata: sa.MetaData) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    diff: list[object] = compare_metadata(context, metadata)
    return diff


#: The newest revision under state/migrations/versions: a new migration updates this on purpose.
HEAD_REVISION = "0003"


async def test_migrate_creates_the_schema_and_is_idempotent(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            version = (
                await connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).scalar_one()
    finally:
        await engine.dispose()
    assert tables == TABLES
    assert version == HEAD_REVISION


async def test_migrations_match_the_models(database_url: str) -> None:
    migrate(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(schema_diff, SQLModel.metadata) == []
            # The comparison does see a difference when there is one.
            changed = sa.MetaData()
            for table in SQLModel.metadata.sorted_tables:
                table.to_metadata(changed)
            sa.Table("cases", changed).append_column(sa.Column("extra", sa.Integer()))
            assert await connection.run_sync(schema_diff, changed) != []
    finally:
        await engine.dispose()


async def test_processes_migrating_together_do_not_collide(pg_database_url: str) -> None:
    await asyncio.gather(*(asyncio.to_thread(migrate, pg_database_url) for _ in range(3)))
    engine = create_engine(pg_database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(schema_diff, SQLModel.metadata) == []
    finally:
        await engine.dispose()
