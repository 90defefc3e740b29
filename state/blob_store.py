"""Content-addressed file storage for evidence (local disk; an S3-compatible store later).

Files are named by their SHA-256, so storing the same bytes twice is harmless and a stored file
can be checked against its name. Writes go to a temporary file first and are renamed into place,
so a crash never leaves a half-written file under a real name.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class StoredBlob:
    key: str
    sha256: str
    size: int


class LocalBlobStore:
    """Stores blobs under ``root/<first two hex digits>/<sha256><suffix>``."""

    def __init__(self, root: Path) -> None:
        self._root = root

    async def put(self, data: bytes, *, suffix: str = "") -> StoredBlob:
        digest = hashlib.sha256(data).hexdigest()
        key = f"{digest[:2]}/{digest}{_clean_suffix(suffix)}"
        await asyncio.to_thread(self._write, key, data)
        return StoredBlob(key=key, sha256=digest, size=len(data))

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.path(key).read_bytes)

    def path(self, key: str) -> Path:
        path = (self._root / key).resolve()
        if not path.is_relative_to(self._root.resolve()):
            raise ValueError(f"blob key escapes the store: {key!r}")
        return path

    def _write(self, key: str, data: bytes) -> None:
        path = self.path(key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


def _clean_suffix(suffix: str) -> str:
    suffix = suffix.lower()
    if suffix and (not suffix.startswith(".") or not suffix[1:].isalnum() or len(suffix) > 8):
        return ""
    return suffix
