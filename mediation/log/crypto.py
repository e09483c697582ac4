"""The evidence log encrypted at rest: the log key, segment keys, sealed records.

A copy of the data directory must not reveal cases, and a record's payload
(the PDU) holds the case identity, the target's addresses and the IAP id.
So from format version 2 on, every data record's body after its type and
sequence number is stored encrypted with AES-256-GCM.

Keys::

    registry key   outside the data directory (mediation/warrants/keys.py)
      -> log key   RegistryKey.derive(LOG_KEY_PURPOSE): the caller derives it,
                   so this package never sees the registry key itself
      -> segment key  HKDF-SHA256(log key, salt, "mediation-log-segment-v2" 0x00 || stream)
      -> key check    HKDF-SHA256(log key, salt, "mediation-log-key-check-v2" 0x00 || stream)[:16]

``salt`` is 32 random bytes, new for every segment, stored in its header
with the key check (which tells a wrong key from damaged records).
``stream`` is the stream's bytes as in the chain (``n || handle || kind``).

A record: nonce = 4 zero bytes || sequence number (8 bytes, big-endian);
associated data = the 9 bytes stored in clear before the ciphertext (type
and sequence number), so a record moved to another place fails to open;
plaintext = the record body from byte 9 on (time, kind, clock, payload).

Why a nonce never repeats under one key: a key belongs to one segment (a
fresh random salt each), and a segment is written by one writer only
while it is open: each time a stream is opened its next record goes into
a new segment (recovery keeps a segment for appending only if it holds no
data record, and then gives it a new salt first: see ``recovery``). Within
one opening, sequence numbers only grow, so each (key, nonce) is used for
one record. When recovery cuts a torn tail and the stream later stores a
different record with the same sequence number, that record is in a new
segment under a new key. A write retried after a failure (disk full)
stores the same bytes, the same encryption of the same record. Two salts
are equal with probability about s²/2^257 after s segments.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mediation.aead import hkdf_sha256, nonce
from mediation.log import format as F
from mediation.log.errors import LogError
from mediation.pdu import StreamId

# The purpose the registry key derives the log key for: RegistryKey.derive(LOG_KEY_PURPOSE).
LOG_KEY_PURPOSE = "evidence-log"
KEY_BYTES = 32
SEGMENT_INFO = b"mediation-log-segment-v2\x00"
CHECK_INFO = b"mediation-log-key-check-v2\x00"
_CACHE = 64  # segment ciphers kept per key (a reader walks segments in order)


class WrongLogKey(LogError):
    """The log key given is not the one a segment was written with."""


class LogKeyRequired(LogError):
    """An encrypted segment was to be read without a log key."""


class RecordUnreadable(ValueError):
    """A stored record failed its AES-GCM tag: ciphertext, tag or position altered."""


class SegmentCipher:
    """AES-256-GCM under one segment's key."""

    __slots__ = ("_aead", "encrypt")

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.encrypt = self._aead.encrypt  # (nonce, plaintext, associated data); the hot path

    def seal(self, clear: bytes, secret: bytes) -> bytes:
        """The stored form of a record body ``clear || secret`` after its clear part.

        Args:
            clear: the body's first 9 bytes (type, sequence number), kept in clear.
            secret: the rest of the body (time, kind, clock, payload).
        """
        return self._aead.encrypt(nonce(int.from_bytes(clear[1:9], "big")), secret, clear)

    def open(self, stored: bytes | memoryview) -> bytes:
        """The plaintext body of a stored data record body.

        Raises:
            RecordUnreadable: the tag does not verify.
        """
        clear = bytes(stored[: F.CLEAR_META_SIZE])
        if len(stored) < F.CLEAR_META_SIZE + F.TAG_SIZE:
            raise RecordUnreadable("encrypted record too short")
        try:
            secret = self._aead.decrypt(
                nonce(int.from_bytes(clear[1:9], "big")), stored[F.CLEAR_META_SIZE :], clear
            )
        except InvalidTag:
            raise RecordUnreadable(
                "does not decrypt (ciphertext, tag or position altered)"
            ) from None
        return clear + secret


