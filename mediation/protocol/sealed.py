"""Sealed datagrams: AES-256-GCM over every UDP datagram, with replay protection.

T1.IAS specifies no authentication or confidentiality for the delivery
network, and a UDP source address proves nothing. So every datagram of
UDP delivery (the server's envelopes, checkpoints and notices; the
agency's receiver reports) is sealed under a 32-octet key that only the
server and that agency endpoint hold. The same sealer and opener will
serve the UDP tap link (tap to server) unchanged: only the direction
byte differs.

Wire format (all integers big-endian)::

    offset  size  field
    0       2     magic b"MD"
    2       1     version (1)
    3       1     direction: 0 server->agency, 1 agency->server,
                  2 tap->server, 3 server->tap
    4       4     key id: which key (a receiver may hold several)
    8       8     session id: random, chosen when the sender starts
    16      8     session start: microseconds since the Unix epoch
    24      8     counter: 1, 2, 3, ... strictly increasing in the session
    32      n     ciphertext of the message (n >= 0)
    32+n    16    GCM tag

The session key is HKDF-SHA256(key, salt=session id, info=label, version,
direction, key id): a restart draws a new session id, hence a new key, so
a (key, nonce) pair never repeats even though the counter starts again at
1. The nonce is the counter in 12 octets; the additional data is the
32-octet header, so no header field can be changed either.

The opener believes nothing before the tag is verified. Then, per
session, a sliding window of :data:`WINDOW` counters (as IPsec's
anti-replay window, RFC 4303 section 3.4.3) refuses anything seen or too
old. At most :data:`MAX_SESSIONS` sessions are kept per opener; a new
session that started more than :data:`GRACE_US` before the newest one,
or no later than a session already forgotten, is *stale* and refused, so
a recording of an old session cannot be played back.
:meth:`DatagramOpener.saved` and ``restore`` carry that state across a
restart of the opener's process.

Sans-I/O: no sockets, no clock (times are passed in); randomness is
injectable for tests.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import os
import struct
from collections.abc import Callable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"MD"
VERSION = 1
KEY_BYTES = 32
TAG_BYTES = 16
HEADER = struct.Struct("!2sBBI8sQQ")
OVERHEAD = HEADER.size + TAG_BYTES  # 48 octets on every datagram
MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4
MAX_COUNTER = 2**64 - 1
WINDOW = 1024  # counters remembered behind the highest, per session
MAX_SESSIONS = 8  # per opener: sender restarts and several senders at once
GRACE_US = 300 * 1_000_000  # a new session may start this much before the newest
_INFO = b"mediation sealed datagram"


class Direction(enum.IntEnum):
    """Who sends: part of the header and of the session key, so nothing is reflected."""

    SERVER_TO_AGENCY = 0
    AGENCY_TO_SERVER = 1
    TAP_TO_SERVER = 2  # reserved for the UDP tap link
    SERVER_TO_TAP = 3  # reserved


class Refusal(enum.Enum):
    """Why a datagram was dropped; each is counted apart."""

    TOO_SHORT = "too short"
    TOO_LONG = "too long"
    BAD_MAGIC = "bad magic"
    BAD_VERSION = "bad version"
    WRONG_DIRECTION = "wrong direction"
    UNKNOWN_KEY = "unknown key id"
    BAD_TAG = "bad tag"
    REPLAYED = "replayed"
    STALE_SESSION = "stale session"


class SealRefused(Exception):
    """The datagram is not authentic, or was seen before: drop it."""

    def __init__(self, reason: Refusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class SealKey:
    """One key: its id (in every header) and its 32 octets."""

    key_id: int
    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ValueError(f"a sealing key is {KEY_BYTES} octets, not {len(self.key)}")
        if not 0 <= self.key_id < 2**32:
            raise ValueError("a key id is 4 octets")

    def __repr__(self) -> str:  # never the key itself
        return f"SealKey(key_id={self.key_id:08x})"


def session_cipher(key: SealKey, direction: Direction, session: bytes) -> AESGCM:
    """The AEAD of one session: its key derived by HKDF from the master key."""
    info = _INFO + struct.pack("!BBI", VERSION, direction, key.key_id)
    derived = HKDF(hashes.SHA256(), KEY_BYTES, salt=session, info=info).derive(key.key)
    return AESGCM(derived)


class DatagramSealer:
    """One sending session: seals each message as one datagram.

    Args:
        key: the key shared with the peer.
        direction: who is sending.
        start_us: the session's start, microseconds since the epoch (the
            sender's wall clock at start; it must not step back across
            restarts by more than :data:`GRACE_US`).
        random: source of the session id (tests pass a fixed one).
    """

    def __init__(
        self,
        key: SealKey,
        direction: Direction,
        start_us: int,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.key = key
        self.direction = direction
        self.session = random(8)
        self.start_us = start_us
        self.counter = 0
        self._aead = session_cipher(key, direction, self.session)
        # Everything but the counter, which each datagram appends.
        head = HEADER.pack(MAGIC, VERSION, direction, key.key_id, self.session, start_us, 0)
        self._head = head[:24]

    def seal(self, message: bytes) -> bytes:
        """The datagram carrying ``message``.

        Raises:
            ValueError: the datagram would exceed :data:`MAX_DATAGRAM`, or
            the session's counter is used up (start a new sealer).
        """
        if len(message) + OVERHEAD > MAX_DATAGRAM:
            raise ValueError(f"{len(message)} octets do not fit a sealed datagram")
        if self.counter >= MAX_COUNTER:
            raise ValueError("session counter exhausted; start a new session")
        self.counter += 1
        counter = self.counter.to_bytes(8, "big")
        header = self._head + counter
        return header + self._aead.encrypt(b"\0\0\0\0" + counter, message, header)

    def seal_run(self, messages: list[bytes]) -> list[bytes]:
        """:meth:`seal` of each message, in one call (the delivery hot path).

        Raises:
            ValueError: as :meth:`seal`; the messages before the one that
            raised were sealed (their counters are used).
        """
        head, encrypt, counter, out = self._head, self._aead.encrypt, self.counter, []
        largest = MAX_DATAGRAM - OVERHEAD
        append = out.append
        try:
            for message in messages:
                if len(message) > largest or counter >= MAX_COUNTER:
                    self.counter = counter
                    self.seal(message)  # raises its error
                counter += 1
                octets = counter.to_bytes(8, "big")
                header = head + octets
                append(header + encrypt(b"\0\0\0\0" + octets, message, header))
        finally:
            self.counter = counter
        return out


@dataclasses.dataclass
class _Session:
    start_us: int
    aead: AESGCM
    highest: int = 0
    seen: int = 0  # bit i: counter highest - i was accepted

    def check(self, counter: int) -> bool:
        """Whether ``counter`` is new (not yet marked)."""
        if counter > self.highest:
            return True
        behind = self.highest - counter
        return behind < WINDOW and not (self.seen >> behind) & 1

    def mark(self, counter: int) -> None:
        if counter > self.highest:
            self.seen = ((self.seen << (counter - self.highest)) | 1) & ((1 << WINDOW) - 1)
            self.highest = counter
        else:
            self.seen |= 1 << (self.highest - counter)


@dataclasses.dataclass(frozen=True)
class Opened:
    """An authentic, new datagram's message, and whom it came from."""

    message: bytes
    key_id: int
    session: bytes
    counter: int


