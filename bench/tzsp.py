"""TZSP ingest throughput: 1,500-octet frames a router mirrors, into the evidence log.

    python bench/tzsp.py [--rates 20000,30000,40000] [--seconds 2] [--dir PATH]

Sets up a data directory (registry, an agency that never answers, a
full-content warrant on the address 192.0.2.10 whose source is
``tzsp:127.0.0.1``) in a temporary directory and runs the real server
(``MediationServer`` with its ``[tzsp]`` listener) in this process. A child
process sends TZSP datagrams as a MikroTik router does (version 1, type 0,
Ethernet, END), each carrying a 1,500-octet Ethernet frame of the target's
UDP traffic (16 flows, both directions), paced at each rate for
``--seconds``. A router's mangle rule mirrors only the subscriber, so every
frame is a target frame: each becomes a header report (CmII) and a content
PDU (CmCC), checked and appended to the log like a tap's.

A rate passes when the server's socket dropped nothing (the kernel's
counter in ``/proc/net/udp``) and every frame's CmCC is durable in the log;
the figure is the highest rate that passed (goal: 30,000 frames/s).

Baseline in the same run: a bare Python loop of ``socket.recv`` (no
``recvmmsg``, no decoding, nothing stored) in a child process, at the same
rates: the highest rate it takes with no socket drops. Bounded: every
round ends at most 30 s after its sender.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import resource
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if "--checkout" in sys.argv[:-1]:  # the server of another checkout (old vs new in one run)
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--checkout") + 1]).resolve()))

import trio

CASE = "CASE-TEST-0001"
TARGET = "192.0.2.10"
PEER = "198.51.100.1"
FRAME_OCTETS = 1500
FLOWS = 16
BURST = 64  # datagrams sent back to back between pacing checks
RECEIVE_BUFFER = 8 * 2**20
ROUND_LIMIT = 30.0


def setup(base: Path) -> tuple[Path, object, str]:
    """Data dir, registry key, warrant handle."""
    from rig.registry import bench_registry

    from mediation.warrants.model import CaseDetails, ContentLevel, Source, Target, TargetKind
    from mediation.warrants.operations import add_warrant

    with bench_registry(base) as b:
        details = CaseDetails(
            CASE, (Target(TargetKind.ADDRESS, TARGET),), (Source("tzsp", "127.0.0.1"),),
            "IAP-TEST",
        )  # fmt: skip
        warrant = add_warrant(
            b.registry, b.agency, details, ContentLevel.FULL,
            b.now - dt.timedelta(hours=1), b.now + dt.timedelta(days=1), b.now,
        )  # fmt: skip
    return b.data, b.key, warrant.handle


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF


def frames() -> list[bytes]:
    """1,500-octet Ethernet frames of the target's UDP flows, both directions."""
    from mediation.protocol.tzsp import encode_tzsp

    out = []
    for flow in range(FLOWS):
        for outbound in (True, False):
            src, dst = (TARGET, PEER) if outbound else (PEER, TARGET)
            ports = (40000 + flow, 443) if outbound else (443, 40000 + flow)
            payload = bytes(FRAME_OCTETS - 14 - 20 - 8)
            udp = struct.pack("!HHHH", *ports, 8 + len(payload), 0) + payload
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), flow, 0, 64, 17, 0,
                socket.inet_aton(src), socket.inet_aton(dst),
            )  # fmt: skip
            ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
            macs = bytes.fromhex("02005e00530202005e005301")
            ether = (macs if outbound else macs[6:] + macs[:6]) + b"\x08\x00"
            out.append(encode_tzsp(ether + ip + udp))
    return out


def sender(port: int, rate: int, seconds: float, out: multiprocessing.Queue) -> None:
    """The router: ``rate`` datagrams a second for ``seconds``; puts the number sent."""
    datagrams = frames()
    total = int(rate * seconds)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        began, sent = time.perf_counter(), 0
        while sent < total:
            for _ in range(min(BURST, total - sent)):
                try:
                    sock.send(datagrams[sent % len(datagrams)])
                except ConnectionRefusedError:  # an ICMP error queued on the socket: go on
                    continue
                sent += 1
            ahead = began + sent / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
    out.put(sent)


def _send(port: int, rate: int, seconds: float) -> multiprocessing.Process:
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    child = spawn.Process(target=sender, args=(port, rate, seconds, queue))
    child.start()
    child.queue = queue  # type: ignore[attr-defined]
    return child


