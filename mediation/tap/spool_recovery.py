"""Opening a tap spool again: its state file read, its segments checked, torn tails cut.

A tail torn by a crash (or ``SIGKILL``) is found by its CRC and AES-GCM tag
and cut; the next batch id is one more than every id found in a segment,
acknowledged or reserved, so none is ever given twice. The spool itself
(appending, acknowledging, sending ahead) is :mod:`mediation.tap.spool`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mediation.errors import UsageError
from mediation.tap.atrest import KeyMismatch
from mediation.tap.spool_format import (
    SEGMENT_HEADER,
    open_state,
    read_records,
    segment_cipher,
    stored_size,
)


class SpoolError(UsageError):
    """The spool cannot be used as it is: says which directory and what to do."""

    def __init__(self, directory: Path, problem: str) -> None:
        super().__init__(f"spool {directory}", problem)


class WrongSpoolKey(SpoolError):
    """The spool was written under another key than the one given."""


@dataclass
class Segment:
    """One segment file of the spool: the batch ids it holds, its size and its cipher."""

    path: Path
    first: int  # first batch id in it
    last: int  # last batch id in it
    size: int  # bytes, header included
    cipher: AESGCM


class SpoolRecovery:
    """A :class:`~mediation.tap.spool.TapSpool`'s opening (a base class of it).

    Sets the spool's acknowledged and reserved ids, overflow report,
    segments and next id from what is on disk; saves the state and drops
    acknowledged segments with the spool's own methods.
    """

    directory: Path
    _key: bytes
    _segments: list[Segment]
    _acked: int
    _acked_saved: int
    _overflow: tuple[int, int, int] | None
    _next: int
    _reserved: int

    def _load_state(self) -> bool:
        """Read the state file; False if there is none."""
        try:
            raw = (self.directory / "state").read_bytes()
        except FileNotFoundError:
            return False
        try:
            self._acked, count, first, last, self._reserved = open_state(self._key, raw)
        except KeyMismatch:
            raise self._wrong_key() from None
        except ValueError as exc:
            raise SpoolError(self.directory, f"its state file is {exc}; move it away") from None
        self._overflow = (count, first, last) if count else None
        self._acked_saved = self._acked
        return True

    def _wrong_key(self) -> WrongSpoolKey:
        return WrongSpoolKey(
            self.directory,
            "written under another tap key (other credentials); use the credentials that "
            "wrote it, or move the directory away to start an empty spool",
        )

    def _recover(self) -> None:
        for stray in self.directory.glob(".state.*.tmp"):
            stray.unlink()  # a state write a crash interrupted
        segments = sorted(self.directory.glob("*.seg"))
        if not self._load_state():
            if segments:
                raise SpoolError(
                    self.directory, "segments without a state file; move the spool away"
                )
            self._save_state()
        for path in segments:
            segment = self._recover_segment(path)
            if segment is not None:
                self._segments.append(segment)
        last = max((s.last for s in self._segments), default=0)
        # An id reserved may have been sent ahead of its record and lost: never reuse one.
        self._next = max(self._acked, last, self._reserved) + 1
        self._drop_acked()

    def _recover_segment(self, path: Path) -> Segment | None:
        """The segment in ``path`` with a torn or damaged tail cut; None if it was removed."""
        with path.open("rb") as stream:
            header = stream.read(SEGMENT_HEADER)
        if len(header) < SEGMENT_HEADER:  # torn while it was being created
            path.unlink()
            return None
        try:
            cipher = segment_cipher(self._key, header)
        except KeyMismatch:
            raise self._wrong_key() from None
        except ValueError:
            problem = f"{path.name} is not a spool segment; move it away"
            raise SpoolError(self.directory, problem) from None
        size, first, last = SEGMENT_HEADER, 0, 0
        for batch, clear in read_records(path, cipher, path.stat().st_size):
            if clear is None or batch <= last:
                break
            first, last = first or batch, batch
            size += stored_size(clear)
        if last == 0:
            path.unlink()
            return None
        if size != path.stat().st_size:
            with path.open("r+b") as stream:
                stream.truncate(size)
                os.fsync(stream.fileno())
        else:  # records a stopped process wrote and had not yet synced (TapSpool.sync_written)
            with path.open("rb") as stream:
                os.fdatasync(stream.fileno())
        return Segment(path, first, last, size, cipher)
