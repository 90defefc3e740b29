"""SQL helpers shared by the ``state.*_store`` modules."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


def table_of(model: Any) -> sa.Table:
    """The ``sa.Table`` behind a SQLModel table class, typed as such."""
    table: sa.Table = model.__table__
    return table


def upsert(connection: AsyncConnection, table: sa.Table) -> Any:
    """An INSERT that knows ``ON CONFLICT`` for the connection's backend."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
