"""Kill -9 a writer at random moments; nothing it reported durable may be lost.

Each round starts ``log_writer_child.py`` on the same data directory, lets it
report a random number of durable records, kills it with SIGKILL after a
random extra delay, then reopens the log here (recovery) and checks every
record: all that were reported durable are there, every stored record is
byte-identical to what was appended, and the chain verifies.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from log_writer_child import CONFIG, HANDLE, KEY, payload_for

from mediation.log import EvidenceLog, load_public_key, verify_stream
from mediation.log.keys import public_key_path
from mediation.pdu import StreamKind

CHILD = Path(__file__).with_name("log_writer_child.py")
KILLS = 30


async def read_back(data: Path) -> tuple[int, int]:
    """Reopen (recovering), check every record; (records, torn tails cut)."""
    async with EvidenceLog.open(data, CONFIG, key=KEY) as log:
        stream = await log.stream(HANDLE, StreamKind.CMCC)
        cursor, seq = stream.cursor(0), 0
        while seq < stream.next_seq:
            for record in await cursor.read(512):
                assert record.seq == seq
                assert record.payload == payload_for(seq), f"record {seq} differs"
                seq += 1
        return stream.next_seq, len(stream.stats.torn)


def run_and_kill(data: Path, rng: random.Random) -> tuple[int, int]:
    """One child run; (highest sequence reported durable, its start sequence)."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(data)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        word, start, _torn = child.stdout.readline().split()
        assert word == "start"
        durable = int(start) - 1
        for _ in range(rng.randint(1, 60)):
            line = child.stdout.readline()
            if not line:
                break
            durable = int(line.split()[1])
        # A random instant within the next writes and syncs: the point of the test.
        time.sleep(rng.uniform(0, 0.004))
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    return durable, int(start)


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_reported_durable(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    data = tmp_path / "data"
    checked = torn = 0
    stored = 0
    for _ in range(KILLS):
        durable, start = run_and_kill(data, rng)
        assert start == stored  # the child resumed exactly where the last check ended
        stored, cut = trio.run(read_back, data)
        assert stored > durable, f"record {durable} was reported durable but is gone"
        checked += stored
        torn += cut
        report = verify_stream(
            data / "log" / HANDLE / "cmcc", load_public_key(public_key_path(data)), key=KEY
        )
        assert report.complete, report.line()
        assert report.records == stored
    print(
        f"\n{KILLS} kills, {stored} records stored, {checked} record reads checked, "
        f"{torn} torn tails cut"
    )
