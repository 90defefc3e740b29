"""Residents' requests for a person to call them back (「人工」).

Every function follows the contract in ``state.case_store``'s docstring: one short transaction
over the application's ``AsyncEngine``, ``StorageUnavailable`` when the database cannot be
reached, ``now`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from state._sql import table_of
from state.db import storage_errors
from state.models import CallbackRequest

_CALLBACKS = table_of(CallbackRequest)


async def record_callback_request(
    db: AsyncEngine, openid: str, step: str | None, note: str, now: datetime
) -> int:
    """Store a resident's request for a person to call back (「人工」); returns its id."""
    with storage_errors("record the callback request"):
        async with db.begin() as connection:
            request_id: int = (
                await connection.execute(
                    sa.insert(_CALLBACKS)
                    .values(openid=openid, step=step, note=note, created_at=now)
                    .returning(_CALLBACKS.c.id)
                )
            ).scalar_one()
    return request_id


@dataclass(frozen=True, slots=True)
class CallbackRecord:
    request_id: int
    openid: str
    step: str | None
    note: str
    created_at: datetime


async def list_open_callback_requests(db: AsyncEngine, limit: int = 100) -> list[CallbackRecord]:
    """Requests nobody has handled yet, oldest first (the order staff should call back in)."""
    query = (
        sa.select(_CALLBACKS)
        .where(_CALLBACKS.c.handled_at.is_(None))
        .order_by(_CALLBACKS.c.created_at, _CALLBACKS.c.id)
        .limit(limit)
    )
    with storage_errors("list the callback requests"):
        async with db.connect() as connection:
            rows = (await connection.execute(query)).all()
    return [CallbackRecord(row.id, row.openid, row.step, row.note, row.created_at) for row in rows]


async def mark_callback_handled(db: AsyncEngine, request_id: int, now: datetime) -> bool:
    """Record that staff called the resident back; ``False`` if no open request has that id."""
    statement = (
        sa.update(_CALLBACKS)
        .where(_CALLBACKS.c.id == request_id, _CALLBACKS.c.handled_at.is_(None))
        .values(handled_at=now)
    )
    with storage_errors("mark the callback request handled"):
        async with db.begin() as connection:
            result = await connection.execute(statement)
    return bool(result.rowcount)