async def server_rates(
    data: Path, key: object, handle: str, rates: list[int], seconds: float
) -> dict[int, tuple[bool, int, int, int]]:
    """Per rate: (passed, sent, drops, CmCC durable, server CPU µs per frame taken)."""
    from mediation.pdu import StreamId, StreamKind
    from mediation.server.app import MediationServer
    from mediation.server.config import RetrievalConfig, ServerConfig, TapsConfig, TzspConfig
    from mediation.server.tzsp_socket import kernel_drops

    config = ServerConfig(
        retrieval=RetrievalConfig(listen=""),
        taps=TapsConfig(tls_listen=""),
        tzsp=TzspConfig(listen="127.0.0.1:0", receive_buffer=RECEIVE_BUFFER),
    )
    server = MediationServer(data, key, config=config)  # type: ignore[arg-type]
    results = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        tzsp, intake = server.tzsp, server.intake
        assert tzsp is not None and tzsp.listening is not None and intake is not None
        sock = tzsp._sock
        assert sock is not None
        stream = intake.streams[StreamId(handle, StreamKind.CMCC)]
        for rate in rates:
            drops0, accepted0 = kernel_drops(sock) or 0, tzsp.receiver.accepted
            stored0 = stream.durable_seq
            cpu0 = _cpu()
            child = _send(tzsp.listening[1], rate, seconds)
            sent = await trio.to_thread.run_sync(child.queue.get)  # type: ignore[attr-defined]
            await trio.to_thread.run_sync(child.join)
            with trio.move_on_after(ROUND_LIMIT):
                while tzsp.receiver.accepted - accepted0 < sent:
                    if (kernel_drops(sock) or 0) > drops0:
                        break
                    await trio.sleep(0.05)
                while stream.durable_seq - stored0 < tzsp.receiver.accepted - accepted0:
                    await trio.sleep(0.05)
            drops = (kernel_drops(sock) or 0) - drops0
            durable = stream.durable_seq - stored0
            cpu = (_cpu() - cpu0) * 1e6 / max(1, tzsp.receiver.accepted - accepted0)
            results[rate] = (drops == 0 and durable == sent, sent, drops, durable, cpu)
        nursery.cancel_scope.cancel()
    return results


def _cpu() -> float:
    """CPU seconds (user + system) of this process, every thread: the server's."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare_loop(port_out: multiprocessing.Queue, counts: multiprocessing.Queue) -> None:
    """The baseline: a blocking ``recv`` per datagram, nothing else."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind(("127.0.0.1", 0))
        port_out.put(sock.getsockname()[1])
        sock.recv(65536)  # the first datagram, however long the sender takes to start
        sock.settimeout(1.0)
        received = 1
        while True:
            try:
                sock.recv(65536)
                received += 1
            except TimeoutError:
                counts.put(received)
                return


def baseline_rates(rates: list[int], seconds: float) -> dict[int, tuple[bool, int, int]]:
    """Per rate: (passed, sent, received) for the bare recv loop."""
    spawn = multiprocessing.get_context("spawn")
    results = {}
    for rate in rates:
        ports, counts = spawn.Queue(), spawn.Queue()
        child = spawn.Process(target=bare_loop, args=(ports, counts))
        child.start()
        port = ports.get(timeout=30)
        sender_child = _send(port, rate, seconds)
        sent = sender_child.queue.get(timeout=seconds + ROUND_LIMIT)  # type: ignore[attr-defined]
        sender_child.join()
        received = counts.get(timeout=ROUND_LIMIT)
        child.join()
        results[rate] = (received == sent, sent, received)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="10000,20000,30000,40000,50000")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=None, help="filesystem to test (default: cwd)")
    parser.add_argument("--checkout", type=Path, default=None, help="run this checkout's server")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare recv loop")
    args = parser.parse_args(argv)
    rates = sorted(int(r) for r in args.rates.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-tzsp-", dir=args.dir or Path.cwd()) as tmp:
        data, key, handle = setup(Path(tmp))
        served = trio.run(server_rates, data, key, handle, rates, args.seconds)
    skipped = {r: (False, 0, 0) for r in rates}
    bare = skipped if args.no_baseline else baseline_rates(rates, args.seconds)
    import mediation

    print(f"tzsp bench: {FRAME_OCTETS}-octet frames, all the target's (full content), "
          f"{args.seconds:g} s per rate, on {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
          f"server: {Path(mediation.__file__).parent.parent}")  # fmt: skip
    for rate in rates:
        ok, sent, drops, durable, cpu = served[rate]
        b_ok, _b_sent, b_received = bare[rate]
        print(
            f"  {rate:6d}/s  serve: {'pass' if ok else 'FAIL'} (sent {sent}, socket drops "
            f"{drops}, CmCC durable {durable}, CPU {cpu:.1f} µs/frame)   bare recv: "
            f"{'pass' if b_ok else 'FAIL'} (received {b_received})"
        )
    best = max((r for r in rates if served[r][0]), default=0)
    best_bare = max((r for r in rates if bare[r][0]), default=0)
    print(f"mediate serve, TZSP into the log: {best:8d} frames/s with no drops (goal 30,000)")
    print(f"bare Python recv loop (baseline): {best_bare:8d} frames/s with no drops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