class LogKey:
    """The evidence log's key. Never printed (see ``__repr__``)."""

    __slots__ = ("_ciphers", "_key", "_lock")

    def __init__(self, key: bytes) -> None:
        """Args: key: 32 bytes, ``RegistryKey.derive(LOG_KEY_PURPOSE)``.

        Raises:
            ValueError: not 32 bytes.
        """
        if len(key) != KEY_BYTES:
            raise ValueError("log key must be 32 bytes")
        self._key = bytes(key)
        # Used from the event loop (new segments) and reader threads (old ones).
        self._lock = threading.Lock()
        self._ciphers: OrderedDict[bytes, SegmentCipher] = OrderedDict()

    def __repr__(self) -> str:
        return "LogKey(<hidden>)"

    def fingerprint(self) -> str:
        """A short public name of the key (for messages): not usable to find it."""
        return hashlib.sha256(b"mediation-log-key-id\x00" + self._key).hexdigest()[:16]

    def key_check(self, stream: StreamId, salt: bytes) -> bytes:
        return hkdf_sha256(self._key, salt, CHECK_INFO + F.stream_bytes(stream), F.KEY_CHECK_SIZE)

    def new_segment(
        self, stream: StreamId, first_seq: int, prev_chain: bytes
    ) -> tuple[bytes, SegmentCipher]:
        """A new encrypted segment's header (fresh random salt) and its cipher."""
        salt = os.urandom(F.SALT_SIZE)
        header = F.encode_header(stream, first_seq, prev_chain, salt, self.key_check(stream, salt))
        return header, self._cipher(stream, salt)

    def cipher(self, header: F.SegmentHeader, where: str) -> SegmentCipher:
        """The cipher of an encrypted segment, once its key check matches this key.

        Args:
            where: names the segment in the error (``w-3f9a1c/cmii 00000000000000000000.seg``).

        Raises:
            WrongLogKey: the segment was written with another key (or its
                salt or key check were altered).
        """
        with self._lock:
            cached = self._ciphers.get(header.salt)
            if cached is not None:
                self._ciphers.move_to_end(header.salt)
                return cached
        if self.key_check(header.stream, header.salt) != header.key_check:
            raise WrongLogKey(
                f"{where}: written with another log key than {self.fingerprint()} "
                "(give the registry key of the server that wrote it)"
            )
        return self._cipher(header.stream, header.salt)

    def _cipher(self, stream: StreamId, salt: bytes) -> SegmentCipher:
        key = hkdf_sha256(self._key, salt, SEGMENT_INFO + F.stream_bytes(stream), KEY_BYTES)
        cipher = SegmentCipher(key)
        with self._lock:
            self._ciphers[salt] = cipher
            if len(self._ciphers) > _CACHE:
                self._ciphers.popitem(last=False)
        return cipher


class BodyReader:
    """The one way stored data records are read back: plaintext bodies, either version.

    Built per segment from its header; cursors, recovery, retention and
    verification all read through it.
    """

    __slots__ = ("_cipher", "encrypted", "readable")

    def __init__(self, header: F.SegmentHeader, key: LogKey | None, where: str) -> None:
        """Raises: WrongLogKey: an encrypted segment's key check does not match ``key``."""
        self.encrypted = header.encrypted
        self._cipher = key.cipher(header, where) if key is not None and self.encrypted else None
        self.readable = not self.encrypted or self._cipher is not None

    def body(self, stored: bytes | memoryview) -> bytes | memoryview:
        """The plaintext body (what the chain covers) of a stored data record body.

        Raises:
            RecordUnreadable: the record does not decrypt.
            LogKeyRequired: the segment is encrypted and there is no key.
        """
        if not self.encrypted:
            return stored
        if self._cipher is None:
            raise LogKeyRequired("encrypted segment: the log key is needed to read it")
        return self._cipher.open(stored)
