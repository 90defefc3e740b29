"""Where the platform's signing key comes from: made once in the embedded mode, configured
everywhere else; and a key file others can read is refused."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from config.settings import Settings
from jiefen.errors import ConfigurationError
from state.key_files import read_private_key_file
from state.signing_key import load_or_create_signing_key, signing_key_path
from tests.conftest import REDIS_URL
from tests.harness import clean_environment, platform_signing_key_file


def test_the_embedded_mode_makes_its_key_once_privately(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.embedded
    key = load_or_create_signing_key(settings)
    path = tmp_path / "keys" / "signing-ed25519.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert load_or_create_signing_key(settings).key_id == key.key_id


@pytest.mark.parametrize("role", ["worker", "web", "media"])
def test_outside_the_embedded_mode_no_key_is_made(tmp_path: Path, role: str) -> None:
    settings = Settings(data_dir=tmp_path, role=role)
    assert not settings.embedded
    with pytest.raises(ConfigurationError, match="JIEFEN_SIGNING_KEY_FILE is not set") as error:
        load_or_create_signing_key(settings)
    assert f"role {role}" in str(error.value)
    assert not (tmp_path / "keys").exists()
    # A key an earlier version made on this host is not taken silently either: it is named.
    load_or_create_signing_key(Settings(data_dir=tmp_path))
    with pytest.raises(ConfigurationError, match=r"signing-ed25519\.pem exists here"):
        load_or_create_signing_key(settings)

    configured = platform_signing_key_file(tmp_path)
    with_file = Settings(data_dir=tmp_path, role=role, signing_key_file=configured)
    assert signing_key_path(with_file) == configured
    assert (
        load_or_create_signing_key(with_file).key_id
        != load_or_create_signing_key(Settings(data_dir=tmp_path)).key_id
    )


def test_a_configured_key_file_must_exist(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, signing_key_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match="cannot read the signing key"):
        load_or_create_signing_key(settings)
    assert not (tmp_path / "missing.pem").exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = platform_signing_key_file(tmp_path)
    settings = Settings(data_dir=tmp_path, role="worker", signing_key_file=path)
    load_or_create_signing_key(settings)
    os.chmod(path, mode)
    with pytest.raises(ConfigurationError, match="mode 0600 or stricter") as error:
        load_or_create_signing_key(settings)
    assert f"mode {mode:04o}" in str(error.value) and str(path) in str(error.value)
    # The embedded default file is held to the same rule.
    embedded = Settings(data_dir=tmp_path / "embedded")
    load_or_create_signing_key(embedded)
    os.chmod(tmp_path / "embedded" / "keys" / "signing-ed25519.pem", mode)
    with pytest.raises(ConfigurationError, match="mode 0600 or stricter"):
        load_or_create_signing_key(embedded)


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    path = platform_signing_key_file(tmp_path)
    os.chmod(path, 0o400)
    assert read_private_key_file(path, "the key").startswith(b"-----BEGIN PRIVATE KEY-----")
    settings = Settings(data_dir=tmp_path, role="worker", signing_key_file=path)
    assert load_or_create_signing_key(settings).key_id


def _jiefen(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = clean_environment()
    return subprocess.run(
        [sys.executable, "-m", "jiefen.cli", *args],
        capture_output=True,
        text=True,
        env=base | env,
        timeout=60,
        check=False,
    )


async def test_a_worker_without_a_configured_key_refuses_to_start(
    redis_client: aioredis.Redis, redis_prefix: str, tmp_path: Path
) -> None:
    env = {
        "JIEFEN_DATA_DIR": str(tmp_path),
        "JIEFEN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'jiefen.db'}",
        "JIEFEN_REDIS_URL": REDIS_URL,
        "JIEFEN_REDIS_PREFIX": redis_prefix,
        "JIEFEN_DATA_KEY": base64.b64encode(bytes(32)).decode(),
    }
    worker = _jiefen(env, "worker")
    assert worker.returncode == 2
    assert worker.stderr.startswith("jiefen worker: JIEFEN_SIGNING_KEY_FILE is not set")
    assert "Traceback" not in worker.stderr
    assert not (tmp_path / "keys" / "signing-ed25519.pem").exists()


def test_shell_commands_pointed_at_a_deployment_use_its_configured_key(tmp_path: Path) -> None:
    """A shell has role ``all``; with a shared Redis it acts on a deployment all the same."""
    env = {"JIEFEN_DATA_DIR": str(tmp_path), "JIEFEN_REDIS_URL": REDIS_URL}
    for command in (["room", "signing-key"], ["room", "finalise", "rm0123456789abcdef"]):
        refused = _jiefen(env, *command)
        assert refused.returncode == 2, refused
        assert "JIEFEN_SIGNING_KEY_FILE is not set" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert not (tmp_path / "keys").exists()

    configured = platform_signing_key_file(tmp_path)
    key = load_or_create_signing_key(
        Settings(data_dir=tmp_path, role="worker", signing_key_file=configured)
    )
    shown = _jiefen(env | {"JIEFEN_SIGNING_KEY_FILE": str(configured)}, "room", "signing-key")
    assert shown.returncode == 0 and shown.stdout == key.public_pem()
    os.chmod(configured, 0o644)
    refused = _jiefen(env | {"JIEFEN_SIGNING_KEY_FILE": str(configured)}, "room", "signing-key")
    assert refused.returncode == 2 and "mode 0600 or stricter" in refused.stderr
