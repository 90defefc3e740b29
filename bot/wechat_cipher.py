"""WeChat's message crypto, written from the published protocol (not with wechatpy).

The simulator uses it to sign and encrypt pushes and to check replies, so that our wechatpy-based
webhook is checked against an independent implementation. Pure: no I/O.

* ``signature = sha1(''.join(sorted([token, timestamp, nonce])))``; in the AES modes also
  ``msg_signature = sha1(''.join(sorted([token, timestamp, nonce, Encrypt])))``.
* key = ``b64decode(EncodingAESKey + "=")``; AES-256-CBC, iv = ``key[:16]``; plaintext =
  16 random bytes + 4-byte big-endian length + XML + appid, PKCS#7-padded to **32** bytes.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_BLOCK = 32  # WeChat pads to 32-byte blocks, although AES's block is 16 bytes


class CryptoMode(enum.StrEnum):
    """The three message-encryption modes an Official Account can choose."""

    PLAIN = "plain"
    COMPAT = "compat"
    SAFE = "safe"


def sign(*parts: str) -> str:
    """WeChat's signature: SHA-1 of the parts sorted as strings and concatenated, in hex."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


class MessageCipher:
    """WeChat's AES envelope for one EncodingAESKey. Pure: no I/O."""

    def __init__(self, encoding_aes_key: str) -> None:
        if len(encoding_aes_key) != 43:
            raise ValueError("an EncodingAESKey has 43 characters")
        self._key = base64.b64decode(encoding_aes_key + "=")

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))

    def encrypt(self, xml: bytes, appid: str, *, prefix: bytes | None = None) -> str:
        """Base64 ciphertext of ``xml`` addressed to ``appid``."""
        plain = (prefix or os.urandom(16)) + struct.pack(">I", len(xml)) + xml + appid.encode()
        pad = _BLOCK - len(plain) % _BLOCK
        plain += bytes([pad]) * pad
        encryptor = self._cipher().encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()

    def decrypt(self, ciphertext: str) -> tuple[bytes, str]:
        """``(xml, appid)`` from a base64 ciphertext; ``ValueError`` if it is not well formed."""
        try:
            raw = base64.b64decode(ciphertext, validate=True)
        except ValueError as error:
            raise ValueError("ciphertext is not base64") from error
        if len(raw) < _BLOCK or len(raw) % 16:
            raise ValueError("ciphertext length is not a whole number of AES blocks")
        decryptor = self._cipher().decryptor()
        plain = decryptor.update(raw) + decryptor.finalize()
        pad = plain[-1]
        if not 1 <= pad <= _BLOCK or plain[-pad:] != bytes([pad]) * pad:
            raise ValueError("bad padding")
        content = plain[16:-pad]
        if len(content) < 4:
            raise ValueError("plaintext too short")
        (length,) = struct.unpack(">I", content[:4])
        if length > len(content) - 4:
            raise ValueError("XML length exceeds the plaintext")
        try:
            appid = content[4 + length :].decode()
        except UnicodeDecodeError as error:
            raise ValueError("appid is not UTF-8") from error
        return content[4 : 4 + length], appid
