"""The evidence log: every PDU on disk before anything else, provably unaltered.

One append-only log per warrant stream (CmII, CmCC) under
``DATA_DIR/log/<warrant-handle>/<cmii|cmcc>/``, in segment files named by
their first sequence number. Each record is framed with its length and
CRC-32, and carries its sequence number (contiguous from 0, assigned at
append), receive time, content kind and clock status. Every record extends
a SHA-256 hash chain; a checkpoint record every 1000 records or 1 s signs
the chain with the server's Ed25519 key. Records are stored encrypted
(AES-256-GCM) under the log key, which is derived from the registry key and
so lives outside the data directory. Formats: ``format``, ``crypto`` and
``docs/evidence-log.md``.

Writing (trio)::

    key = LogKey(registry_key.derive(LOG_KEY_PURPOSE))
    async with EvidenceLog.open(data_dir, LogConfig(), key=key) as log:
        stream = await log.stream("w-3f9a1c", StreamKind.CMII)
        appended = await stream.append(der, ContentKind.CMII, clock, received)
        await appended.durable()          # fdatasynced (group commit)
        stream.append_nowait(...)         # the same, never waits (ingest)
        stream.state                      # StorageState: healthy, since, reason
        await log.apply_retention("w-3f9a1c", now, retention_until(end))

Reading (trio)::

    cursor = stream.cursor(start_seq)          # or stream.named_cursor("lea-1")
    records = await cursor.read(1024)          # durable records only; waits
    record = await cursor.next()               # or: async for record in cursor
    cursor.ack(next_expected)                  # named: persisted, resumed from
    stream.cursor(seq, checkpoints=True)       # Checkpoint items too, in log order
    stream.latest_checkpoint.to_pdu()          # -> mediation.pdu.ChainCheckpoint

Verifying (plain functions, no trio; ``mediate log verify``)::

    report = verify_stream(stream_directory, public_key, key=key)
    reports = verify_path(data_dir_or_any_log_directory, public_key, key)
    report.ok, report.complete, report.fault.seq, report.line()
"""

from mediation.log.config import LogConfig
from mediation.log.crypto import LOG_KEY_PURPOSE, LogKey, LogKeyRequired, WrongLogKey
from mediation.log.cursor import Cursor
from mediation.log.errors import (
    LogClosed,
    LogCorrupted,
    LogError,
    RecordsUnavailable,
    StorageUnavailable,
)
from mediation.log.evidence_log import EvidenceLog, stream_dir
from mediation.log.format import Checkpoint, ContentKind, LogRecord
from mediation.log.keys import LogSigner, load_or_create_signer, load_public_key
from mediation.log.recovery import TornTail
from mediation.log.retention import RetentionResult, retention_until
from mediation.log.state import Appended, StorageState, StreamStats
from mediation.log.stream import StreamLog
from mediation.log.verify import Fault, StreamReport, verify_path, verify_stream

__all__ = [
    "LOG_KEY_PURPOSE",
    "Appended",
    "Checkpoint",
    "ContentKind",
    "Cursor",
    "EvidenceLog",
    "Fault",
    "LogClosed",
    "LogConfig",
    "LogCorrupted",
    "LogError",
    "LogKey",
    "LogKeyRequired",
    "LogRecord",
    "LogSigner",
    "RecordsUnavailable",
    "RetentionResult",
    "StorageState",
    "StorageUnavailable",
    "StreamLog",
    "StreamReport",
    "StreamStats",
    "TornTail",
    "WrongLogKey",
    "load_or_create_signer",
    "load_public_key",
    "retention_until",
    "stream_dir",
    "verify_path",
    "verify_stream",
]
