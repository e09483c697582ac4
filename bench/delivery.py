"""Delivery from the evidence log to agencies on loopback, against a bare sendto loop.

    python bench/delivery.py [--records N] [--size BYTES] [--rounds R] [--dir DIR]
                             [--against CHECKOUT]

1. Fills one CmCC stream of a fresh log with ``--records`` CC PDUs of
   ``--size`` bytes (the DER of a real IAS-CC-APDU).
2. UDP: the server's delivery worker sends the whole stream from the log
   to a receiver in another process (one sealed envelope per datagram,
   through ``DatagramSender`` and ``DatagramSealer``); then, in the same
   run, the same worker with sealing switched off (the cost of sealing is
   the ratio of the two); then a bare Python loop reads the same records
   through a cursor and calls ``sendto`` on each payload. Rates are
   measured at the receiver (first to last datagram); a round counts only
   if nothing was lost. Seal and open are also timed alone (CPU only).
3. TLS: the server's TLS worker connects out to a receiver in another
   process (mutual TLS, pinned fingerprint), which frames the envelopes,
   checks their sequence numbers and acknowledges; rate = records / time
   from the first to the last envelope.
4. Resume: the TLS receiver cuts the connection (no TLS close) halfway
   through; the time from the cut to the first envelope of the next
   connection.

Each worker's figure comes with this process's CPU per PDU (every thread:
the log's reads too), the measure that holds on a loaded machine, where
wall-clock rates follow the scheduler; the TLS line says how busy the
receiver was. The ring holds the newest 16 MiB of a stream (about 10,000
full-size records): with more ``--records`` most reads come from the
segment files (decrypted), as in a catch-up; with fewer, all come from
memory, as live delivery does.

``--against CHECKOUT``: each round runs twice, as a subprocess with the
``mediation`` package of CHECKOUT (e.g. ``git archive main | tar -x -C
/tmp/base``) and with this one, alternating, and prints both and the
ratios: the baseline measured in the same run as the change.

Best of ``--rounds`` alternating rounds (the machine is shared). Goals:
UDP >= 50,000 PDUs/s and >= 50 % of the bare loop; TLS >= 50,000 PDUs/s;
resume within 1 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

# --code DIR: measure the mediation package of another checkout (the
# baseline of --against), with this file's harness.
sys.path.insert(
    0,
    sys.argv[sys.argv.index("--code") + 1]
    if "--code" in sys.argv[:-1]
    else str(Path(__file__).resolve().parent.parent),
)

from mediation import pdu as P
from mediation.lea.tls import make_agency_certificate
from mediation.log import ContentKind, EvidenceLog, LogKey, StreamLog
from mediation.protocol.sealed import DatagramOpener, DatagramSealer, Direction, SealKey
from mediation.server.config import DeliveryConfig
from mediation.server.delivery_tls import TlsWorker
from mediation.server.delivery_udp import UdpWorker
from mediation.server.status import EndpointRef
from mediation.server.tls import AgencyTrust, ensure_identity
from mediation.warrants.authority import ServerAuthority, TapAuthority
from mediation.warrants.keys import RegistryKey
from mediation.warrants.model import Endpoint, Stream
from mediation.warrants.registry import WarrantRegistry

HANDLE = "w-bench1"
HOST = "127.0.0.1"
SID = P.StreamId(HANDLE, P.StreamKind.CMCC)
RCVBUF = 64 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; past rmem_max, for root


def cc_record(size: int) -> bytes:
    """An IAS-CC-APDU of about ``size`` bytes."""
    info = P.CorrelationInfo(P.ContentIdentifier.correlation(b"\x01"), "CASE-BENCH", "IAP-1")
    header = P.CCDeliveryHeader(info, dt.datetime.now(dt.UTC), P.PacketDirection.TO_SUBJECT, 9)
    small = P.encode(P.CCApdu(payload=b"\x45", header=header))
    return P.encode(P.CCApdu(payload=b"\x45" + bytes(max(1, size - len(small) - 3)), header=header))


# Receivers, each in its own process ------------------------------------------------


def udp_receiver(conn) -> None:
    """Count datagrams per round; report (count, first arrival, last arrival)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((HOST, 0))
    conn.send(sock.getsockname()[1])
    buffer = bytearray(65536)
    while (expected := conn.recv()) is not None:
        sock.settimeout(None)
        sock.recv_into(buffer)
        first = last = time.perf_counter()
        count = 1
        sock.settimeout(0.5)
        recv_into = sock.recv_into
        try:
            while count < expected:
                recv_into(buffer)
                count += 1
            last = time.perf_counter()
        except TimeoutError:
            pass  # the rest was lost
        conn.send((count, first, last))


