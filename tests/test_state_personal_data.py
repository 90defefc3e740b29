from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from cases.id_number import is_valid_id_number, mask_id_number, normalise_id_number
from config.settings import Settings
from jiefen.errors import ConfigurationError
from state.personal_data import (
    PersonalDataProtector,
    load_or_create_data_key,
    redact_id_numbers,
)

KEY = bytes(range(32))
ID_NUMBER = "11010519491231002X"  # the GB 11643 example, valid checksum


def test_round_trip_with_fresh_nonces() -> None:
    protector = PersonalDataProtector(KEY)
    first = protector.encrypt(ID_NUMBER, purpose="id_number")
    second = protector.encrypt(ID_NUMBER, purpose="id_number")
    assert first != second
    assert first.startswith("v1.") and ID_NUMBER not in first
    assert protector.decrypt(first, purpose="id_number") == ID_NUMBER
    assert protector.decrypt(second) == ID_NUMBER


def test_purpose_is_bound_and_tampering_is_detected() -> None:
    protector = PersonalDataProtector(KEY)
    token = protector.encrypt("秘密", purpose="conversation")
    assert protector.decrypt(token, purpose="conversation") == "秘密"
    with pytest.raises(ValueError, match="authentication"):
        protector.decrypt(token, purpose="id_number")
    body = bytearray(base64.urlsafe_b64decode(token[3:] + "=" * (-len(token[3:]) % 4)))
    body[-1] ^= 1
    tampered = "v1." + base64.urlsafe_b64encode(bytes(body)).decode().rstrip("=")
    with pytest.raises(ValueError, match="authentication"):
        protector.decrypt(tampered, purpose="conversation")
    for garbage in ("", "v2.abc", "v1.", "v1.@@@", "v1.AAAA"):
        with pytest.raises(ValueError):
            protector.decrypt(garbage)


def test_another_key_is_named_as_such() -> None:
    token = PersonalDataProtector(KEY).encrypt(ID_NUMBER)
    with pytest.raises(ConfigurationError, match="another data key"):
        PersonalDataProtector(bytes(32)).decrypt(token)


def test_blind_index_is_stable_keyed_and_separated_by_purpose() -> None:
    protector = PersonalDataProtector(KEY)
    index = protector.blind_index(ID_NUMBER)
    assert index == PersonalDataProtector(KEY).blind_index(ID_NUMBER)
    assert len(index) == 64 and ID_NUMBER not in index
    assert index != PersonalDataProtector(bytes(32)).blind_index(ID_NUMBER)
    assert index != protector.blind_index(ID_NUMBER, purpose="phone")


def test_key_must_be_32_bytes() -> None:
    with pytest.raises(ConfigurationError, match="32 bytes"):
        PersonalDataProtector(b"short")


def test_masking_normalising_and_checksum() -> None:
    assert mask_id_number(ID_NUMBER) == "1101**********002X"
    assert normalise_id_number("110105 19491231 002x") == ID_NUMBER
    assert is_valid_id_number(ID_NUMBER) and is_valid_id_number(ID_NUMBER.lower())
    assert not is_valid_id_number("110105194912310021")


def test_redaction_masks_only_real_id_numbers() -> None:
    text = f"我的身份证号是{ID_NUMBER.lower()}，订单号 123456789012345678 和 {ID_NUMBER}1"
    redacted = redact_id_numbers(text)
    assert "1101**********002X" in redacted
    assert ID_NUMBER.lower() not in redacted
    assert "123456789012345678" in redacted  # wrong checksum: not an ID number
    assert f"{ID_NUMBER}1" in redacted  # glued to a digit: part of something longer


def test_redaction_masks_an_id_number_typed_in_groups() -> None:
    for typed in ("110105 19491231 002x", "110105-19491231-002X", "1101 0519 4912 3100 2X"):
        redacted = redact_id_numbers(f"身份证 {typed}，电话 138 0013 8000")
        assert redacted == "身份证 1101**********002X，电话 138 0013 8000", typed


def test_key_from_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, data_key=base64.b64encode(KEY).decode())
    assert load_or_create_data_key(settings) == KEY
    assert not (tmp_path / "keys").exists()
    with pytest.raises(ConfigurationError, match="32 bytes"):
        load_or_create_data_key(Settings(data_dir=tmp_path, data_key="c2hvcnQ="))
    with pytest.raises(ConfigurationError, match="base64"):
        load_or_create_data_key(Settings(data_dir=tmp_path, data_key="not base64!"))


def test_key_file_created_once_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    key = load_or_create_data_key(settings)
    path = tmp_path / "var" / "keys" / "data.key"
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_data_key(settings) == key
    assert [p.name for p in path.parent.iterdir()] == ["data.key"]
    path.write_text("garbage", encoding="ascii")
    with pytest.raises(ConfigurationError, match=r"data\.key"):
        load_or_create_data_key(settings)


@pytest.mark.parametrize("role", ["web", "media", "worker"])
def test_outside_the_embedded_mode_the_data_key_must_be_configured(
    tmp_path: Path, role: str
) -> None:
    settings = Settings(data_dir=tmp_path, role=role)
    with pytest.raises(ConfigurationError, match="JIEFEN_DATA_KEY is not set"):
        load_or_create_data_key(settings)
    assert not (tmp_path / "keys").exists()  # no key of its own, for this host only
    configured = Settings(data_dir=tmp_path, role=role, data_key=base64.b64encode(KEY).decode())
    assert load_or_create_data_key(configured) == KEY


def test_a_data_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    key = load_or_create_data_key(settings)
    path = tmp_path / "keys" / "data.key"
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="mode 0600 or stricter"):
        load_or_create_data_key(settings)
    path.chmod(0o400)
    assert load_or_create_data_key(settings) == key
