"""Personal data at rest: resident ID numbers encrypted, masked for display, indexed blindly.

个人信息保护法 Arts.28, 51: an ID number is sensitive personal information; it is stored
encrypted, shown only masked (``5301**********123X``), and found again without decrypting
through a keyed blind index.

- ``encrypt`` → a token ``v1.<base64url(key id[4] | nonce[12] | ciphertext + tag)>``: AES-256-GCM
  with a random 96-bit nonce; the ``purpose`` string is the associated data, so a token made
  for one purpose (``"id_number"``) does not decrypt as another. The key id lets a later key
  rotation tell which key wrote a token.
- ``blind_index`` → hex HMAC-SHA256 under a key derived from the data key (never the
  encryption key itself), separated by purpose.
- Keys are derived from the one 32-byte data key with HKDF-SHA256, one per use.
- The data key comes from ``Settings.data_key`` (base64) or a key file under
  ``data_dir/keys/data.key`` created once with mode 0600 (``load_or_create_data_key``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cases.id_number import is_valid_id_number, mask_id_number, normalise_id_number
from config.settings import Settings
from jiefen.errors import ConfigurationError
from state.key_files import create_key_file_once, key_not_configured, read_private_key_file

KEY_BYTES = 32
_NONCE_BYTES = 12
_KEY_ID_BYTES = 4
_VERSION = "v1"
ID_NUMBER_PURPOSE = "id_number"

# An 18-character resident ID not glued to other digits, typed whole or in groups split by one
# space or dash (「110105 19491231 002X」); the checksum decides whether it is one.
_ID_LIKE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){16}[ -]?[0-9Xx](?![0-9A-Za-z])")


def _derive(key: bytes, label: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label.encode())
    return hkdf.derive(key)


class PersonalDataProtector:
    """Encrypts, decrypts and blind-indexes personal data under one 32-byte data key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ConfigurationError(f"the data key must be {KEY_BYTES} bytes, got {len(key)}")
        encryption_key = _derive(key, "jiefen/v1/aes-256-gcm")
        self._aead = AESGCM(encryption_key)
        self._index_key = _derive(key, "jiefen/v1/blind-index")
        self._key_id = _derive(key, "jiefen/v1/key-id")[:_KEY_ID_BYTES]

    def encrypt(self, plaintext: str, *, purpose: str = ID_NUMBER_PURPOSE) -> str:
        """A fresh token for ``plaintext``; two calls never give the same token."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())
        body = base64.urlsafe_b64encode(self._key_id + nonce + sealed).decode().rstrip("=")
        return f"{_VERSION}.{body}"

    def decrypt(self, token: str, *, purpose: str = ID_NUMBER_PURPOSE) -> str:
        """The plaintext of ``token``.

        Raises ConfigurationError when the token was written under another data key (the
        configured key is wrong), ValueError when it is malformed, tampered with, or was made
        for another purpose.
        """
        version, _, body = token.partition(".")
        if version != _VERSION or not body:
            raise ValueError("not a personal-data token of a known version")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as error:
            raise ValueError("personal-data token is not valid base64") from error
        key_id, rest = raw[:_KEY_ID_BYTES], raw[_KEY_ID_BYTES:]
        if len(rest) <= _NONCE_BYTES:
            raise ValueError("personal-data token is truncated")
        if not hmac.compare_digest(key_id, self._key_id):
            raise ConfigurationError("personal-data token was written under another data key")
        try:
            plain = self._aead.decrypt(rest[:_NONCE_BYTES], rest[_NONCE_BYTES:], purpose.encode())
        except InvalidTag as error:
            raise ValueError("personal-data token failed authentication") from error
        return plain.decode()

    def blind_index(self, value: str, *, purpose: str = ID_NUMBER_PURPOSE) -> str:
        """A keyed digest of ``value`` (64 hex characters) to find it without decrypting.

        Equal values give equal indexes; callers normalise first (``normalise_id_number``).
        """
        message = purpose.encode() + b"\x00" + value.encode()
        return hmac.new(self._index_key, message, hashlib.sha256).hexdigest()


def redact_id_numbers(text: str) -> str:
    """``text`` with every checksum-valid resident ID in it replaced by its masked form.

    Used on free text kept with a case (the intake conversation, facts, claim), where a
    resident may type an ID number that must not be stored in the clear.
    """

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        return mask_id_number(found) if is_valid_id_number(normalise_id_number(found)) else found

    return _ID_LIKE.sub(replace, text)


def load_or_create_data_key(settings: Settings, *, embedded: bool | None = None) -> bytes:
    """The 32-byte data key: ``settings.data_key`` (base64, ``JIEFEN_DATA_KEY``); else, in the
    embedded mode (``embedded``, default ``settings.embedded``), the key file, made once.

    The key file is ``settings.data_dir/keys/data.key`` (base64 text, mode 0600 or stricter).
    A new key is written to a private temporary file and linked into place, so two processes
    starting together end up with the same key. Outside the embedded mode the key must be
    configured (``ConfigurationError``): the processes of a deployment run on several hosts and
    must all seal and open with one key; a key made per host would leave each unable to read
    what the others stored. Losing the key makes every stored ID number unreadable: back it up.
    """
    if settings.data_key:
        return _decode_key(settings.data_key, "JIEFEN_DATA_KEY")
    path = settings.data_dir / "keys" / "data.key"
    if not (settings.embedded if embedded is None else embedded):
        raise key_not_configured(
            settings,
            setting="JIEFEN_DATA_KEY",
            key="data key",
            deployment="whose processes must all use one key",
            set_to="JIEFEN_DATA_KEY (32 bytes, base64) to one value",
            made_here=path,
            if_made_here="its content is the key to use if this deployment's data was sealed "
            "with it",
        )
    if not path.exists():
        _create_key_file(path)
    raw = read_private_key_file(path, "the data key file")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as error:
        raise ConfigurationError(f"cannot read the data key file {path}: {error}") from error
    return _decode_key(text, str(path))


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ConfigurationError(f"{where} is not valid base64") from error
    if len(key) != KEY_BYTES:
        raise ConfigurationError(f"{where} must hold {KEY_BYTES} bytes, it holds {len(key)}")
    return key


def _create_key_file(path: Path) -> None:
    key = base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
    create_key_file_once(path, key)
