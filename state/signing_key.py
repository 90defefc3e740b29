"""The platform's Ed25519 signing key: it signs recording manifests (and, later, court exports).

Courts verify with the public half, published as PEM (``jiefen room signing-key``). The key id
is the first 16 hex digits of SHA-256 over the raw 32-byte public key; a manifest names the id
of the key that signed it, so a rotated key can still be told apart from the current one.

Where the key comes from: ``JIEFEN_SIGNING_KEY_FILE`` when it is set. Otherwise, and only in
the embedded mode (``Settings.embedded``: one ``jiefen serve`` doing everything), the key is
``data_dir/keys/signing-ed25519.pem``, made on first use. Any other process refuses to start
without the setting rather than make a key of its own: two worker hosts would otherwise sign
with two keys, one of which the courts were never given. Commands run from a shell pass
``embedded=`` themselves (``Settings.command_embedded``). Either way the file must be mode 0600
or stricter (``state.key_files``).
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
from state.key_files import create_key_file_once, key_not_configured, read_private_key_file


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


DEFAULT_KEY_NAME = "signing-ed25519.pem"


def signing_key_path(settings: Settings, *, embedded: bool | None = None) -> Path:
    """``settings.signing_key_file``; else, when ``embedded`` (default ``settings.embedded``),
    ``data_dir/keys/signing-ed25519.pem``; else ``ConfigurationError`` naming the setting."""
    if settings.signing_key_file is not None:
        return settings.signing_key_file
    default = settings.data_dir / "keys" / DEFAULT_KEY_NAME
    if settings.embedded if embedded is None else embedded:
        return default
    raise key_not_configured(
        settings,
        setting="JIEFEN_SIGNING_KEY_FILE",
        key="signing key",
        deployment="whose recordings must all be signed with the platform's one key, whose "
        "public half the courts hold",
        set_to="JIEFEN_SIGNING_KEY_FILE to that Ed25519 PEM file (mode 0600)",
        made_here=default,
        if_made_here="point JIEFEN_SIGNING_KEY_FILE at it only if that is the key the courts "
        "were given",
    )


def load_signing_key(path: Path) -> SigningKey:
    """The Ed25519 private key in the PEM file ``path`` (mode 0600 or stricter);
    ``ConfigurationError`` when it is missing, open to others or not an Ed25519 key."""
    data = read_private_key_file(path, "the signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise ConfigurationError(f"cannot read the signing key {path}: {error}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"the signing key {path} is not an Ed25519 key")
    return SigningKey(key)


def load_or_create_signing_key(settings: Settings, *, embedded: bool | None = None) -> SigningKey:
    """The key at :func:`signing_key_path`. In the embedded mode (``embedded``, default
    ``settings.embedded``) the default file is created on first use, once (processes starting
    together share whichever was made first); a configured ``signing_key_file`` must exist,
    and outside the embedded mode it must be configured (``ConfigurationError``)."""
    path = signing_key_path(settings, embedded=embedded)
    if settings.signing_key_file is None and not path.exists():
        new_key = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        create_key_file_once(path, new_key)
    return load_signing_key(path)
