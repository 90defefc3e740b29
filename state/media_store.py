"""Records of media blobs (photos, voice) fetched from WeChat: pending, then stored or failed.

Every function follows the contract in ``state.case_store``'s docstring: one short transaction
over the application's ``AsyncEngine``, ``StorageUnavailable`` when the database cannot be
reached, plain dataclasses in and out, ``now`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from state._sql import table_of, upsert
from state.db import storage_errors
from state.models import MediaBlob


class MediaStatus:
    """Values of ``MediaBlob.status``."""

    PENDING = "pending"
    STORED = "stored"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class MediaBlobRecord:
    media_id: str
    openid: str
    kind: str
    status: str
    path: str | None
    sha256: str | None
    size: int | None
    content_type: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime


_MEDIA = table_of(MediaBlob)


def pending_media_row(media_id: str, openid: str, kind: str, now: datetime) -> dict[str, Any]:
    """The values of a new pending media row (also inserted by ``case_store.create_case``)."""
    return {
        "media_id": media_id,
        "openid": openid,
        "kind": kind,
        "status": MediaStatus.PENDING,
        "created_at": now,
        "updated_at": now,
    }


async def media_blob_pending(
    db: AsyncEngine, media_id: str, openid: str, kind: str, now: datetime
) -> None:
    """Note that ``media_id`` is to be fetched. Idempotent: an existing row is left as it is."""
    with storage_errors("record the pending media"):
        async with db.begin() as connection:
            await connection.execute(
                upsert(connection, _MEDIA)
                .values(**pending_media_row(media_id, openid, kind, now))
                .on_conflict_do_nothing(index_elements=[_MEDIA.c.media_id])
            )


async def media_blob_stored(
    db: AsyncEngine,
    media_id: str,
    path: str,
    sha256: str,
    size: int,
    content_type: str | None,
    now: datetime,
) -> None:
    """Mark ``media_id`` stored at ``path`` (a key of the evidence store).

    Idempotent; also recovers a blob marked failed earlier. Raises LookupError if
    ``media_blob_pending`` was never called for it.
    """
    await _update_media(
        db, media_id, status=MediaStatus.STORED, path=path, sha256=sha256, size=size,
        content_type=content_type, error=None, updated_at=now,
    )  # fmt: skip


async def media_blob_failed(db: AsyncEngine, media_id: str, error: str, now: datetime) -> None:
    """Mark ``media_id`` as failed for good with ``error``; a blob already stored stays stored."""
    await _update_media(
        db, media_id, only_unstored=True, status=MediaStatus.FAILED, error=error, updated_at=now
    )


async def _update_media(
    db: AsyncEngine, media_id: str, *, only_unstored: bool = False, **values: Any
) -> None:
    with storage_errors("update the media record"):
        async with db.begin() as connection:
            exists = (
                await connection.execute(
                    sa.select(_MEDIA.c.status).where(_MEDIA.c.media_id == media_id)
                )
            ).one_or_none()
            if exists is None:
                raise LookupError(f"no media record for {media_id!r}")
            query = sa.update(_MEDIA).where(_MEDIA.c.media_id == media_id)
            if only_unstored:
                query = query.where(_MEDIA.c.status != MediaStatus.STORED)
            await connection.execute(query.values(**values))


async def get_media_blob(db: AsyncEngine, media_id: str) -> MediaBlobRecord | None:
    """The media record for ``media_id``, or None."""
    with storage_errors("read the media record"):
        async with db.begin() as connection:
            row = (
                (await connection.execute(sa.select(_MEDIA).where(_MEDIA.c.media_id == media_id)))
                .mappings()
                .one_or_none()
            )
    if row is None:
        return None
    return MediaBlobRecord(**{k: v for k, v in row.items() if k != "id"})
