"""SQL helpers shared by the ``state.*_store`` modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


def table_of(model: Any) -> sa.Table:
    """The ``sa.Table`` behind a SQLModel table class, typed as such."""
    table: sa.Table = model.__table__
    return table


def insert_for(backend: str) -> Callable[[sa.Table], Any]:
    """The INSERT construct that knows ``ON CONFLICT`` for ``backend`` (a dialect name)."""
    return postgresql.insert if backend == "postgresql" else sqlite.insert


def upsert(connection: AsyncConnection, table: sa.Table) -> Any:
    """An INSERT that knows ``ON CONFLICT`` for the connection's backend."""
    return insert_for(connection.dialect.name)(table)
