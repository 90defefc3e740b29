"""The platform's Ed25519 signing key: it signs recording manifests (and, later, court exports).

Courts verify with the public half, published as PEM (``jiefen room signing-key``). The key id
is the first 16 hex digits of SHA-256 over the raw 32-byte public key; a manifest names the id
of the key that signed it, so a rotated key can still be told apart from the current one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from config.settings import Settings
from jiefen.errors import ConfigurationError
from state.key_files import create_key_file_once


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_from_pem(pem: bytes) -> Ed25519PublicKey:
    """Read an Ed25519 public key; ``ValueError`` for anything else."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SigningKey:
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """A detached 64-byte Ed25519 signature of ``data``."""
        return self.private_key.sign(data)

    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")


def signing_key_path(settings: Settings) -> Path:
    """``settings.signing_key_file``, else ``data_dir/keys/signing-ed25519.pem``."""
    return settings.signing_key_file or settings.data_dir / "keys" / "signing-ed25519.pem"


def load_or_create_signing_key(settings: Settings) -> SigningKey:
    """The key at :func:`signing_key_path`; the default file is created on first use (a
    configured ``signing_key_file`` must exist)."""
    path = signing_key_path(settings)
    if settings.signing_key_file is None and not path.exists():
        new_key = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        create_key_file_once(path, new_key)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigurationError(f"cannot read the signing key {path}: {error}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"the signing key {path} is not an Ed25519 key")
    return SigningKey(key)
