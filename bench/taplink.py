"""Tap link throughput: PDUs/s into the evidence log over TLS on loopback.

    python bench/taplink.py [--pdus N] [--batch B] [--rounds R] [--checkout DIR]
    python bench/taplink.py --pace 70 --batch 15 --pdus 15000   light load: CPU per batch

Sets up a data directory (registry, CAs, a tap, a full-content warrant on
the sample capture's target MAC) in a temporary directory, runs the real
server (``MediationServer``, with its TLS tap listener) in this process,
and a sender in a child process: the sample capture's PDUs, built once by
the tap core and repeated to ``--pdus``, sent as batches of ``--batch``
over the tap link with the tap's credentials (window of 8 batches).
Time runs from the first batch sent to the last acknowledgement, and an
acknowledgement is sent only once every PDU of its batch is fdatasynced:
so the figure is PDUs/s *durable in the log*, every PDU checked (case
identity, warrant, content level).

Baseline in the same run: ``MediationServer.ingest`` called in-process
for the same PDUs (what the demo did before the tap link), until all are
durable. Each figure is the best of ``--rounds``; the goal for the link
is 50,000 PDUs/s. Bounded: each round stops after 60 s.

``--pace N`` sends a batch every 1/N s instead (light load, as a tap at
1,000 PDUs/s sends ~50-90 batches of ~15 PDUs a second) and reports the
server's CPU per batch: the fixed cost of a batch in the ingress and the
log (no agencies here, so no delivery), compared across checkouts with
``--checkout``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if "--checkout" in sys.argv[:-1]:  # the server of another checkout (old vs new in one run)
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--checkout") + 1]).resolve()))

import trio

from mediation.pdu import taplink as T
from mediation.protocol.taplink import TapLinkTap

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "fixtures" / "sample" / "sample.pcap"
TARGET_MAC = "02:00:5e:00:53:01"
CASE = "CASE-TEST-0001"
LIMIT = 60.0
CPU_US: list[float] = []  # server CPU (all its threads) per PDU, per link round
ACK_MS: list[float] = []  # paced: each batch's time from its send to its ack, ms
WINDOW = 8  # batches in flight, as `mediate tap run` (protocol.taplink.WINDOW)


def setup(base: Path) -> tuple[Path, object, str, Path]:
    """Data dir, registry key, warrant handle, tap credentials file."""
    from rig.registry import bench_registry

    from mediation.warrants.model import CaseDetails, ContentLevel, Source, Target, TargetKind
    from mediation.warrants.operations import add_warrant, register_tap

    credentials = base / "edge-1.tap"
    with bench_registry(base) as b:
        register_tap(
            b.registry, b.taps, "edge-1", credentials, "127.0.0.1:0", b.now, b.server_ca.ca_pem
        )
        details = CaseDetails(
            CASE, (Target(TargetKind.MAC, TARGET_MAC),), (Source("tap", "edge-1"),), "IAP-TEST"
        )
        start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
        warrant = add_warrant(
            b.registry, b.agency, details, ContentLevel.FULL, start,
            b.now + dt.timedelta(days=1), b.now,
        )  # fmt: skip
    return b.data, b.key, warrant.handle, credentials


def sample_pdus(count: int) -> list[tuple[str, dt.datetime, bytes]]:
    """The sample's PDUs (built by the tap core once), repeated to ``count``."""
    from mediation.evidence.pcap import PcapReader
    from mediation.tap.builder import PDUBuilder
    from mediation.tap.replay import Tap
    from mediation.tap.targets import TargetMatcher
    from mediation.warrants.model import ContentLevel, Target, TargetKind

    tap = Tap(
        "w-bench", TargetMatcher([Target(TargetKind.MAC, TARGET_MAC)]),
        PDUBuilder(CASE, "IAP-TEST", ContentLevel.FULL),
    )  # fmt: skip
    base: list[tuple[str, dt.datetime, bytes]] = []
    with PcapReader.open(SAMPLE) as reader:
        for packet in reader:
            base += [(p.kind, p.time, p.der) for p in tap.process(packet.data, packet.time)]
    return [base[n % len(base)] for n in range(count)]


