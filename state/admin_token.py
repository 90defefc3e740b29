"""The rooms API token of an embedded installation, in a key file beside the data key.

On embedded defaults the outbox lives in ``jiefen serve``'s in-process Redis stand-in, so a
command run from another shell (``jiefen room open``) cannot queue the applicant's invitation
itself: it asks the running server to open the room through the rooms API (``POST
/api/rooms``), which needs a bearer token. When ``JIEFEN_ADMIN_API_TOKEN`` is unset, the
embedded ``serve`` makes one, once, in ``data_dir/keys/admin-api.token`` (mode 0600, like the
data key: whoever can read it can read the data key too), and the commands of the same
installation read it from there. A deployment configures ``JIEFEN_ADMIN_API_TOKEN`` instead.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from config.settings import Settings
from jiefen.errors import ConfigurationError
from state.key_files import create_key_file_once, read_private_key_file

_WHAT = "the admin API token file"


def admin_token_path(settings: Settings) -> Path:
    return settings.data_dir / "keys" / "admin-api.token"


def load_or_create_admin_token(settings: Settings) -> str:
    """The installation's token file's token, made first if there is none (embedded only)."""
    path = admin_token_path(settings)
    if not path.exists():
        create_key_file_once(path, secrets.token_urlsafe(32).encode("ascii") + b"\n")
    token = read_admin_token(settings)
    assert token is not None  # made above, or by a process that got there first
    return token


def read_admin_token(settings: Settings) -> str | None:
    """The token in the installation's token file, or ``None`` when no server has made one.

    Raises ``ConfigurationError`` when the file is open to other users or unreadable."""
    path = admin_token_path(settings)
    if not path.exists():
        return None
    raw = read_private_key_file(path, _WHAT)
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError as error:
        raise ConfigurationError(f"cannot read {_WHAT} {path}: {error}") from error
    if not token:
        raise ConfigurationError(f"{_WHAT} {path} is empty: delete it to have a new one made")
    return token
