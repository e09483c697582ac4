"""Tunables of the evidence log, with the measurements behind the defaults.

Figures are from ``bench/log.py --sweep`` on the development machine (2
shared vCPUs, ext4 on virtio, fdatasync of a small write 0.2 ms); the sweep
and the reasoning are in ``docs/evidence-log.md``.
"""

from __future__ import annotations

import dataclasses

from mediation.errors import UsageError

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """How the log batches, checkpoints, splits and buffers.

    Attributes:
        commit_records: fdatasync once this many records are waiting (N).
        commit_interval: ... or once the oldest waiting record is this many
            seconds old (T), whichever comes first.
        checkpoint_records: a signed checkpoint every this many records ...
        checkpoint_interval: ... or this many seconds (1000 / 1 s: the ETSI figures).
        segment_bytes: a new segment file starts past this size.
        ring_bytes: recent records kept in memory for readers, per stream.
        max_pending_bytes: appended but not yet durable; past it, appends wait.
        max_payload_bytes: the largest payload accepted.
        index_interval: the sparse index keeps one offset per this many records.
        retry_interval: seconds between attempts to store after a failure.
        cursor_persist_interval: named cursor positions are written at most
            this often (seconds); a crash costs at most this much redelivery.
        checkpoint_memory: how many recent checkpoints readers get from memory.
        writer_threads: threads that write and fdatasync, shared by all streams.
        ring_budget: the rings of all open streams together hold at most this.
        open_segments: at most this many segment files open for writing.
    """

    # The log is CPU-bound (about 4.2 µs a 1500-byte record here, 1.6 µs of
    # it SHA-256 and CRC-32), so throughput is flat from N = 64 to 1024
    # (218k..250k records/s in the sweep): N only bounds how long a record
    # waits for its batch at high rates (256 records fill in about 1 ms at
    # full speed, inside T) and how many syncs that costs (at most ~1000/s).
    # When the disk is slower, the writer thread merges whatever queued
    # during the last sync, so batches grow by themselves.
    commit_records: int = 256
    # A lone record waits at most T for its batch. At 1000 records/s,
    # append-to-durable latency p50/p99 was 1.44/2.35 ms with T = 1 ms,
    # 1.62/3.52 ms with 2 ms and 3.23/6.96 ms with 5 ms: 2 ms costs little
    # latency and caps a trickling stream at 500 syncs/s.
    commit_interval: float = 0.002
    checkpoint_records: int = 1000
    checkpoint_interval: float = 1.0
    segment_bytes: int = 64 * MIB
    ring_bytes: int = 16 * MIB
    max_pending_bytes: int = 32 * MIB
    max_payload_bytes: int = 4 * MIB
    index_interval: int = 128
    retry_interval: float = 1.0
    cursor_persist_interval: float = 1.0
    checkpoint_memory: int = 64
    # Writer threads shared by all streams: each write + fdatasync releases
    # the GIL, so a few overlap syncs of different streams; more only add
    # contention (docs/architecture.md, "Thousands of intercepts").
    writer_threads: int = 4
    # All streams' rings together: each stream keeps min(ring_bytes,
    # ring_budget / open streams), so memory does not grow with warrants
    # (2,000 streams: 256 KiB each, about 170 records of 1500 bytes; a
    # reader further behind reads the segments).
    ring_budget: int = 512 * MIB
    # Segment files kept open for writing; past it the least recently
    # written is closed and reopened on its next write (one open(2)).
    open_segments: int = 256

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise UsageError(field.name, f"must be a positive number, got {value!r}")
        if self.segment_bytes < 4096:
            raise UsageError("segment_bytes", "must be at least 4096")
        if self.max_payload_bytes > 64 * MIB:
            raise UsageError("max_payload_bytes", "must be at most 64 MiB")
