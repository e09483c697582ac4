"""Small files the tap keeps encrypted at rest: one key per write, one message per key.

Used by the spool's state file (mediation/tap/spool_format.py) and the
encrypted tap file (mediation/tap/tapconfig.py). A blob is::

    magic(8) salt(32) key-check(16) AES-256-GCM(ciphertext || tag)

under ``HKDF-SHA256(key, salt, info)`` (:func:`mediation.aead.hkdf_sha256`),
with ``key-check = HKDF-SHA256(key, salt, check_info)[:16]`` to tell a wrong
key from damage, and the magic as associated data.

Why the fixed nonce never repeats under one key: every :func:`seal_blob`
draws a new random 32-byte salt, so every blob has its own key and that
key seals that one message. Two salts are equal with probability about
s²/2^257 after s blobs.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mediation.aead import hkdf_sha256

KEY_BYTES = 32
MAGIC_BYTES = 8
SALT_BYTES = 32
CHECK_BYTES = 16
TAG_BYTES = 16
HEADER_BYTES = MAGIC_BYTES + SALT_BYTES + CHECK_BYTES
_NONCE = bytes(12)


class KeyMismatch(ValueError):
    """A header's key check does not match the key given."""


def key_check(key: bytes, salt: bytes, check_info: bytes) -> bytes:
    """The 16 bytes that tell the right key from another, for one salt."""
    return hkdf_sha256(key, salt, check_info, CHECK_BYTES)


def derive_cipher(key: bytes, salt: bytes, info: bytes) -> AESGCM:
    """AES-256-GCM under ``HKDF-SHA256(key, salt, info)``."""
    return AESGCM(hkdf_sha256(key, salt, info, KEY_BYTES))


def new_header(key: bytes, magic: bytes, check_info: bytes) -> tuple[bytes, bytes]:
    """A fresh header ``magic salt key-check`` and its salt."""
    assert len(magic) == MAGIC_BYTES
    salt = os.urandom(SALT_BYTES)
    return magic + salt + key_check(key, salt, check_info), salt


def check_header(key: bytes, raw: bytes, magic: bytes, check_info: bytes) -> bytes:
    """The salt of a header that starts ``raw``, once its key check matches.

    Raises:
        ValueError: ``raw`` does not start with ``magic`` and a whole header.
        KeyMismatch: written under another key.
    """
    if len(raw) < HEADER_BYTES or not raw.startswith(magic):
        raise ValueError("not in this format")
    salt = raw[MAGIC_BYTES : MAGIC_BYTES + SALT_BYTES]
    if key_check(key, salt, check_info) != raw[MAGIC_BYTES + SALT_BYTES : HEADER_BYTES]:
        raise KeyMismatch("written under another key")
    return salt


def seal_blob(key: bytes, magic: bytes, info: bytes, check_info: bytes, clear: bytes) -> bytes:
    """``clear`` sealed under a key of its own (a new salt)."""
    header, salt = new_header(key, magic, check_info)
    return header + derive_cipher(key, salt, info).encrypt(_NONCE, clear, magic)


def open_blob(key: bytes, magic: bytes, info: bytes, check_info: bytes, raw: bytes) -> bytes:
    """The plaintext of a blob written by :func:`seal_blob`.

    Raises:
        ValueError: not a blob of this kind, or altered (the tag fails).
        KeyMismatch: sealed under another key.
    """
    salt = check_header(key, raw, magic, check_info)
    try:
        return derive_cipher(key, salt, info).decrypt(_NONCE, raw[HEADER_BYTES:], magic)
    except InvalidTag:
        raise ValueError("altered or damaged (its authentication tag fails)") from None
