"""How the commands of an embedded installation find and authenticate to its running `serve`:
the server record (``var/run/serve.json``) and the rooms API token file (``var/keys``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from config.settings import Settings
from jiefen.errors import ConfigurationError
from jiefen.local_server import local_server, read_record, record_path, remove_record, write_record
from state.admin_token import admin_token_path, load_or_create_admin_token, read_admin_token


def test_the_token_file_is_made_once_privately_and_read_back(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert read_admin_token(settings) is None  # no server has made one yet
    token = load_or_create_admin_token(settings)
    assert len(token) >= 40
    path = admin_token_path(settings)
    assert path.stat().st_mode & 0o077 == 0
    assert load_or_create_admin_token(settings) == token == read_admin_token(settings)
    path.chmod(0o644)  # open to other users: refused, not used
    with pytest.raises(ConfigurationError, match="open to other users"):
        read_admin_token(settings)
    path.chmod(0o600)
    path.write_text("\n")
    with pytest.raises(ConfigurationError, match="empty"):
        read_admin_token(settings)


def test_the_record_says_how_to_reach_the_server_from_this_machine(tmp_path: Path) -> None:
    assert local_server(Settings(data_dir=tmp_path, port=9000)).url == "http://127.0.0.1:9000"
    assert local_server(Settings(data_dir=tmp_path, host="0.0.0.0")).url == "http://127.0.0.1:8080"
    assert local_server(Settings(data_dir=tmp_path, host="::")).url == "http://[::1]:8080"
    lan = local_server(Settings(data_dir=tmp_path, host="192.168.1.20", tls_self_signed=True))
    assert lan.url == "https://192.168.1.20:8080"
    assert lan.cafile == (tmp_path / "tls" / "self-signed.pem").resolve()


def test_the_record_is_written_read_and_withdrawn_by_its_own_process_only(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, port=9001)
    assert read_record(tmp_path) is None
    written = write_record(settings)
    assert read_record(tmp_path) == written
    assert written.pid == os.getpid() and written.url == "http://127.0.0.1:9001"
    # Another `serve` of the same installation wrote it since: this one leaves it alone.
    path = record_path(tmp_path)
    path.write_text(json.dumps({"url": "http://127.0.0.1:9002", "pid": os.getpid() + 1}))
    remove_record(settings)
    assert path.exists()
    write_record(settings)
    remove_record(settings)
    assert not path.exists()
    path.write_text("{not json")
    assert read_record(tmp_path) is None  # unreadable: as if there were none