def sender(
    credentials: Path,
    port: int,
    count: int,
    batch: int,
    out: multiprocessing.Queue,
    pace: float = 0.0,
) -> None:
    """The child: send ``count`` PDUs in batches; put the seconds to the last ack (and,
    paced, each batch's milliseconds from its send to its ack)."""
    from mediation.tap.link import client_context
    from mediation.warrants.authority import read_bundle

    pdus = sample_pdus(count)
    payloads = [T.encode_pdus(pdus[i : i + batch]) for i in range(0, count, batch)]
    creds = read_bundle(credentials)
    lags: list[float] = []

    async def run() -> float:
        context = client_context(creds)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
        machine = TapLinkTap(T.TapHello(creds.name, 1, 0), trio.current_time(), window=WINDOW)
        await stream.send_all(machine.data_to_send())
        while machine.last_stored is None:
            machine.receive_data(await stream.receive_some(1 << 20), trio.current_time())
        next_id, acked, began = machine.last_stored + 1, 0, time.perf_counter()
        if pace:
            acked = await _paced(stream, machine, payloads, next_id, pace, lags)
        else:
            queue = list(payloads)
            with trio.move_on_after(LIMIT):
                while acked < len(payloads):
                    while queue and machine.can_send():
                        machine.send_batch(next_id, queue.pop(0), trio.current_time())
                        next_id += 1
                    await stream.send_all(machine.data_to_send())
                    data = await stream.receive_some(1 << 20)
                    for message in machine.receive_data(data, trio.current_time()):
                        acked += isinstance(message, T.BatchAck)
        elapsed = time.perf_counter() - began
        await stream.aclose()
        return elapsed if acked == len(payloads) else float("inf")

    out.put((trio.run(run), lags))  # type: ignore[attr-defined]


async def _paced(
    stream: trio.SSLStream,
    machine: TapLinkTap,
    payloads: list[bytes],
    next_id: int,
    pace: float,
    lags: list[float],
) -> int:
    """Send ``payloads`` one every 1/pace s (as the window allows); the acks received.

    Each batch's time from its send to its ack goes to ``lags`` (ms).

    A reader task takes the acks (a receive is never cancelled half-way);
    sends are serialised by a lock.
    """
    acked, lock, room = 0, trio.Lock(), trio.Event()
    sent: dict[int, float] = {}

    async def flush() -> None:
        async with lock:
            data = machine.data_to_send()
            if data:
                await stream.send_all(data)

    async def reader(done: trio.Event) -> None:
        nonlocal acked, room
        while acked < len(payloads):
            data = await stream.receive_some(1 << 20)
            if not data:
                return
            now = time.perf_counter()
            for message in machine.receive_data(data, trio.current_time()):
                if isinstance(message, T.BatchAck):
                    acked += 1
                    lags.append((now - sent.pop(message.batch_id, now)) * 1e3)
            room.set()
            await flush()  # keepalive answers
        done.set()

    with trio.move_on_after(LIMIT):
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, done)
            due = trio.current_time()
            for payload in payloads:
                await trio.sleep_until(due)
                due += 1 / pace
                while not machine.can_send():
                    room = trio.Event()
                    await room.wait()
                machine.send_batch(next_id, payload, trio.current_time())
                sent[next_id] = time.perf_counter()
                next_id += 1
                await flush()
            await done.wait()
            nursery.cancel_scope.cancel()
    return acked


async def server_round(
    data: Path, key: object, credentials: Path, count: int, batch: int, pace: float = 0.0
) -> float:
    from mediation.server.app import MediationServer
    from mediation.server.config import RetrievalConfig, ServerConfig, TapsConfig

    config = ServerConfig(
        retrieval=RetrievalConfig(listen=""), taps=TapsConfig(tls_listen="127.0.0.1:0")
    )
    server = MediationServer(data, key, config=config)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        assert server.taps is not None and server.taps.tls_listening is not None
        port = server.taps.tls_listening[1]
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no trio inherited
        out = spawn.Queue()
        child = spawn.Process(target=sender, args=(credentials, port, count, batch, out, pace))
        child.start()
        cpu = time.process_time()
        elapsed, lags = await trio.to_thread.run_sync(lambda: out.get(timeout=LIMIT + 60))
        ACK_MS[:] = lags
        CPU_US.append((time.process_time() - cpu) / count * 1e6)
        await trio.to_thread.run_sync(child.join)
        refused = dict(server.taps.ingest.refused)
        nursery.cancel_scope.cancel()
    assert not refused, refused
    return count / elapsed


async def baseline_round(data: Path, key: object, handle: str, count: int) -> float:
    """``MediationServer.ingest`` in-process, one await per PDU, until all durable."""
    from mediation.server.app import MediationServer
    from mediation.server.config import RetrievalConfig, ServerConfig, TapsConfig

    pdus = sample_pdus(count)
    config = ServerConfig(retrieval=RetrievalConfig(listen=""), taps=TapsConfig(tls_listen=""))
    server = MediationServer(data, key, config=config)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        began, last = time.perf_counter(), None
        for kind, when, der in pdus:
            last = await server.ingest(handle, kind, der, when) or last
        assert last is not None
        await last.durable()
        elapsed = time.perf_counter() - began
        nursery.cancel_scope.cancel()
    return count / elapsed


