"""The server's Ed25519 log-signing key.

``DATA_DIR/keys/log-signing.ed25519`` holds the private key (PKCS#8 PEM,
mode 0600, created on first use); ``log-signing.ed25519.pub`` next to it
holds the public key (SubjectPublicKeyInfo PEM) for verifiers. The key id
in checkpoints is SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from mediation.durable import write_new
from mediation.log.errors import LogError
from mediation.pki import write_private_key

KEY_DIR = "keys"
KEY_NAME = "log-signing.ed25519"
PUBLIC_SUFFIX = ".pub"


def key_path(data_dir: Path) -> Path:
    return Path(data_dir) / KEY_DIR / KEY_NAME


def public_key_path(data_dir: Path) -> Path:
    return Path(data_dir) / KEY_DIR / (KEY_NAME + PUBLIC_SUFFIX)


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> bytes:
    """SHA-256 of the raw public key: how checkpoints name their key."""
    return hashlib.sha256(raw_public(key)).digest()


class LogSigner:
    """Signs checkpoints and retention entries with the server's key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


def verify_signature(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is the key's signature of ``message``."""
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def load_or_create_signer(data_dir: Path) -> LogSigner:
    """The server's signing key, created (with its ``.pub``) if there is none.

    Raises:
        LogError: the key file exists but is not an Ed25519 private key, or is
            readable by others.
    """
    path = key_path(data_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        # Created, never replaced: a key another process made first is kept.
        with contextlib.suppress(FileExistsError):
            write_private_key(path, Ed25519PrivateKey.generate())
    if path.stat().st_mode & 0o077:
        raise LogError(f"{path}: signing key is readable by others (chmod 600 it)")
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise LogError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise LogError(f"{path}: not an Ed25519 key")
    signer = LogSigner(private)
    pub = public_key_path(data_dir)
    pub_pem = signer.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with contextlib.suppress(OSError):
        if not pub.exists() or pub.read_bytes() != pub_pem:
            pub.unlink(missing_ok=True)
            write_new(pub, pub_pem, 0o644)
    return signer


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A verifier's public key: PEM, or the raw 32 bytes.

    Raises:
        LogError: unreadable, or not an Ed25519 public key.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LogError(f"{path}: cannot read public key ({exc.strerror})") from None
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise LogError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LogError(f"{path}: not an Ed25519 public key")
    return key