def _frames(data: bytearray, pos: int):
    """(tag, contents start, end) of each whole BER message from ``pos``."""
    size = len(data)
    while pos + 2 <= size:
        first = data[pos + 1]
        if first < 0x80:
            start, length = pos + 2, first
        else:
            k = first & 0x7F
            if pos + 2 + k > size:
                return
            start, length = pos + 2 + k, int.from_bytes(data[pos + 2 : pos + 2 + k], "big")
        end = start + length
        if end > size:
            return
        yield data[pos], start, end
        pos = end


def _envelope_seq(data: bytearray, start: int) -> int:
    """The sequenceNumber of an envelope whose contents start at ``start``."""
    pos = start + 2 + data[start + 1]  # skip the stream identifier (short form: < 128 octets)
    return int.from_bytes(data[pos + 2 : pos + 2 + data[pos + 1]], "big")


def tls_receiver(conn, cert: str, key: str, server_ca: str) -> None:
    """Accept the server's connections; per round take ``n`` envelopes in order.

    A round is (n, cut_at): after ``cut_at`` envelopes the connection is
    dropped once without closing TLS. Reports (first, last, cut, resumed, duplicates).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=server_ca)
    listener = socket.create_server((HOST, 0))
    conn.send(listener.getsockname()[1])
    while (job := conn.recv()) is not None:
        n, cut_at = job
        state = {"position": 0, "first": None, "cut": None, "resumed": None, "dups": 0}
        cpu = time.process_time()
        started = time.perf_counter()
        while state["position"] < n:
            raw, _ = listener.accept()
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(raw, server_side=True) as tls:
                _serve_tls(tls, state, n, cut_at)
        # How busy the receiver was (1.0: it, not the server, set the pace).
        busy = (time.process_time() - cpu) / max(1e-9, time.perf_counter() - started)
        conn.send(
            (state["first"], state["last"], state["cut"], state["resumed"], state["dups"], busy)
        )


def _serve_tls(tls: ssl.SSLSocket, state: dict, n: int, cut_at: int) -> None:
    if state["position"]:
        tls.sendall(P.encode(P.Acknowledgement(SID, state["position"])))  # where to resume
    buffer = bytearray()
    while state["position"] < n:
        chunk = tls.recv(262144)
        if not chunk:
            return
        buffer += chunk
        consumed = 0
        for tag, start, end in _frames(buffer, 0):
            consumed = end
            if tag == 0xA0:
                seq = _envelope_seq(buffer, start)
                if seq == state["position"]:
                    state["position"] += 1
                    now = time.perf_counter()
                    state["first"] = state["first"] or now
                    state["last"] = now
                    if state["cut"] is not None and state["resumed"] is None:
                        state["resumed"] = now
                else:
                    state["dups"] += 1
            elif tag == 0xA1:  # a keepalive: answer it (echo id and time)
                ask = P.decode_delivery(bytes(buffer[start - 2 : end]))
                tls.sendall(P.encode(P.KeepaliveAnswer(ask.keepalive_id, ask.sent_time)))
        del buffer[:consumed]
        tls.sendall(P.encode(P.Acknowledgement(SID, state["position"])))
        if state["cut"] is None and cut_at and state["position"] >= cut_at:
            state["cut"] = time.perf_counter()
            tls.shutdown(socket.SHUT_RDWR)  # the connection dies; TLS is never closed
            return


# The sending side, in trio ----------------------------------------------------------


class Bench:
    def __init__(self, base: Path, records: int, size: int) -> None:
        self.dir = Path(tempfile.mkdtemp(dir=base))
        self.records = records
        self.size = size
        self.key = RegistryKey.generate()
        now = dt.datetime.now(dt.UTC)
        with WarrantRegistry.initialise(self.dir, self.key, None, now):
            TapAuthority.create(self.dir / "ca", self.key, now)
            ServerAuthority.create(self.dir / "ca", self.key, now)
        self.identity = ensure_identity(self.dir, self.key, ("localhost",), now)
        self.agency = make_agency_certificate(self.dir / "agency", "bench agency")

    async def fill(self, stream: StreamLog) -> None:
        der = cc_record(self.size)
        for _ in range(self.records):
            appended = await stream.append(der, ContentKind.CMCC, P.ClockStatus.SYNCHRONISED)
        await appended.durable()

    async def udp_worker(
        self, stream: StreamLog, port: int, conn, sealed: bool = True
    ) -> tuple[int, float]:
        key = SealKey(1, os.urandom(32))
        endpoint = Endpoint("udp", HOST, port, (Stream.CMCC,), udp_key_id=1, udp_key=key.key)
        kind = UdpWorker if sealed else _UnsealedWorker
        worker = kind(EndpointRef("a-bench", 1, "udp", "udp"), endpoint, DeliveryConfig())
        worker.set_streams({SID: stream}, start_at={SID: 0})
        cpu = time.process_time()
        async with trio.open_nursery() as nursery:
            conn.send(self.records)
            await nursery.start(worker.run)
            result = await trio.to_thread.run_sync(conn.recv)
            nursery.cancel_scope.cancel()
        return (*_rate(result), _per_record(time.process_time() - cpu, self.records))

    async def udp_bare(self, stream: StreamLog, port: int, conn) -> tuple[int, float]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        address, sendto = (HOST, port), sock.sendto
        conn.send(self.records)
        cursor, sent = stream.cursor(0), 0
        cpu = time.process_time()
        while sent < self.records:
            for record in await cursor.read(1024):
                sendto(record.payload, address)
            sent = cursor.position
        result = await trio.to_thread.run_sync(conn.recv)
        sock.close()
        return (*_rate(result), _per_record(time.process_time() - cpu, self.records))

    async def tls(self, stream: StreamLog, port: int, conn, run: int, cut: bool):
        endpoint = Endpoint("tls", HOST, port, (Stream.CMCC,), fingerprint=self.agency.fingerprint)
        ref = EndpointRef("a-bench", 2, "tls", f"run{run}")  # a fresh saved position
        worker = TlsWorker(
            ref, endpoint, DeliveryConfig(), self.identity, AgencyTrust(self.identity)
        )
        worker.set_streams({SID: stream})
        cpu = time.process_time()
        async with trio.open_nursery() as nursery:
            conn.send((self.records, self.records // 2 if cut else 0))
            await nursery.start(worker.run)
            first, last, cut_at, resumed, _dups, busy = await trio.to_thread.run_sync(conn.recv)
            nursery.cancel_scope.cancel()
        rate = self.records / (last - first)
        cpu_us = _per_record(time.process_time() - cpu, self.records)
        return rate, (resumed - cut_at) if cut else None, cpu_us, busy


class _PassThrough:
    """Sealing switched off: the message goes out as it is (the bench's baseline only)."""

    @staticmethod
    def seal(message: bytes) -> bytes:
        return message

    @staticmethod
    def seal_run(messages: list[bytes]) -> list[bytes]:
        return messages


class _UnsealedWorker(UdpWorker):
    async def _open(self) -> socket.socket:
        self._sealer = _PassThrough()  # type: ignore[assignment]  # after run() made the real one
        return await super()._open()


def seal_open_cost(size: int, count: int = 20_000) -> tuple[float, float]:
    """Microseconds to seal, and to open, one envelope-sized message (CPU only)."""
    key = SealKey(1, os.urandom(32))
    sealer = DatagramSealer(key, Direction.SERVER_TO_AGENCY, time.time_ns() // 1000)
    opener = DatagramOpener([key], Direction.SERVER_TO_AGENCY)
    message = bytes(size)
    started = time.perf_counter()
    datagrams = [sealer.seal(message) for _ in range(count)]
    sealed = time.perf_counter() - started
    started = time.perf_counter()
    for datagram in datagrams:
        opener.open(datagram)
    opened = time.perf_counter() - started
    return sealed / count * 1e6, opened / count * 1e6


def _per_record(seconds: float, records: int) -> float:
    """Microseconds of this process's CPU (every thread) per record."""
    return seconds / records * 1e6


def _rate(result: tuple[int, float, float]) -> tuple[int, float]:
    count, first, last = result
    return count, count / (last - first) if last > first else 0.0


async def run_bench(bench: Bench, rounds: int, udp, tls) -> dict[str, list]:
    """Every measurement, ``rounds`` times, alternating."""
    udp_conn, udp_port = udp
    tls_conn, tls_port = tls
    results: dict[str, list] = {"udp": [], "plain": [], "bare": [], "tls": [], "resume": []}
    async with EvidenceLog.open(bench.dir, key=LogKey(os.urandom(32))) as log:  # as the server
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        started = time.perf_counter()
        await bench.fill(stream)
        print(f"filled the log in {time.perf_counter() - started:.1f} s", flush=True)
        for run in range(rounds):
            results["udp"].append(await bench.udp_worker(stream, udp_port, udp_conn))
            plain = await bench.udp_worker(stream, udp_port, udp_conn, sealed=False)
            results["plain"].append(plain)
            results["bare"].append(await bench.udp_bare(stream, udp_port, udp_conn))
            rate, _, cpu_us, busy = await bench.tls(stream, tls_port, tls_conn, 2 * run, cut=False)
            results["tls"].append((rate, cpu_us, busy))
            _, resume, _, _ = await bench.tls(stream, tls_port, tls_conn, 2 * run + 1, cut=True)
            results["resume"].append(resume)
    return results


def _best(rounds: list[tuple[int, float, float]], expected: int) -> tuple[float, int, float]:
    """The best lossless rate, the most lost in any round, the least CPU per record."""
    lossless = [rate for count, rate, _cpu in rounds if count == expected]
    worst = max(expected - count for count, _rate, _cpu in rounds)
    return (max(lossless) if lossless else 0.0), worst, min(cpu for *_, cpu in rounds)


def summarise(results: dict[str, list], records: int) -> dict[str, float]:
    """The figures of a run: best rates, CPU per record, losses, resume time."""
    out: dict[str, float] = {}
    for name in ("udp", "plain", "bare"):
        out[name], out[f"{name}_lost"], out[f"{name}_cpu"] = _best(results[name], records)
    out["tls"] = max(rate for rate, _cpu, _busy in results["tls"])
    out["tls_cpu"] = min(cpu for _rate, cpu, _busy in results["tls"])
    out["tls_receiver_busy"] = max(busy for _rate, _cpu, busy in results["tls"])
    out["resume"] = min(results["resume"])
    return out


def run_once(args: argparse.Namespace) -> dict[str, float]:
    """One bench run in this process (with this file's or ``--code``'s package)."""
    base = args.dir or Path(tempfile.gettempdir())
    bench = Bench(base, args.records, args.size)
    spawn = mp.get_context("spawn")
    udp_parent, udp_child = spawn.Pipe()
    tls_parent, tls_child = spawn.Pipe()
    cert, key = str(bench.agency.cert_path), str(bench.agency.key_path)
    server_ca = str(bench.dir / "ca" / "server-ca.pem")  # agencies trust the server CA only
    processes = [
        spawn.Process(target=udp_receiver, args=(udp_child,), daemon=True),
        spawn.Process(target=tls_receiver, args=(tls_child, cert, key, server_ca), daemon=True),
    ]
    for process in processes:
        process.start()
    try:
        udp, tls = (udp_parent, udp_parent.recv()), (tls_parent, tls_parent.recv())
        results = trio.run(run_bench, bench, args.rounds, udp, tls)
    finally:
        for conn in (udp_parent, tls_parent):
            conn.send(None)
        for process in processes:
            process.join(timeout=5)
        shutil.rmtree(bench.dir, ignore_errors=True)
    figures = summarise(results, args.records)
    figures["seal_us"], figures["open_us"] = seal_open_cost(args.size)
    return figures


def against(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float]]:
    """Rounds alternating between the baseline checkout and this one, each a subprocess.

    Returns:
        (baseline, this): each figure the best over the rounds.
    """
    me = [sys.executable, __file__, "--json", "--rounds", "1"]
    me += ["--records", str(args.records), "--size", str(args.size)]
    if args.dir:
        me += ["--dir", str(args.dir)]
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "this": []}
    for _ in range(args.rounds):
        for name, extra in (("baseline", ["--code", str(args.against)]), ("this", [])):
            done = subprocess.run(me + extra, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return _best_of(runs["baseline"]), _best_of(runs["this"])


def _best_of(runs: list[dict[str, float]]) -> dict[str, float]:
    lowest = {"resume", "seal_us", "open_us", "tls_receiver_busy"}
    return {
        key: (min if key in lowest or key.endswith(("_cpu", "_lost")) else max)(
            run[key] for run in runs
        )
        for key in runs[0]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--against", type=Path, default=None, metavar="CHECKOUT")
    parser.add_argument("--code", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:  # one run, for --against
        print(json.dumps(run_once(args)))
        return 0
    print(
        f"delivery: {args.records:,} CC PDUs of {args.size} bytes from the log, loopback, "
        f"best of {args.rounds} rounds ({os.cpu_count()} CPUs)",
        flush=True,
    )
    if args.against is None:
        return report(run_once(args))
    baseline, this = against(args)
    print(f"baseline: {args.against}")
    report(baseline)
    print("this checkout:")
    report(this)
    print("this / baseline (rates: higher is better; CPU per PDU: lower is better):")
    for key in ("udp", "plain", "bare", "tls"):
        rate = this[key] / (baseline[key] or float("nan"))
        cpu = this[f"{key}_cpu"] / (baseline[f"{key}_cpu"] or float("nan"))
        print(f"  {key:<6} rate x{rate:.2f}   CPU/PDU x{cpu:.2f}")
    return 0


def report(figures: dict[str, float]) -> int:
    f = figures
    ratio = f["udp"] / f["bare"] if f["bare"] else 0.0
    sealing = f["udp"] / f["plain"] if f["plain"] else 0.0
    print(
        f"UDP  worker     {f['udp']:>10,.0f} PDUs/s with zero loss, {f['udp_cpu']:.1f} us CPU/PDU "
        f"(most lost in a round: {f['udp_lost']:.0f})"
    )
    print(
        f"UDP  unsealed   {f['plain']:>10,.0f} PDUs/s, that worker unsealed, "
        f"{f['plain_cpu']:.1f} us CPU/PDU (lost: {f['plain_lost']:.0f})"
    )
    print(f"UDP  sealed/unsealed {sealing:>5.2f}  (the cost of AES-256-GCM on every datagram)")
    print(f"seal {f['seal_us']:.1f} us, open {f['open_us']:.1f} us per datagram (CPU only)")
    print(
        f"UDP  bare loop  {f['bare']:>10,.0f} PDUs/s (sendto of each payload; "
        f"{f['bare_cpu']:.1f} us CPU/PDU; most lost: {f['bare_lost']:.0f})"
    )
    print(f"UDP  ratio      {ratio:>10.2f}  (goal: >= 0.50 and >= 50,000 PDUs/s)")
    print(
        f"TLS  worker     {f['tls']:>10,.0f} PDUs/s, in order, acknowledged, "
        f"{f['tls_cpu']:.1f} us CPU/PDU (goal: >= 50,000; the receiver was busy "
        f"{f['tls_receiver_busy']:.0%} of a core)"
    )
    print(f"TLS  resume     {f['resume']:>10.3f} s from a cut to the next envelope (goal: < 1 s)")
    met = f["udp"] >= 50_000 and ratio >= 0.5 and f["tls"] >= 50_000 and f["resume"] < 1.0
    print("goals: met" if met else "goals: NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