_NEW = object.__new__
_WINDOW_MASK = (1 << WINDOW) - 1
_PAD = b"\0\0\0\0"  # the nonce: the counter in 12 octets
# Longer than any datagram, so no datagram starts with it: before the first opens.
_NO_LAST: tuple[bytes, None, int, bytes, None] = (bytes(MAX_DATAGRAM + 1), None, 0, b"", None)


class DatagramOpener:
    """Verifies, decrypts and de-duplicates one direction's datagrams.

    Args:
        keys: the keys accepted, by key id.
        direction: the direction accepted (the other is refused).
        max_sessions: sessions remembered; the oldest goes first.
        grace_us: how much older than the newest a new session may be.
    """

    def __init__(
        self,
        keys: Mapping[int, SealKey] | list[SealKey],
        direction: Direction,
        *,
        max_sessions: int = MAX_SESSIONS,
        grace_us: int = GRACE_US,
    ) -> None:
        self.keys = dict(keys) if isinstance(keys, Mapping) else {k.key_id: k for k in keys}
        self.direction = direction
        self.max_sessions = max_sessions
        self.grace_us = grace_us
        self.newest_start: int | None = None
        self.floor: int | None = None  # the newest start of a forgotten session
        self.refused: collections.Counter[Refusal] = collections.Counter()
        self.opened = 0
        self._sessions: dict[tuple[int, bytes], _Session] = {}
        # The first 24 octets of the last datagram opened and its session's
        # (state, key id, session id, key); emptied whenever sessions change.
        self._last: tuple[bytes, _Session | None, int, bytes, SealKey | None] = _NO_LAST

    def open(self, datagram: bytes) -> Opened:
        """Check one datagram; count and raise if it is refused.

        Raises:
            SealRefused: with the reason; the datagram must be dropped unread.
        """
        size = len(datagram)
        last = self._last
        if (
            OVERHEAD <= size <= MAX_DATAGRAM
            and datagram.startswith(last[0])
            and self.keys.get(last[2]) is last[4]  # the key still held (a reload may drop it)
        ):
            # The usual case: the same session as the datagram before. Its first
            # 24 octets (magic to session start) are those of a datagram whose
            # header was checked, of a session still kept: checked again by
            # one comparison (the tag covers them all the same).
            _prefix, state, key_id, session, _key = last
            fresh = known = False
            counter = int.from_bytes(datagram[24:32], "big")
        else:
            state, key_id, session, counter, fresh, key = self._session_of(datagram, size)
            known = True  # remembered below once the datagram proves authentic and new
        header = datagram[: HEADER.size]
        try:
            message = state.aead.decrypt(_PAD + datagram[24:32], datagram[HEADER.size :], header)
        except InvalidTag:
            raise self._refused(Refusal.BAD_TAG) from None
        # Authentic from here on (the start is under the tag: a known session's
        # datagram with another start fails it).
        if counter == 0 or (counter <= state.highest and not state.check(counter)):
            raise self._refused(Refusal.REPLAYED)  # (above the highest, check() says new)
        if fresh:
            self._admit((key_id, session), state)
        if counter == state.highest + 1:  # mark(), inline for the usual next counter
            state.seen = ((state.seen << 1) | 1) & _WINDOW_MASK
            state.highest = counter
        else:
            state.mark(counter)
        if known:
            self._last = (datagram[:24], state, key_id, session, key)
        self.opened += 1
        # Built without the frozen dataclass's __init__ (its per-field
        # object.__setattr__ cost a sixth of an open): what it would set.
        opened = _NEW(Opened)
        fields = opened.__dict__
        fields["message"] = message
        fields["key_id"] = key_id
        fields["session"] = session
        fields["counter"] = counter
        return opened

    def _refused(self, reason: Refusal) -> SealRefused:
        """Count a refusal; the error to raise."""
        self.refused[reason] += 1
        return SealRefused(reason)

    def _session_of(
        self, datagram: bytes, size: int
    ) -> tuple[_Session, int, bytes, int, bool, SealKey]:
        """Check a datagram's header.

        Returns:
            Its session's state (a new one, not yet kept, if ``fresh``), key
            id, session id, counter, ``fresh``, and the key.

        Raises:
            SealRefused: a header that is not ours (counted).
        """
        if size < OVERHEAD:
            raise self._refused(Refusal.TOO_SHORT)
        if size > MAX_DATAGRAM:
            raise self._refused(Refusal.TOO_LONG)
        magic, version, direction, key_id, session, start, counter = HEADER.unpack_from(datagram)
        if magic != MAGIC:
            raise self._refused(Refusal.BAD_MAGIC)
        if version != VERSION:
            raise self._refused(Refusal.BAD_VERSION)
        if direction != self.direction:
            raise self._refused(Refusal.WRONG_DIRECTION)
        key = self.keys.get(key_id)
        if key is None:
            raise self._refused(Refusal.UNKNOWN_KEY)
        state = self._sessions.get((key_id, session))
        if state is None:
            state = _Session(start, session_cipher(key, self.direction, session))
            return state, key_id, session, counter, True, key
        return state, key_id, session, counter, False, key

    def _admit(self, name: tuple[int, bytes], state: _Session) -> None:
        """Keep a new session, unless it is stale; forget the oldest beyond the limit."""
        newest = self.newest_start
        too_old = newest is not None and state.start_us < newest - self.grace_us
        if too_old or (self.floor is not None and state.start_us <= self.floor):
            raise self._refused(Refusal.STALE_SESSION)
        if len(self._sessions) >= self.max_sessions:
            oldest = min(self._sessions, key=lambda n: self._sessions[n].start_us)
            if self._sessions[oldest].start_us >= state.start_us:
                raise self._refused(Refusal.STALE_SESSION)  # it would be forgotten at once
            # Its window goes with it: it may never come back (a replay would).
            self.floor = max(self.floor or 0, self._sessions.pop(oldest).start_us)
        self._sessions[name] = state
        if newest is None or state.start_us > newest:
            self.newest_start = state.start_us

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def saved(self) -> dict:
        """The replay state, as JSON-ready data, for :meth:`restore` after a restart.

        Only the newest start and each session's highest counter: what came
        below the highest before a restart counts as seen afterwards (a
        genuine late datagram is then dropped as replayed; retrieval fetches
        what it carried).
        """
        return {
            "version": 1,
            "newestStart": self.newest_start,
            "floor": self.floor,
            "sessions": [
                {"keyId": k, "session": s.hex(), "start": st.start_us, "highest": st.highest}
                for (k, s), st in self._sessions.items()
            ],
        }

    def restore(self, data: object) -> None:
        """Take back what :meth:`saved` returned (another process's, or an earlier run's).

        Sessions of keys no longer held are forgotten.

        Raises:
            ValueError: ``data`` is not what :meth:`saved` writes.
        """
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("not a saved opener state")
        self._last = _NO_LAST  # sessions change below
        newest = data.get("newestStart")
        if newest is not None:
            self.newest_start = max(int(newest), self.newest_start or 0)
        floor = data.get("floor")
        if floor is not None:
            self.floor = max(int(floor), self.floor or 0)
        for item in data.get("sessions", [])[: self.max_sessions]:
            key = self.keys.get(int(item["keyId"]))
            if key is None:
                continue
            session = bytes.fromhex(item["session"])
            if len(session) != 8:
                raise ValueError("a session id is 8 octets")
            state = _Session(int(item["start"]), session_cipher(key, self.direction, session))
            state.highest = int(item["highest"])
            state.seen = (1 << WINDOW) - 1  # everything up to the highest: seen
            self._sessions[(key.key_id, session)] = state
