"""The registry key: where it lives, how it is found, and what it seals.

One 256-bit key protects everything case-identifying in the registry. It
lives either in a key file (mode 0600, outside the data directory by
default, so a copy of the data directory alone reveals nothing) or is
derived with scrypt from a passphrase read from an environment variable.
The raw key is never used directly: HKDF derives one subkey per purpose
(values, the audit anchor, the CA's private key).

Sealed values are AES-256-GCM with a fresh random 96-bit nonce each, and
the value's place (``table/handle/column``) as associated data, so a
ciphertext copied to another row or column fails to open instead of
silently swapping two cases' details.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from mediation.durable import write_new
from mediation.errors import UsageError

KEY_BYTES = 32
NONCE_BYTES = 12
SEAL_VERSION = b"\x01"
KEY_FILE_TAG = "mediation-registry-key-v1"
ENV_KEY_FILE = "MEDIATION_KEY_FILE"
ENV_PASSPHRASE = "MEDIATION_PASSPHRASE"
MIN_PASSPHRASE = 12
# Plaintexts are padded to a multiple of this, so a ciphertext's length
# says little about the case identity or the number of targets inside.
PAD_TO = 64
_KEY_CHECK = b"mediation registry key check v1"


class RegistryKeyError(Exception):
    """A sealed value did not open: wrong key, or the value was tampered with."""


def default_key_file() -> Path:
    """``/etc/mediation/registry.key`` for root, else under the XDG config home.

    Deliberately not inside the data directory: backups and copies of the
    data directory then carry only ciphertext.
    """
    if os.geteuid() == 0:
        return Path("/etc/mediation/registry.key")
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "mediation" / "registry.key"


@dataclasses.dataclass(frozen=True)
class KdfParams:
    """scrypt parameters for a passphrase registry; kept (not secret) in the registry."""

    salt: bytes
    n: int = 2**15  # ~32 MiB and ~0.1 s per derivation: costly to guess, cheap to use
    r: int = 8
    p: int = 1

    @classmethod
    def fresh(cls) -> KdfParams:
        return cls(salt=os.urandom(16))

    def to_json(self) -> str:
        salt = base64.b64encode(self.salt).decode("ascii")
        return json.dumps({"kdf": "scrypt", "salt": salt, "n": self.n, "r": self.r, "p": self.p})

    @classmethod
    def from_json(cls, text: str) -> KdfParams:
        data = json.loads(text)
        return cls(base64.b64decode(data["salt"]), data["n"], data["r"], data["p"])


class RegistryKey:
    """The registry key and the operations it allows. Never printed (see ``__repr__``)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("registry key must be 32 bytes")
        self._key = key
        self._aead = AESGCM(self.derive("values"))

    def __repr__(self) -> str:
        return "RegistryKey(<hidden>)"

    @classmethod
    def generate(cls) -> RegistryKey:
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_passphrase(cls, passphrase: str, params: KdfParams) -> RegistryKey:
        kdf = Scrypt(salt=params.salt, length=KEY_BYTES, n=params.n, r=params.r, p=params.p)
        return cls(kdf.derive(passphrase.encode("utf-8")))

    def derive(self, purpose: str) -> bytes:
        """A 32-byte subkey for one purpose (HKDF-SHA256), so no key serves two jobs."""
        info = f"mediation registry {purpose} v1".encode("ascii")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self._key)

    def seal(self, where: str, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` bound to ``where`` (e.g. ``warrants/w-3f9a1c/details``)."""
        nonce = os.urandom(NONCE_BYTES)
        return SEAL_VERSION + nonce + self._aead.encrypt(nonce, plaintext, where.encode())

    def open(self, where: str, sealed: bytes) -> bytes:
        """The plaintext sealed at ``where``; :class:`RegistryKeyError` if it does not open."""
        if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[:1] != SEAL_VERSION:
            raise RegistryKeyError(f"{where}: not a sealed value")
        nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, where.encode())
        except InvalidTag:
            raise RegistryKeyError(f"{where}: does not open with this key") from None

    def seal_json(self, where: str, value: Any) -> bytes:
        """Seal a JSON value, padded with spaces to a multiple of ``PAD_TO`` bytes."""
        text = json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % PAD_TO)
        return self.seal(where, text)

    def open_json(self, where: str, sealed: bytes) -> Any:
        return json.loads(self.open(where, sealed))

    def check_value(self) -> bytes:
        """What the registry stores so that a wrong key is told apart from damage."""
        return self.seal("meta/key_check", _KEY_CHECK)

    def matches(self, check_value: bytes) -> bool:
        try:
            return self.open("meta/key_check", check_value) == _KEY_CHECK
        except RegistryKeyError:
            return False

    def mac(self, purpose: str, message: bytes) -> str:
        """HMAC-SHA256 of ``message`` under the ``purpose`` subkey, as hex."""
        tag = hmac.HMAC(self.derive(purpose), hashes.SHA256())
        tag.update(message)
        return tag.finalize().hex()


def write_key_file(path: Path, key: RegistryKey) -> None:
    """Create ``path`` (mode 0600, parents 0700) holding ``key``; never overwrites.

    Raises:
        FileExistsError: ``path`` exists (it is left as it was).
        OSError: the write failed; no partial file is left.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    encoded = base64.b64encode(key._key).decode("ascii")
    write_new(path, f"{KEY_FILE_TAG}:{encoded}\n".encode("ascii"), 0o600)


def read_key_file(path: Path, field: str = "--key-file") -> RegistryKey:
    """The key in ``path``; refused if it is missing, malformed or readable by others."""
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise UsageError(field, f"cannot read key file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        text = ""
    if mode & 0o077:
        raise UsageError(
            field, f"key file {path} is readable by others (mode {mode:04o}); run: chmod 600 {path}"
        )
    tag, _, encoded = text.partition(":")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError:
        raw = b""
    if tag != KEY_FILE_TAG or len(raw) != KEY_BYTES:
        raise UsageError(field, f"{path} is not a mediation registry key file")
    return RegistryKey(raw)


def read_passphrase(var: str, field: str = "--passphrase-env") -> str | None:
    """The passphrase in environment variable ``var``, or None if it is unset."""
    value = os.environ.get(var)
    if value is None:
        return None
    if len(value) < MIN_PASSPHRASE:
        raise UsageError(
            field, f"the passphrase in {var} must be at least {MIN_PASSPHRASE} characters"
        )
    return value
