"""The organisations table: a stored copy of the routing config's organisations.

Every function follows the contract in ``state.case_store``'s docstring: one short transaction
over the application's ``AsyncEngine``, ``StorageUnavailable`` when the database cannot be
reached.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from cases.routing import Organisation, RoutingTable
from state._sql import table_of, upsert
from state.db import storage_errors
from state.models import Organisation as OrganisationRow

_ORGS = table_of(OrganisationRow)


def organisation_row(organisation: Organisation, now: datetime) -> dict[str, Any]:
    """The values of ``organisation``'s active row (also inserted by ``case_store.create_case``)."""
    return {
        "code": organisation.code,
        "name": organisation.name,
        "kind": organisation.kind.value,
        "phone": organisation.phone,
        "districts": list(organisation.districts),
        "active": True,
        "updated_at": now,
    }


async def sync_organisations(
    db: AsyncEngine, table: RoutingTable, *, now: datetime | None = None
) -> None:
    """Make the organisations table match ``table``: upsert each, mark the rest inactive.

    Run at start-up, after loading the routing config; ``now`` defaults to the current time.
    """
    now = now or datetime.now(UTC)
    rows = [organisation_row(organisation, now) for organisation in table.organisations]
    with storage_errors("sync organisations"):
        async with db.begin() as connection:
            statement = upsert(connection, _ORGS)
            updated = {name: statement.excluded[name] for name in rows[0] if name != "code"}
            await connection.execute(
                statement.on_conflict_do_update(index_elements=[_ORGS.c.code], set_=updated), rows
            )
            await connection.execute(
                sa.update(_ORGS)
                .where(_ORGS.c.code.not_in([row["code"] for row in rows]), _ORGS.c.active.is_(True))
                .values(active=False, updated_at=now)
            )
