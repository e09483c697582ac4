"""Kill -9 the server at random moments while tap batches are stored: every PDU once.

The tap journal is made durable by the log's writer thread just before it
writes a batch's records (the records' barrier), in the same turn as the
log's commit. Each round starts ``tap_ingest_child.py`` (the real server
in-process, batches through ``TapIngest.batch``) on the same data
directory, lets it acknowledge a random number of batches, and SIGKILLs it
after a random extra delay: before, between or after the journal's sync,
the segments' writes and their syncs. The next round resends from the
batch after the last one stored, as a tap does. At the end both warrants'
streams hold every PDU exactly once, in order, and nothing acknowledged
was lost.
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
from delivery_agency import UdpAgency
from delivery_support import Site, udp_endpoint
from tap_ingest_child import CASES, KEY, PER_CASE, batch_pdus

from mediation.log import ContentKind
from mediation.pdu import StreamId, StreamKind
from mediation.warrants.keys import RegistryKey

CHILD = Path(__file__).with_name("tap_ingest_child.py")
KILLS = 8
BATCHES = 200


def child(data: Path, batches: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(data), str(batches)], stdout=subprocess.PIPE, text=True
    )


def run_and_kill(data: Path, rng: random.Random) -> tuple[int, int]:
    """One child run killed at a random moment; (first batch it sent, last it had acked)."""
    process = child(data, BATCHES)
    try:
        assert process.stdout is not None
        word, first = process.stdout.readline().split()
        assert word == "start"
        acked = int(first) - 1
        for _ in range(rng.randint(1, 25)):
            line = process.stdout.readline()
            if not line.startswith("acked"):
                break
            acked = int(line.split()[1])
        time.sleep(rng.uniform(0, 0.004))  # a random instant in the next batch: the point
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    return int(first), acked


async def stored(site: Site, handles: dict[str, str]) -> dict[str, list[bytes]]:
    out = {}
    async with site.server() as server:
        for case, handle in handles.items():
            stream = server.intake.streams[StreamId(handle, StreamKind.CMCC)]  # type: ignore[union-attr]
            cursor, payloads = stream.cursor(0), []
            while cursor.position < stream.next_seq:
                payloads += [
                    r.payload for r in await cursor.read(256) if r.kind is ContentKind.CMCC
                ]
            out[case] = payloads
    return out


@pytest.mark.slow
def test_kill_9_while_tap_batches_are_stored_leaves_every_pdu_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RegistryKey, "generate", classmethod(lambda cls: RegistryKey(KEY)))
    site = Site(tmp_path)

    async def setup() -> dict[str, str]:
        agency = site.agency("AGENCY-A", udp_endpoint(await UdpAgency().bind()))
        return {case: site.warrant(agency, case).handle for case in CASES}

    handles = trio.run(setup)
    rng = random.Random(20261203)
    acked = 0
    for _ in range(KILLS):
        first, acked_now = run_and_kill(site.data, rng)
        assert first > acked, f"batch {acked} was acknowledged but is not stored"
        acked = max(acked, acked_now)
    finish = child(site.data, BATCHES)
    out, _ = finish.communicate(timeout=120)
    assert finish.returncode == 0 and out.rstrip().endswith("done"), out
    got = trio.run(stored, site, handles)
    for index, case in enumerate(CASES):
        want = [der for n in range(1, BATCHES + 1) for c, der in batch_pdus(n) if c == case]
        assert len(got[case]) == len(want) == BATCHES * PER_CASE, index
        assert got[case] == want  # nothing lost, nothing twice, in order
