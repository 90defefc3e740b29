"""Alembic environment, driven only from ``state.db`` (no alembic.ini, no URL in here).

``state.db.upgrade`` opens a transaction on the application's engine and hands its
connection in through ``config.attributes["connection"]``; revisions run inside it.
New revisions are hand-written (``script.py.mako`` is the template) and must leave the schema
equal to ``state.models``: ``tests/test_state_migrations.py`` compares the two.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

import state.models  # noqa: F401  (registers the tables on SQLModel.metadata)

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations through state.db.migrate(), which supplies a connection")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
