"""Key files created once, privately, by whichever process gets there first."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def create_key_file_once(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` (mode 0600, directory 0700) unless the file exists.

    The content goes to a private temporary file that is then hard-linked into place: the link
    is atomic and refuses to replace a file, so two processes starting together end up sharing
    whichever key was linked first (the caller reads the file back rather than trusting its
    own ``content``).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
