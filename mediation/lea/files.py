"""Evidence files: appended, hashed as they are written, made durable on demand.

Every output file is opened for appending (a restarted receiver adds to
what an earlier run wrote) and hashed as it grows, so its SHA-256 is ready
the moment it is closed, however large it is. The hash file next to it is
in ``sha256sum`` form (``HEX  NAME``), so ``sha256sum -c`` checks it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from mediation.durable import write_atomic
from mediation.evidence.pcap import PcapError, PcapReader

_CHUNK = 1 << 20
BUFFER = 256 * 1024
# Written since the last fsync, the size that brings the next one forward to
# the next flush (the receiver's housekeeping, the server's capture files): a
# busy writer syncs as it goes, so the disk takes its files as a steady stream,
# never a burst of seconds' worth at once that holds up every other writer of
# that disk (docs/architecture.md, "The state after session 12").
SYNC_OCTETS = 4 << 20


class HashedFile:
    """An append-only binary file that keeps the SHA-256 of its whole content.

    Implements the ``write``/``flush``/``fileno`` a :class:`PcapWriter` needs.
    """

    def __init__(self, path: Path) -> None:
        """Open ``path`` for appending (mode 0600), hashing what it holds already."""
        self.path = path
        self._hash = hashlib.sha256()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        # Unbuffered: this class keeps its own buffer (below).
        self._file = os.fdopen(fd, "a+b", buffering=0)
        self._file.seek(0)
        while chunk := self._file.read(_CHUNK):
            self._hash.update(chunk)
        self.size = self._file.seek(0, os.SEEK_END)
        # Written but not yet handed to the kernel, nor hashed: one write system
        # call and one hash update per BUFFER, not per envelope (each call cost
        # about half a microsecond a record; the receiver flushes twice a second).
        self._parts: list[bytes] = []
        self._held = 0
        self.dirty = False  # written since the last sync
        self.synced_size = self.size  # the size the last sync (begun) covers
        self.closed = False

    def write(self, data: bytes) -> int:
        """Append ``data`` (held; :meth:`flush` hands it to the kernel)."""
        self.write_all((data,))
        return len(data)

    def write_all(self, parts: Sequence[bytes]) -> None:
        """Append each of ``parts`` in order (held; :meth:`flush` hands them to the kernel).

        The receiver stores a wake-up's envelopes at once and appends to each
        file once (not a call per record and per file).
        """
        if not parts:
            return
        self._parts.extend(parts)
        size = sum(map(len, parts))
        self.size += size
        self._held += size
        self.dirty = True
        if self._held >= BUFFER:
            self.flush()

    def flush(self) -> None:
        """Hand everything written to the kernel (and to the hash)."""
        if not self._parts:
            return
        data = b"".join(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts.clear()
        self._held = 0
        self._hash.update(data)
        view = memoryview(data)
        while view:  # a regular file takes it all at once; a short write is retried
            view = view[self._file.write(view) :]

    def __del__(self) -> None:
        # As Python's buffered files do when dropped unclosed (an exception on
        # the way out of a run): what was written still reaches the kernel.
        if not getattr(self, "closed", True) and self._parts:
            with contextlib.suppress(OSError, ValueError):
                self.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def hexdigest(self) -> str:
        """SHA-256 of everything in the file, as written so far."""
        self.flush()
        return self._hash.hexdigest()

    @property
    def unsynced(self) -> int:
        """Octets written since the last sync began (held, flushed or not)."""
        return self.size - self.synced_size

    def begin_sync(self) -> int:
        """Flush, mark clean, and return the descriptor to fsync (e.g. in a thread).

        Writes after this call mark the file dirty again, so a later sync covers them.
        """
        self.flush()
        self.dirty = False
        self.synced_size = self.size
        return self._file.fileno()

    def sync(self) -> None:
        """Flush and fsync: what was written survives a power cut."""
        self.flush()
        os.fsync(self._file.fileno())
        self.dirty = False
        self.synced_size = self.size

    def close(self, *, hash_file: bool = True) -> str:
        """Sync, close, and (unless told not to) write ``NAME.sha256`` next to the file.

        Returns:
            The hex digest. Safe to call twice.
        """
        if not self.closed:
            self.sync()
            self._file.close()
            self.closed = True
            if hash_file:
                write_sha256(self.path, self.hexdigest())
        return self.hexdigest()


def write_sha256(path: Path, digest: str) -> Path:
    """Write ``PATH.sha256``: one ``sha256sum`` line naming the file relative to its directory."""
    target = path.with_name(path.name + ".sha256")
    write_atomic(target, f"{digest}  {path.name}\n".encode("ascii"))
    return target


def sha256_of(path: Path) -> str:
    """SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# Torn tails -------------------------------------------------------------------
# A receiver killed mid-write may leave half a record at the end of a file.
# Nothing in it was acknowledged (acks wait for fsync), so cutting it off
# loses nothing, and the next run's appends stay readable.


def cut_torn_pcap(path: Path) -> int:
    """Cut a half-written last record off a pcap file; returns the octets cut.

    A file too short for its header is emptied (the writer writes a new one).

    Raises:
        PcapError: the file is not a pcap file at all, or is corrupt before its end.
    """
    size = path.stat().st_size
    if size < 24:
        return _truncate(path, 0, size)
    good = 24
    with PcapReader.open(path) as reader:
        try:
            for packet in reader:
                good = packet.offset + len(packet.data)
        except PcapError as exc:
            if exc.offset is None or "truncated" not in exc.message:
                raise
    return _truncate(path, good, size)


def cut_torn_lines(path: Path) -> int:
    """Cut a half-written last line off a JSON-lines file; returns the octets cut."""
    data = path.read_bytes()
    good = data.rfind(b"\n") + 1
    return _truncate(path, good, len(data))


def _truncate(path: Path, good: int, size: int) -> int:
    if good < size:
        os.truncate(path, good)
    return size - good
