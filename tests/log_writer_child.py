"""The writer the crash test kills: appends flat out and reports what is durable.

    python tests/log_writer_child.py DATA_DIR

Prints ``start NEXT_SEQ TORN_TAILS`` once the stream is open (recovered),
then ``durable SEQ`` each time a record is reported durable. Payloads are a
function of the sequence number (``payload_for``), so the test can check
every record byte for byte without being told what was written.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mediation.log import ContentKind, EvidenceLog, LogConfig, LogKey
from mediation.pdu import ClockStatus, StreamKind

HANDLE = "w-c4a5e0"
KEY = LogKey(hashlib.sha256(b"crash-test-log-key").digest())  # obviously fake
# Small segments and checkpoints so kills land in rolls and signatures too.
CONFIG = LogConfig(
    commit_records=16, checkpoint_records=40, segment_bytes=64 * 1024, index_interval=8
)


def payload_for(seq: int) -> bytes:
    """1..3000 bytes that only record ``seq`` has."""
    length = 1 + (seq * 7919) % 3000
    block = hashlib.sha256(b"crash-test-%d" % seq).digest()
    return (block * (length // 32 + 1))[:length]


async def main(data_dir: Path) -> None:
    async with EvidenceLog.open(data_dir, CONFIG, key=KEY) as log:
        stream = await log.stream(HANDLE, StreamKind.CMCC)
        print(f"start {stream.next_seq} {len(stream.stats.torn)}", flush=True)
        while True:
            seq = stream.next_seq
            appended = await stream.append(
                payload_for(seq), ContentKind.CMCC, ClockStatus.SYNCHRONISED
            )
            if seq % 5 == 0:
                await appended.durable()
                print(f"durable {appended.seq}", flush=True)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
