"""The server's Ed25519 log-signing key.

``DATA_DIR/keys/log-signing.ed25519`` holds the private key (PKCS#8 PEM,
mode 0600, created on first use); ``log-signing.ed25519.pub`` next to it
holds the public key (SubjectPublicKeyInfo PEM) for verifiers. The key id
in checkpoints is SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from mediation.log.errors import LogError

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


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` durably with ``data``; False if it already exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # link, not rename: never replaces a key another process made
        created = True
    except FileExistsError:
        created = False
    finally:
        os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return created


def load_or_create_signer(data_dir: Path) -> LogSigner:
    """The server's signing key, created (with its ``.pub``) if there is none.

    Raises:
        LogError: the key file exists but is not an Ed25519 private key, or is
            readable by others.
    """
    path = key_path(data_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(path, pem, 0o600)
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
            _write_new(pub, pub_pem, 0o644)
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
