"""The tap's own work a PDU, in process: replayed frames to spooled batches.

    python bench/tap_client.py [--checkout DIR] [--frames N] [--rounds R] [--step S]

``bench/rig``'s 1,500-octet frames (a MAC target's, both ways; full
content: a header report and a CC APDU a frame) go to
``TapClient.frames`` in steps of ``--step`` frames sharing one capture
time (what the replay at a set rate hands over each 5 ms: 120 frames at
24,000 PDUs/s), then into batches written to a real spool (AES-GCM, one
synced write a batch, in a worker thread), as a tap does while its link
is down. So it is the tap's CPU a PDU without the TLS link, the acks and
start-up: the part of ``bench/tap_path.py``'s figure that grows with the
rate. CPU is the process's (both threads), best of ``--rounds``.

``--batch-pdus 80``: batches as small as a busy tap's whose server keeps up
(sealed at 64 KiB, docs/tap-link.md), so the cost a batch shows.
``--build-only``: the records only (parse, match, build, encode), no batches.
Also printed: how long each step's ``frames`` call held the loop (the
seal and spool write of a batch included), the capture's wait.
``--checkout DIR`` measures another checkout's code (an export of the
base, say) with this interpreter: run it once per checkout and compare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--frames", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--step", type=int, default=120)
    parser.add_argument(
        "--batch-pdus", type=int, default=1024, help="at most this many PDUs a batch"
    )
    parser.add_argument(
        "--build-only", action="store_true", help="frames to tap-link records only: no batches"
    )
    args = parser.parse_args()
    root = args.checkout.resolve()
    sys.path[:0] = [str(root), str(root / "bench")]
    import trio
    from rig.capture import frame

    from mediation.pdu import taplink as T
    from mediation.tap.link import TapClient, build_tap
    from mediation.tap.spool import TapSpool

    try:
        from mediation.tap.spool_sync import SpoolSyncer
    except ImportError:  # a checkout before the sync thread: each append synced in a worker
        SpoolSyncer = None  # type: ignore[assignment,misc]

    now = dt.datetime.now(dt.UTC)
    warrant = T.TapWarrant(
        handle="w-0a0001",
        case_id="CASE-0001",
        iap="IAP-0001",
        content="full",
        start=now - dt.timedelta(days=1),
        end=now + dt.timedelta(days=1),
        targets=("02:00:5e:00:53:01",),
    )
    frames = [frame(i) for i in range(4096)]

    async def one_round(directory: Path) -> tuple[float, int, int]:
        spool = TapSpool.open(directory, bytes(32), 1 << 30, reserve=True)
        client = TapClient(None, spool, ("192.0.2.1", 1), None, epoch=1)  # type: ignore[arg-type]
        client.taps = [build_tap(warrant, 1)]
        client.batch_pdus = args.batch_pdus  # 80: the batches of a link that keeps up
        if args.build_only:  # parse, match, build and encode; the records dropped

            async def add_records(records: list) -> None:  # type: ignore[type-arg]
                client.counters.pdus += len(records)

            client.add_records = add_records  # type: ignore[method-assign]
        syncer = None
        if SpoolSyncer is not None:  # as while the link's timer runs (run_timer)
            syncer = SpoolSyncer(spool, trio.lowlevel.current_trio_token())
            client._syncer = syncer
        started = time.process_time()
        for i in range(0, args.frames, args.step):
            when = dt.datetime.now(dt.UTC)
            step = [(frames[(i + k) % len(frames)], when) for k in range(args.step)]
            began = time.perf_counter()
            await client.frames(step)
            steps.append(time.perf_counter() - began)
        await client.flush()
        if syncer is not None:
            await trio.to_thread.run_sync(spool.sync_written)
            syncer.stop()
        cpu = time.process_time() - started
        spool.close()
        return cpu, client.counters.pdus, client.counters.batches

    results = []
    steps: list[float] = []  # wall time of each step's frames() call: the capture loop held
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="tap-client-") as work:
            results.append(trio.run(one_round, Path(work)))
    cpu, pdus, batches = min(results)
    print(
        f"{root.name}: {cpu / pdus * 1e6:.2f} us/PDU ({pdus:,} PDUs in {batches} batches; "
        f"CPU {cpu:.2f} s, best of {args.rounds})"
    )
    steps.sort()
    print(
        f"    a step's frames() held the loop: median {steps[len(steps) // 2] * 1e3:.2f} ms, "
        f"p99 {steps[int(len(steps) * 0.99)] * 1e3:.2f}, max {steps[-1] * 1e3:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