def profile(args: argparse.Namespace) -> int:
    """The server side of one tap link round under cProfile: where a PDU's time goes."""
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory(prefix="bench-taplink-", dir=args.dir or Path.cwd()) as tmp:
        data, key, _handle, credentials = setup(Path(tmp))
        profiler = cProfile.Profile()
        profiler.enable()
        rate = trio.run(server_round, data, key, credentials, args.pdus, args.batch)
        profiler.disable()
    print(f"tap link over TLS under cProfile: {rate:.0f} PDUs/s; per PDU, by own time:")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime")
    for func, (_cc, calls, tottime, cumtime, _callers) in list(
        sorted(stats.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
    )[:25]:
        where = f"{Path(func[0]).name}:{func[1]} {func[2]}"
        print(f"  {tottime / args.pdus * 1e6:7.2f} µs own {cumtime / args.pdus * 1e6:7.2f} µs cum "
              f"{calls:9d} calls  {where}")  # fmt: skip
    return 0


def paced(args: argparse.Namespace) -> int:
    """Light load: ``--pace`` batches/s of ``--batch`` PDUs; the server's CPU per batch."""
    from mediation.pdu import schema

    schema.compiled()  # the server's first notice compiles it: not a batch's cost
    T.spec()  # nor the tap link's, at the tap's hello
    batches = -(-args.pdus // args.batch)
    with tempfile.TemporaryDirectory(prefix="bench-taplink-", dir=args.dir or Path.cwd()) as tmp:
        data, key, _handle, credentials = setup(Path(tmp))
        for _ in range(args.rounds):
            vol, before = _switches(), resource.getrusage(resource.RUSAGE_SELF)
            rate = trio.run(server_round, data, key, credentials, args.pdus, args.batch, args.pace)
            if not rate:
                print(f"round incomplete (not all acknowledged within {LIMIT:.0f} s)", flush=True)
                continue
            per_batch = CPU_US[-1] * args.pdus / batches
            woke = (_switches() - vol) / batches
            after = resource.getrusage(resource.RUSAGE_SELF)  # the round's, set-up included
            user = (after.ru_utime - before.ru_utime) / batches * 1e6
            system = (after.ru_stime - before.ru_stime) / batches * 1e6
            lags = sorted(ACK_MS)
            print(f"{batches} batches of {args.batch} at {args.pace:g}/s: server {per_batch:,.0f} "
                  f"us of CPU and {woke:.1f} wake-ups per batch (user {user:,.0f}, "
                  f"system {system:,.0f} us); send to ack med {lags[len(lags) // 2]:.2f} "
                  f"p90 {lags[len(lags) * 9 // 10]:.2f} p99 {lags[len(lags) * 99 // 100]:.2f} ms",
                  flush=True)  # fmt: skip
    print(f"server from {Path(T.__file__).resolve().parents[2]}")
    return 0


def _switches() -> int:
    """Voluntary context switches of every thread of this process so far (not the sender's)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pdus", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="filesystem to test (default: cwd)")
    parser.add_argument(
        "--profile", action="store_true", help="one tap link round under cProfile (server side)"
    )
    parser.add_argument("--checkout", type=Path, default=None, help="run this checkout's server")
    parser.add_argument("--pace", type=float, default=0.0, help="batches/s (light load)")
    args = parser.parse_args(argv)
    if args.profile:
        return profile(args)
    if args.pace:
        return paced(args)
    with tempfile.TemporaryDirectory(prefix="bench-taplink-", dir=args.dir or Path.cwd()) as tmp:
        data, key, handle, credentials = setup(Path(tmp))
        links, bases = [], []
        for _ in range(args.rounds):
            links.append(trio.run(server_round, data, key, credentials, args.pdus, args.batch))
            bases.append(trio.run(baseline_round, data, key, handle, args.pdus))
    print(f"tap link bench: {args.pdus} PDUs (sample.pcap's, repeated), batches of {args.batch}, "
          f"best of {args.rounds}, on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"server from {Path(T.__file__).resolve().parents[2]}")
    print(f"tap link over TLS, durable in the log: {max(links):10.0f} PDUs/s (goal 50,000)")
    print(f"  server CPU per PDU (all threads):      {min(CPU_US):10.1f} µs (best round)")
    print(f"in-process MediationServer.ingest:       {max(bases):10.0f} PDUs/s (baseline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
