"""Capture-to-disk delivery: an agency endpoint that is a directory (``agency add --files``).

Per warrant stream of the agency, a task is a cursor into the log that
writes the records into files under ``DIR/HANDLE/`` (``capture_files.py``
for the formats), rotated every ``[files] rotate_seconds`` or
``rotate_bytes``, whichever comes first. A closed file has its
``.sha256`` and a signed line in ``DIR/HANDLE/manifest.jsonl``.

The manifest is the persisted position: after a restart a stream goes on
after the last record of its last closed file. The file that was open
when the server stopped is rebuilt from the log (its bytes are a function
of the records); if the log no longer holds them (retention overtook),
what the file holds is entered, marked incomplete.

A stream that is taken away (warrant purged, endpoint removed) or a server
that stops closes its open set first. A write that fails (a full disk) is
logged and retried after a delay, from the manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from pathlib import Path

import trio

from mediation.evidence.manifest import ManifestError, Signer
from mediation.lea.files import SYNC_OCTETS
from mediation.log import Checkpoint, Cursor, LogRecord, RecordsUnavailable, StreamLog
from mediation.pdu import StreamId
from mediation.server.capture_files import OpenSet, WarrantFiles, parse_name
from mediation.server.capture_recover import enter_incomplete
from mediation.server.config import FilesConfig
from mediation.server.link import backoff_delays
from mediation.server.status import EndpointRef, StatusRow
from mediation.warrants.model import Endpoint

log = logging.getLogger("mediation.server.delivery")
BATCH = 256


@dataclasses.dataclass
class _FileStream:
    sid: StreamId
    log: StreamLog
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    written: int | None = None  # one past the last record written into a file
    closed: int | None = None  # one past the last record in a closed (manifest) file
    files_closed: int = 0
    current: OpenSet | None = None


class FilesWorker:
    """Capture-to-disk for one ``files`` endpoint of one agency."""

    transport = "files"

    def __init__(
        self, ref: EndpointRef, endpoint: Endpoint, config: FilesConfig, signer: Signer
    ) -> None:
        self.ref = ref
        self.endpoint = endpoint
        self.config = config
        self._signer = signer
        self.root = Path(endpoint.host)
        self._streams: dict[StreamId, _FileStream] = {}
        self._warrants: dict[str, WarrantFiles] = {}
        self._nursery: trio.Nursery | None = None
        self._opening = trio.Lock()
        self.state = "waiting"
        self.last_error: str | None = None
        self.errors = 0

    def set_streams(self, streams: dict[StreamId, StreamLog]) -> None:
        """Write exactly these streams (a stream taken away closes its open files)."""
        for sid in list(self._streams):
            if sid not in streams:
                self._streams.pop(sid).scope.cancel()
        for sid, stream in streams.items():
            if sid not in self._streams:
                state = self._streams[sid] = _FileStream(sid, stream)
                if self._nursery is not None:
                    self._nursery.start_soon(self._stream_task, state)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write every stream; until cancelled."""
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for state in self._streams.values():
                    nursery.start_soon(self._stream_task, state)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for files in self._warrants.values():
                files.manifest.close()
            self._warrants.clear()

    async def _stream_task(self, state: _FileStream) -> None:
        delays = backoff_delays(1.0, 60.0)
        with state.scope:
            while True:
                try:
                    await self._write_stream(state)
                except (OSError, ManifestError) as exc:
                    self._error(state, exc)
                await trio.sleep(delays(False))
        # Taken away (its open set is closed by now): a warrant without
        # streams here keeps no manifest open (one descriptor per warrant).
        handle = state.sid.warrant_handle
        if not any(sid.warrant_handle == handle for sid in self._streams):
            files = self._warrants.pop(handle, None)
            if files is not None:
                files.manifest.close()

    def _error(self, state: _FileStream, exc: Exception) -> None:
        self.errors += 1
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.state, self.last_error = "error", problem
        # The handle only: the directory's path is the agency's business.
        log.error("%s: %s: cannot write capture files: %s", self.ref.label, state.sid, problem)
        if state.current is not None:
            with contextlib.suppress(OSError):
                state.current.abandon()
            state.current = None

    def _warrant(self, handle: str) -> WarrantFiles:
        """The warrant's files, with every close a crash or an error cut short finished."""
        files = self._warrants.get(handle)
        if files is None:
            files = self._warrants[handle] = WarrantFiles(self.root, handle, self._signer)
        files.roll_forward()
        return files

    async def _write_stream(self, state: _FileStream) -> None:
        sid = state.sid
        async with self._opening:  # one manifest writer per warrant, whichever stream asks
            files = await trio.to_thread.run_sync(self._warrant, sid.warrant_handle)
        position, target, skip = files.resume(sid.kind, state.log.first_seq)
        state.written = state.closed = position
        leftovers = files.leftovers(sid.kind)
        if position < state.log.first_seq:
            # The log lost the records of the open file (retention): keep what it holds.
            position = state.written = state.closed = state.log.first_seq
            target, skip = None, frozenset()
        for part in leftovers:
            parsed = parse_name(part.name[1 : -len(".part")])
            if parsed is not None and parsed[1] != position:  # at `position`: rebuilt below
                await trio.to_thread.run_sync(enter_incomplete, files, part)
        cursor = state.log.cursor(position)
        self.state = "writing"
        try:
            await self._copy(state, files, cursor, target, skip)
        finally:
            if state.current is not None and state.current.count > 0:
                current, state.current = state.current, None
                current.finish(files.manifest)  # blocking, even when cancelled
                state.closed = current.last_seq + 1
            elif state.current is not None:
                state.current.abandon()
                state.current = None

    async def _copy(
        self,
        state: _FileStream,
        files: WarrantFiles,
        cursor: Cursor,
        target: int | None,
        skip: frozenset[str],
    ) -> None:
        """Read records and write them into rotating sets; until cancelled.

        Only the wait for records is bounded by the open set's age: a batch
        once read is written whole, so no record is read and then dropped.
        """
        deadline = math.inf
        while True:
            items: list[Checkpoint | LogRecord] | None = None
            with trio.move_on_at(deadline):
                try:
                    items = await cursor.read(BATCH)
                except RecordsUnavailable as exc:  # retention overtook: go on from there
                    cursor.seek(exc.first_available)
                    items = []
                    target = None
                    if state.current is not None:
                        await self._rotate(state, files)
            if items is None or trio.current_time() >= deadline:
                if state.current is not None:
                    await self._rotate(state, files)
                deadline = math.inf
                continue
            records = [item for item in items if not isinstance(item, Checkpoint)]
            done = 0
            while done < len(records):
                if state.current is None:
                    first = records[done].seq
                    state.current = OpenSet(files.directory, state.sid, first, skip)
                    skip = frozenset()
                    # A set finishing one already in the manifest ends where that one did.
                    age = math.inf if target is not None else self.config.rotate_seconds
                    deadline = trio.current_time() + age
                # In a thread: a JSON view costs up to a millisecond a record
                # (the reference decoder), which must not hold up the event loop.
                done = await trio.to_thread.run_sync(self._fill, state, records, done, target)
                last = records[done - 1].seq
                if state.current.size >= self.config.rotate_bytes or last == target:
                    target = None
                    await self._rotate(state, files)
                    deadline = math.inf

    def _fill(
        self, state: _FileStream, records: list[LogRecord], start: int, target: int | None
    ) -> int:
        """Write records from ``start`` until the set is full or ends at ``target`` (blocking).

        Returns:
            The index after the last record written.
        """
        current = state.current
        assert current is not None
        for index in range(start, len(records)):
            record = records[index]
            current.write(record)
            state.written = record.seq + 1
            if current.size >= self.config.rotate_bytes or record.seq == target:
                current.flush(SYNC_OCTETS)
                return index + 1
        current.flush(SYNC_OCTETS)
        return len(records)

    async def _rotate(self, state: _FileStream, files: WarrantFiles) -> None:
        current, state.current = state.current, None
        assert current is not None
        # Shielded: a rotation deadline or a stop must not leave the
        # bookkeeping behind a set that the thread did close.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(current.finish, files.manifest)
        state.closed = current.last_seq + 1
        state.files_closed += len(current.files)

    def deliver_from_memory(self, sid: StreamId, record: LogRecord) -> None:
        """Held notices reach the files from the log, once it stores them."""

    def rows(self) -> list[StatusRow]:
        out = []
        for sid, state in self._streams.items():
            appended = state.log.next_seq
            # Not started yet: nothing of this run written so far.
            written = state.written if state.written is not None else state.log.first_seq
            closed = state.closed if state.closed is not None else written
            out.append(
                StatusRow(
                    handle=sid.warrant_handle,
                    stream=sid.kind.value,
                    endpoint=self.ref,
                    appended=appended,
                    delivered=written,
                    acknowledged=closed,
                    lost=None,
                    backlog=max(0, appended - closed),
                    state=self.state,
                    last_error=self.last_error,
                )
            )
        return out
