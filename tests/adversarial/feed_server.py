"""A real mediation server process with traffic flowing, for the adversarial suite.

Until taps reach the server over a network link, this child runs the same
:class:`MediationServer` that ``mediate serve`` runs (its lock, control
socket, delivery, retrieval and signal handling) and feeds the sample
capture's target frames through the tap core into its ingest, at a bounded
rate, for a bounded time, as if captured now. It prints one JSON line when
it listens and one when the feed is over (how many PDUs it stored); then
it serves (delivery, retrieval, control) until SIGTERM, which stops the
server cleanly (final checkpoints, control socket removed) and the process
with exit status 0, as ``mediate serve`` does.

    python feed_server.py DATA_DIR KEY_FILE CONFIG HANDLE RATE SECONDS
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path

import trio

from mediation.evidence.pcap import PcapReader
from mediation.server.app import MediationServer
from mediation.server.config_file import load_config
from mediation.tap.replay import Tap
from mediation.warrants.keys import read_key_file
from mediation.warrants.registry import load_snapshot

SAMPLE = Path(__file__).resolve().parents[2] / "fixtures" / "sample" / "sample.pcap"


async def main(
    data_dir: Path, key_file: Path, config: Path, handle: str, rate: float, seconds: float
) -> None:
    """Serve, feed ``rate`` frames a second for ``seconds``, serve until SIGTERM."""
    key = read_key_file(key_file)
    [warrant] = [w for w in load_snapshot(data_dir, key).warrants if w.handle == handle]
    server = MediationServer(data_dir, key, config=load_config(config))
    with PcapReader.open(SAMPLE) as capture:
        frames = [packet.data for packet in capture]
    async with trio.open_nursery() as nursery:

        async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await server.run(task_status=task_status)
            nursery.cancel_scope.cancel()  # SIGTERM: the server has stopped cleanly

        await nursery.start(serve)
        listening = server.retrieval.listening if server.retrieval else None
        print(json.dumps({"ready": True, "retrieval": listening}), flush=True)
        stored = await feed(server, Tap.for_warrant(warrant), handle, frames, rate, seconds)
        print(json.dumps({"fed": True, "stored": stored}), flush=True)
        await trio.sleep_forever()


async def feed(
    server: MediationServer,
    tap: Tap,
    handle: str,
    frames: list[bytes],
    rate: float,
    seconds: float,
) -> int:
    """The capture's frames, over and over, ``rate`` a second; returns PDUs made durable."""
    receipts = []
    deadline = trio.current_time() + seconds
    next_at = trio.current_time()
    while trio.current_time() < deadline:
        for frame in frames:
            for pdu in tap.process(frame, dt.datetime.now(dt.UTC)):
                receipt = await server.ingest(handle, pdu.kind, pdu.der, pdu.time)
                if receipt is not None:
                    receipts.append(receipt)
            next_at += 1.0 / rate
            await trio.sleep_until(next_at)
    for receipt in receipts:
        await receipt.durable()
    return len(receipts)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    d, k, c, h, r, s = sys.argv[1:7]
    trio.run(main, Path(d), Path(k), Path(c), h, float(r), float(s))
