"""Residents' requests for a person to call them back (「人工」).

Every function follows the contract in ``state.case_store``'s docstring: one short transaction
over the application's ``AsyncEngine``, ``StorageUnavailable`` when the database cannot be
reached, ``now`` passed in.
"""

from __future__ import annotations

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
