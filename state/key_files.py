"""Key files: created once, privately, by whichever process gets there first; read only when
nobody else can read them."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from config.settings import Settings
from jiefen.errors import ConfigurationError


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


def read_private_key_file(path: Path, what: str) -> bytes:
    """The bytes of the key file ``path`` (``what`` names it in errors, e.g. "the signing key").

    Raises ``ConfigurationError`` when it cannot be read, or when its mode lets the group or
    others read or write it: a private key must be mode 0600 or stricter (a symbolic link is
    followed: the mode of the file it leads to counts). Refused rather than fixed: a key that
    others could read may have been copied, and whoever runs Jiefen should know.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as error:
        raise ConfigurationError(f"cannot read {what} {path}: {error.strerror}") from error
    if os.name == "posix" and mode & 0o077:
        raise ConfigurationError(
            f"{what} {path} is open to other users (mode {mode:04o}): a private key file must "
            f"be mode 0600 or stricter (chmod 600 {path}; replace the key if others may have "
            "copied it)"
        )
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read {what} {path}: {error.strerror}") from error


def key_not_configured(
    settings: Settings,
    *,
    setting: str,
    key: str,
    deployment: str,
    set_to: str,
    made_here: Path,
    if_made_here: str,
) -> ConfigurationError:
    """The refusal for a process outside the embedded mode whose ``setting`` (``key``) is unset.

    Only the embedded ``jiefen serve`` makes its own keys: the processes of a deployment run on
    several hosts and must share each key (``deployment`` says why, ``set_to`` what to set).
    A key file an embedded run left in ``made_here`` is pointed out, never used.
    """
    hint = (
        f" ({made_here} exists here, made by an earlier version or by an embedded `jiefen serve`:"
        f" {if_made_here})"
        if made_here.exists()
        else ""
    )
    shared = ", shared Redis" if settings.redis_url else ""
    return ConfigurationError(
        f"{setting} is not set. Only the embedded `jiefen serve` makes its own {key}; this "
        f"process (role {settings.role}{shared}) is part of a deployment {deployment}: set "
        f"{set_to}, the same on every host{hint}"
    )
