"""The evidence log of a data directory: every warrant stream, their flushers, retention.

The log key (``crypto.LogKey``, derived from the registry key, which lives
outside the data directory) encrypts every record at rest; the caller
gives it, or explicitly None for an unencrypted log (format version 1:
tests and the benchmark; old segments are read either way).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from mediation.log import format as F
from mediation.log.config import LogConfig
from mediation.log.crypto import LogKey
from mediation.log.cursor import RingShare
from mediation.log.errors import LogError
from mediation.log.keys import LogSigner, load_or_create_signer
from mediation.log.recovery import recover_stream
from mediation.log.retention import RetentionResult, remove_segments
from mediation.log.stream import StreamLog
from mediation.log.timer import StreamTimer
from mediation.log.writer import WriterPool
from mediation.pdu import StreamId, StreamKind

LOG_DIR = "log"
LOCK = ".lock"


def stream_dir(data_dir: Path, handle: str, kind: StreamKind) -> Path:
    """``DATA_DIR/log/<handle>/<cmii|cmcc>``: opaque handles only.

    Raises:
        ValueError: the handle is not safe as a directory name.
    """
    return Path(data_dir) / LOG_DIR / F.check_handle(handle) / F.STREAM_DIRS[kind]


def _lock(directory: Path) -> int:
    """Take the stream's writer lock (one writer per stream, across processes)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogError(f"{directory}: stream is open in another process") from None
    return fd


class EvidenceLog:
    """All streams of one data directory. Make it with ``EvidenceLog.open``."""

    def __init__(
        self,
        data_dir: Path,
        config: LogConfig,
        signer: LogSigner,
        nursery: trio.Nursery,
        key: LogKey | None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.config = config
        self.signer = signer
        self._key = key
        self._nursery = nursery
        self._streams: dict[StreamId, StreamLog] = {}
        self._locks: dict[StreamId, int] = {}
        self._opening: dict[StreamId, trio.Event] = {}
        # Shared by every stream: bounded threads and open files, one timer task.
        self.pool = WriterPool(config.writer_threads, config.open_segments)
        self.timer = StreamTimer()
        self.rings = RingShare(config.ring_bytes)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, data_dir: Path | str, config: LogConfig | None = None, *, key: LogKey | None
    ) -> AsyncIterator[EvidenceLog]:
        """Open the log; on leaving, every stream is checkpointed, flushed and closed.

        Args:
            key: encrypts new records (required, so no caller forgets it);
                None stores them unencrypted (tests and the benchmark only).

        Raises:
            LogError: the signing key is unusable.
        """
        signer = await trio.to_thread.run_sync(load_or_create_signer, Path(data_dir))
        async with trio.open_nursery() as nursery:
            log = cls(Path(data_dir), config or LogConfig(), signer, nursery, key)
            nursery.start_soon(log.timer.run)
            try:
                yield log
            finally:
                await log.aclose()
                nursery.cancel_scope.cancel()

    async def stream(self, handle: str, kind: StreamKind) -> StreamLog:
        """The stream's log, opened (and recovered) on first use.

        Raises:
            ValueError: the handle is not a safe opaque handle.
            LogError: another process has the stream open.
            LogCorrupted: the stream cannot be recovered automatically.
            LogError: its segments were written with another log key
                (``WrongLogKey``), or are encrypted and the log has no key.
        """
        key = StreamId(F.check_handle(handle), kind)
        while key in self._opening:
            await self._opening[key].wait()
        if key in self._streams:
            return self._streams[key]
        self._opening[key] = trio.Event()
        try:
            directory = stream_dir(self.data_dir, handle, kind)
            lock = await trio.to_thread.run_sync(_lock, directory)
            try:
                recovered = await trio.to_thread.run_sync(
                    recover_stream, directory, key, self.config.index_interval, self._key
                )
                stream = StreamLog(
                    key,
                    directory,
                    self.config,
                    self.signer,
                    recovered,
                    self._key,
                    self.pool,
                    self.timer,
                    self.rings,
                )
            except BaseException:
                os.close(lock)
                raise
            self._streams[key], self._locks[key] = stream, lock
            self._share_rings()
            return stream
        finally:
            self._opening.pop(key).set()

    @property
    def streams(self) -> list[StreamLog]:
        """The streams open now."""
        return list(self._streams.values())

    def _share_rings(self) -> None:
        """Each open stream's ring: its share of ``ring_budget`` (at most ``ring_bytes``)."""
        share = self.config.ring_budget // max(1, len(self._streams))
        self.rings.limit = min(self.config.ring_bytes, share)

    async def close_stream(self, handle: str, kind: StreamKind) -> None:
        """Checkpoint, flush and close one stream (nothing if it is not open)."""
        key = StreamId(handle, kind)
        stream = self._streams.pop(key, None)
        if stream is not None:
            self._share_rings()
            try:
                await stream.aclose()
            finally:
                os.close(self._locks.pop(key))

    async def apply_retention(
        self, handle: str, now: dt.datetime, retention_until: dt.datetime
    ) -> list[RetentionResult]:
        """Remove a warrant's segments once ``now`` is past ``retention_until``.

        Both streams are closed first; each removed segment is journalled
        (signed) before it is deleted. Sequence numbers are never reused if
        the streams are opened again.

        Returns:
            What was removed, per stream directory that exists; empty while the
            retention period runs.
        """
        if now < retention_until:
            return []
        results = []
        for kind in StreamKind:
            directory = stream_dir(self.data_dir, handle, kind)
            if not directory.is_dir():
                continue
            await self.close_stream(handle, kind)
            results.append(
                await trio.to_thread.run_sync(
                    self._remove, directory, StreamId(handle, kind), retention_until
                )
            )
        return results

    def _remove(self, directory: Path, stream: StreamId, until: dt.datetime) -> RetentionResult:
        lock = _lock(directory)
        try:
            recover_stream(directory, stream, self.config.index_interval, self._key)
            return remove_segments(
                directory, stream, self.signer, until, self.config.index_interval, self._key
            )
        finally:
            os.close(lock)

    async def aclose(self) -> None:
        """Close every stream (shielded: completes even when cancelled)."""
        with trio.CancelScope(shield=True):
            for key in list(self._streams):
                await self.close_stream(key.warrant_handle, key.kind)
            await self.pool.aclose()
