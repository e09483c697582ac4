"""The whole path as separate processes: tap, server, two agencies, against a bare relay.

    python bench/e2e.py [--rates 500,1000,...] [--seconds S] [--checkout DIR]
    python bench/e2e.py --idle            server CPU idle and at 1,000 PDUs/s
    python bench/e2e.py --catchup 10      TLS agency down 10 s: catch-up vs live rate

Everything is set up through the CLI in a fresh temporary data directory,
as a carrier and an agency would (``mediate init``, ``receive make-cert``,
``tap register``, ``agency add`` with one UDP and one TLS endpoint, each
carrying both streams, and a full-content warrant on a documentation MAC),
then run as processes:

    mediate tap run --read FILE --speed N  ──TLS tap link──▶  mediate serve
        ──sealed UDP──▶ mediate receive --udp      (no retrieval: loss shows)
        ──TLS────────▶  mediate receive --tls

FILE is a capture generated here (1500-byte frames to and from the target,
alternating; never kept in git) and ``--speed N`` replays N frames a second,
each stamped with the time it is replayed: two PDUs a frame (a header
report and the CC APDU). Per step of offered rate: the rate achieved at
the agencies (first to last arrival), PDUs in the log and at each agency,
loss, capture-to-agency latency (median, 99th percentile: each CmII line's
``receivedTime`` against the header report's capture time stamp), and the
CPU seconds (per PDU for the receivers) and peak RSS of every process,
read from /proc (the tap's from wait4). A step is lossless when both
agencies hold every PDU the log holds and the rate achieved is at least
90 % of the offered. Stepping ends after the first step that is not
(``--all``: every step runs).

Baseline in the same run: a bare Python relay (one process) reading the
same frames from memory, appending each to a file with fdatasync every
256, sending each by UDP and by TLS to a sink process.

``--checkout DIR`` runs ``mediate serve`` and ``mediate receive`` from
another checkout (its ``.venv``), so the same bench measures any branch;
the tap runs from ``--tap-checkout`` (default: this one, which has
``--speed N``). Every wait is bounded in time; every step in count.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

TARGET_MAC = bytes.fromhex("02005e005301")  # documentation MACs (RFC 7042)
OTHER_MAC = bytes.fromhex("02005e005302")
TARGET_IP = bytes([192, 0, 2, 10])  # TEST-NET-1
PEER_IP = bytes([198, 51, 100, 20])  # TEST-NET-2
FRAME_SIZE = 1500
CASE_ID = "CASE-TEST-0001"
TAP = "edge-1"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# The capture --------------------------------------------------------------------


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF


def frame(index: int) -> bytes:
    """A 1500-octet Ethernet/IPv4/UDP frame, from the target (even) or to it (odd)."""
    out = index % 2 == 0
    src_mac, dst_mac = (TARGET_MAC, OTHER_MAC) if out else (OTHER_MAC, TARGET_MAC)
    src, dst = (TARGET_IP, PEER_IP) if out else (PEER_IP, TARGET_IP)
    size = FRAME_SIZE - 14
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, index & 0xFFFF, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    ports = (40000, 5004) if out else (5004, 40000)
    udp = struct.pack("!HHHH", *ports, size - 20, 0)
    payload = (index.to_bytes(8, "big") * ((size - 28) // 8 + 1))[: size - 28]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp + payload


def write_capture(path: Path, count: int) -> Path:
    """A classic pcap (link type Ethernet) of ``count`` frames; recorded times are unused."""
    if path.exists():
        return path
    start = int(time.time())
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for index in range(count):
            data = frame(index)
            out.write(struct.pack("<IIII", start + index // 1000, index % 1000 * 1000,
                                  len(data), len(data)))  # fmt: skip
            out.write(data)
    return path


# Processes and /proc --------------------------------------------------------------


@dataclasses.dataclass
class Usage:
    """CPU seconds (user + system, all threads) and peak RSS of a process."""

    cpu: float
    peak_rss: int  # bytes
    wakeups: int = 0  # voluntary context switches, all threads


def usage(pid: int) -> Usage:
    """Read /proc for a running process."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    peak = 0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    wakeups = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as handle:
            for line in handle:
                if line.startswith("voluntary_ctxt_switches:"):
                    wakeups += int(line.split()[1])
    return Usage(cpu, peak, wakeups)


class Checkout:
    """Where ``mediate`` runs from: a checkout and its .venv's Python."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        venv = self.root / ".venv" / "bin" / "python"
        self.python = str(venv) if venv.exists() else sys.executable

    def argv(self, *args: str) -> list[str]:
        return [self.python, "-m", "mediation", *args]

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {**base, "PYTHONPATH": str(self.root)}


class Rig:
    """One data directory, its agencies' directories, and the processes on them."""

    def __init__(self, work: Path, checkout: Checkout, tap_checkout: Checkout) -> None:
        self.work = work
        self.checkout = checkout
        self.tap_checkout = tap_checkout
        self.data = work / "data"
        self.env = dict(os.environ)
        self.env["MEDIATION_DATA_DIR"] = str(self.data)
        self.env["MEDIATION_KEY_FILE"] = str(work / "registry.key")
        self.ports = {
            "udp": free_port(socket.SOCK_DGRAM),
            "tls": free_port(socket.SOCK_STREAM),
            "taps": free_port(socket.SOCK_STREAM),
            "retrieval": free_port(socket.SOCK_STREAM),
        }
        self.agency = work / "agency"
        self.server: subprocess.Popen[bytes] | None = None
        self.receivers: dict[str, subprocess.Popen[bytes]] = {}
        self.tap: subprocess.Popen[bytes] | None = None
        self.counters = {name: AgencyCounter(self.agency / name) for name in ("udp", "tls")}

    def mediate(self, *args: str) -> str:
        done = subprocess.run(
            self.checkout.argv(*args), env=self.checkout.env(self.env),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"e2e: mediate {' '.join(args[:2])} failed:\n{done.stderr}")
        return done.stdout

    def setup(self) -> str:
        """Data directory, tap, agency (UDP + TLS endpoints, both streams), warrant."""
        self.mediate("init")
        self.mediate("receive", "make-cert", "--out", str(self.agency), "--name", "TEST-LEA")
        self.mediate("tap", "register", TAP, "--server", f"127.0.0.1:{self.ports['taps']}",
                     "--out", str(self.work / f"{TAP}.tap"))  # fmt: skip
        cert = self.agency / "agency-cert.pem"
        start = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        end = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        cases = self.work / "carrier"
        cases.mkdir(mode=0o700)
        files = {
            "udp.toml": f'name = "TEST-LEA"\nudp = "127.0.0.1:{self.ports["udp"]}"\n',
            "tls.toml": f'name = "TEST-LEA"\ntls = "127.0.0.1:{self.ports["tls"]}"\n'
            f'ca = "{cert}"\n',
            "warrant.toml": f'case-id = "{CASE_ID}"\nagency = "TEST-LEA"\n'
            f'target = ["02:00:5e:00:53:01"]\ncontent = "full"\nstart = "{start}"\n'
            f'end = "{end}"\niap = "IAP-TEST"\ncourt-ref = "ORDER-TEST-1"\ntap = ["{TAP}"]\n',
        }
        for name, text in files.items():
            path = cases / name
            path.write_text(text)
            path.chmod(0o600)
        self.mediate("agency", "add", "--from", str(cases / "udp.toml"),
                     "--udp-key-out", str(self.agency / "udp-key.toml"))  # fmt: skip
        self.mediate("agency", "add", "--from", str(cases / "tls.toml"))
        return self.mediate("add", "--from", str(cases / "warrant.toml")).split()[0]

    def start_server(self) -> None:
        config = self.work / "mediation.toml"
        config.write_text(
            f'[retrieval]\nlisten = "127.0.0.1:{self.ports["retrieval"]}"\n'
            f'[taps]\ntls_listen = "127.0.0.1:{self.ports["taps"]}"\n'
        )
        with (self.work / "serve.log").open("ab") as log:
            self.server = subprocess.Popen(
                self.checkout.argv("serve", "--config", str(config)),
                env=self.checkout.env(self.env), stdout=log, stderr=log,
            )  # fmt: skip
        if not wait_for(lambda: (self.status().get("taps") or {}).get("tls_listening"), 60):
            raise SystemExit("e2e: the server did not start:\n" + self._tail("serve.log"))

    def start_receiver(self, kind: str) -> None:
        """``mediate receive`` for the UDP or the TLS endpoint (live only: no retrieval)."""
        address = f"127.0.0.1:{self.ports[kind]}"
        if kind == "udp":
            how = ["--udp", address, "--udp-key", str(self.agency / "udp-key.toml")]
        else:
            how = ["--tls", address, "--cert", str(self.agency / "agency-cert.pem"),
                   "--key", str(self.agency / "agency-key.pem"),
                   "--server-ca", str(self.data / "ca" / "server-ca.pem")]  # fmt: skip
        name = f"receive-{kind}.log"
        with (self.work / name).open("ab") as log:
            self.receivers[kind] = subprocess.Popen(
                self.checkout.argv("receive", *how, "--out", str(self.agency / kind)),
                env=self.checkout.env(self.env), stdout=log, stderr=log,
            )  # fmt: skip
        if not wait_for(lambda: f"listening: {kind}" in self._tail(name), 30):
            raise SystemExit(f"e2e: the {kind} receiver did not start:\n" + self._tail(name))

    def stop_receiver(self, kind: str) -> None:
        process = self.receivers.pop(kind)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def run_tap(self, capture: Path, rate: float, limit: float) -> tuple[float, Usage, str]:
        """``mediate tap run --read`` at ``rate`` frames/s; its wall time, usage and output."""
        argv = self.tap_checkout.argv(
            "tap", "run", "--credentials", str(self.work / f"{TAP}.tap"),
            "--read", str(capture), "--speed", f"{rate:g}", "-q",
        )  # fmt: skip
        out = self.work / "tap.out"
        with out.open("wb") as handle:
            began = time.monotonic()
            process = subprocess.Popen(
                argv, env=self.tap_checkout.env(self.env), stdout=handle, stderr=handle
            )
            self.tap = process
            return self._reap(process, began, limit, out)

    def _reap(
        self, process: subprocess.Popen[bytes], began: float, limit: float, out: Path
    ) -> tuple[float, Usage, str]:
        deadline = began + limit
        while True:
            pid, status, rusage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                pid, status, rusage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - began
        text = out.read_text(errors="replace").strip()
        if process.returncode != 0:
            text = f"tap exit {process.returncode}: {text}"
        return elapsed, Usage(rusage.ru_utime + rusage.ru_stime, rusage.ru_maxrss * 1024), text

    def status(self) -> dict:
        from mediation.server.control import ControlError, request, socket_path

        if self.server is not None and self.server.poll() is not None:
            raise SystemExit("e2e: the server stopped:\n" + self._tail("serve.log"))
        try:
            return request(socket_path(self.data), {"op": "status"}) or {}
        except ControlError:
            return {}

    def logged(self) -> int:
        """PDUs in the evidence log (every stream's appended, from ``status``)."""
        streams = {
            (r["handle"], r["stream"]): r["appended"] for r in self.status().get("delivery") or []
        }
        return sum(streams.values())

    def backlog(self, transport: str) -> int:
        rows = self.status().get("delivery") or []
        return sum(r["backlog"] for r in rows if r["transport"] == transport)

    def processes(self) -> dict[str, int]:
        out = {"serve": self.server.pid} if self.server else {}
        out.update({f"receive-{k}": p.pid for k, p in self.receivers.items()})
        return out

    def usages(self) -> dict[str, Usage]:
        return {name: usage(pid) for name, pid in self.processes().items()}

    def stop(self) -> None:
        for kind in list(self.receivers):
            self.stop_receiver(kind)
        if self.server is not None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.server.kill()
            self.server = None

    def _tail(self, name: str) -> str:
        try:
            return (self.work / name).read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(ready: Callable[[], object], limit: float, every: float = 0.1) -> object:
    """Poll ``ready()`` for at most ``limit`` seconds; its first true value, or None."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(every)
    return None


# What the agencies hold -------------------------------------------------------------


class AgencyCounter:
    """Counts the envelopes in an agency's raw files and reads its new CmII lines.

    Incremental: each call reads only what was appended since the last one.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.offsets: dict[Path, int] = {}
        self.envelopes = 0

    def count(self) -> int:
        for path in self.out.glob("*/cm*.raw"):
            self.envelopes += self._scan(path)
        return self.envelopes

    def _scan(self, path: Path) -> int:
        offset = self.offsets.get(path, 0)
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
        pos, found, size = 0, 0, len(data)
        while pos + 2 <= size:
            first = data[pos + 1]
            if first < 0x80:
                start, length = pos + 2, first
            else:
                k = first & 0x7F
                start, length = pos + 2 + k, int.from_bytes(data[pos + 2 : pos + 2 + k], "big")
            if start + length > size:
                break
            found += data[pos] == 0xA0
            pos = start + length
        self.offsets[path] = offset + pos
        return found

    def latencies(self) -> tuple[list[float], float | None, float | None]:
        """New CmII lines: capture-to-agency seconds, first and last arrival (epoch seconds)."""
        out: list[float] = []
        first = last = None
        for path in self.out.glob("*/cmii.jsonl"):
            offset = self.offsets.get(path, 0)
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
            end = data.rfind(b"\n") + 1
            self.offsets[path] = offset + end
            for line in data[:end].splitlines():
                captured, arrived = _times(json.loads(line))
                if arrived is None:
                    continue
                first = arrived if first is None else min(first, arrived)
                last = arrived if last is None else max(last, arrived)
                if captured is not None:
                    out.append(arrived - captured)
        return out, first, last


def _times(line: dict) -> tuple[float | None, float | None]:
    """(capture time, arrival time) of one cmii.jsonl line, epoch seconds."""
    arrived = _epoch(line.get("receivedTime"))
    content = line.get("content") or {}
    message = content.get("message") or content
    stamp = None
    for key in ("timestamp", "timeStamp"):
        for where in (message, *(v for v in message.values() if isinstance(v, dict))):
            if isinstance(where, dict) and key in where:
                stamp = where[key]
                break
        if stamp:
            break
    return _epoch(stamp), arrived


def _epoch(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# One step -------------------------------------------------------------------------------


@dataclasses.dataclass
class Step:
    offered: float  # PDUs/s
    achieved: float
    logged: int
    held: dict[str, int]
    latency: tuple[float, float] | None  # median, p99 (s)
    cpu: dict[str, float]
    peak: dict[str, int]
    per_pdu: dict[str, float]  # CPU microseconds per PDU
    socket_drops: int = 0  # at the UDP agency's socket (/proc/net/udp)
    note: str = ""

    @property
    def lost(self) -> int:
        return max(self.logged - min(self.held.values()), 0) if self.held else self.logged

    @property
    def lossless(self) -> bool:
        return self.logged > 0 and self.lost == 0 and self.achieved >= 0.9 * self.offered


def run_step(rig: Rig, rate: int, seconds: float) -> Step:
    """Offer ``rate`` frames/s for ``seconds``; wait until delivered; measure."""
    frames = max(int(rate * seconds), 2)
    capture = write_capture(rig.work / f"frames-{frames}.pcap", frames)
    before, held0, logged0 = rig.usages(), _held(rig), rig.logged()
    drops0 = udp_drops(rig.ports["udp"])
    for counter in rig.counters.values():
        counter.latencies()  # skip what earlier steps wrote
    _elapsed, tap, note = rig.run_tap(capture, rate, seconds * 4 + 60)
    _drain(rig)
    after, held1, logged1 = rig.usages(), _held(rig), rig.logged()
    logged = logged1 - logged0
    held = {k: held1[k] - held0[k] for k in held1}
    lat: list[float] = []
    achieved = []
    for name, counter in rig.counters.items():
        values, first, last = counter.latencies()
        lat += values
        if first is not None and last is not None and last > first:
            achieved.append(held[name] / (last - first))
    cpu = {name: after[name].cpu - before[name].cpu for name in after}
    cpu["tap"] = tap.cpu
    peak = {name: u.peak_rss for name in after for u in (after[name],)}
    peak["tap"] = tap.peak_rss
    per_pdu = {k: cpu[k] / max(held.get(k.removeprefix("receive-"), logged), 1) * 1e6 for k in cpu}
    if "acknowledged" not in note and note:
        note = note.splitlines()[-1]
    else:
        note = ""
    return Step(
        offered=rate * 2,
        achieved=min(achieved) if achieved else 0.0,
        logged=logged,
        held=held,
        latency=_percentiles(lat),
        cpu=cpu,
        peak=peak,
        per_pdu=per_pdu,
        socket_drops=udp_drops(rig.ports["udp"]) - drops0,
        note=note,
    )


def udp_drops(port: int) -> int:
    """Datagrams dropped at the UDP socket bound to ``port`` (its /proc/net/udp ``drops``)."""
    wanted = f":{port:04X}"
    total = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(name) as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[1].endswith(wanted):
                    total += int(fields[-1])
    return total


def _held(rig: Rig) -> dict[str, int]:
    return {name: counter.count() for name, counter in rig.counters.items()}


def _drain(rig: Rig, limit: float = 60.0) -> None:
    """Until TLS has no backlog and both agencies' counts stand still for a second."""
    deadline = time.monotonic() + limit
    last, still = None, 0
    while time.monotonic() < deadline:
        now = (_held(rig), rig.backlog("tls"), rig.logged())
        if now == last and now[1] == 0:
            still += 1
            if still >= 5:
                return
        else:
            still = 0
        last = now
        time.sleep(0.2)


def _percentiles(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    values.sort()
    return statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))]


# The bare relay -------------------------------------------------------------------------


def _sink(conn, cert: str, key: str) -> None:
    """Count UDP datagrams and TLS octets (two threads); report on request."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    udp.bind(("127.0.0.1", 0))
    listener = socket.create_server(("127.0.0.1", 0))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    counts = {"udp": 0, "tls": 0}

    def udp_loop() -> None:
        buffer = bytearray(65536)
        while udp.recv_into(buffer):
            counts["udp"] += 1

    def tls_loop() -> None:
        raw, _ = listener.accept()
        with context.wrap_socket(raw, server_side=True) as tls:
            while chunk := tls.recv(1 << 18):
                counts["tls"] += len(chunk)

    for loop in (udp_loop, tls_loop):
        threading.Thread(target=loop, daemon=True).start()
    conn.send((udp.getsockname()[1], listener.getsockname()[1]))
    conn.recv()  # the relay is done
    time.sleep(0.5)
    conn.send(dict(counts))


def _relay(conn, capture: str, log_dir: str, udp_port: int, tls_port: int) -> None:
    """Append + fdatasync per 256, sendto, TLS send: for every frame; report frames/s."""
    with open(capture, "rb") as handle:
        data = handle.read()
    frames, pos = [], 24
    while pos + 16 <= len(data):
        size = struct.unpack_from("<I", data, pos + 8)[0]
        frames.append(data[pos + 16 : pos + 16 + size])
        pos += 16 + size
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect(("127.0.0.1", udp_port))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(socket.create_connection(("127.0.0.1", tls_port)))
    fd = os.open(os.path.join(log_dir, "relay.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    began = time.perf_counter()
    for index, payload in enumerate(frames, 1):
        os.write(fd, payload)
        if index % 256 == 0:
            os.fdatasync(fd)
        udp.send(payload)
        tls.sendall(payload)
    os.fdatasync(fd)
    elapsed = time.perf_counter() - began
    os.close(fd)
    tls.close()
    conn.send((len(frames), elapsed))


def relay_baseline(rig: Rig, frames: int) -> tuple[float, float]:
    """Frames/s of the bare relay, and the fraction the UDP sink lost."""
    capture = write_capture(rig.work / f"frames-{frames}.pcap", frames)
    spawn = mp.get_context("spawn")
    sink_conn, sink_child = spawn.Pipe()
    cert, key = rig.agency / "agency-cert.pem", rig.agency / "agency-key.pem"
    sink = spawn.Process(target=_sink, args=(sink_child, str(cert), str(key)), daemon=True)
    sink.start()
    udp_port, tls_port = sink_conn.recv()
    relay_conn, relay_child = spawn.Pipe()
    relay = spawn.Process(
        target=_relay, args=(relay_child, str(capture), str(rig.work), udp_port, tls_port),
        daemon=True,
    )  # fmt: skip
    relay.start()
    if not relay_conn.poll(120):
        relay.kill()
        raise SystemExit("e2e: the relay did not finish in 120 s")
    count, elapsed = relay_conn.recv()
    sink_conn.send(None)
    counts = sink_conn.recv() if sink_conn.poll(30) else {"udp": 0}
    relay.join(10)
    sink.kill()
    (rig.work / "relay.log").unlink(missing_ok=True)
    return count / elapsed, 1 - counts["udp"] / count


# Reports ---------------------------------------------------------------------------------

PROCESSES = ("tap", "serve", "receive-udp", "receive-tls")


def print_step(step: Step) -> None:
    lat = (
        "-" if step.latency is None else f"{step.latency[0] * 1e3:.1f}/{step.latency[1] * 1e3:.1f}"
    )
    held = " ".join(f"{k}={v}" for k, v in step.held.items())
    print(
        f"offered {step.offered:>7,.0f}/s achieved {step.achieved:>7,.0f}/s  log {step.logged:>7}  "
        f"{held}  lost {step.lost:>6} (UDP socket drops {step.socket_drops})  "
        f"latency ms med/p99 {lat}  "
        f"{'lossless' if step.lossless else 'LOSSY'}",
        flush=True,
    )
    cells = [
        f"{name} {step.cpu.get(name, 0):.1f}s {step.per_pdu.get(name, 0):.0f}us/PDU "
        f"{step.peak.get(name, 0) / 2**20:.0f}MiB"
        for name in PROCESSES
    ]
    print("    cpu, per PDU, peak RSS: " + "; ".join(cells), flush=True)
    if step.note:
        print(f"    tap: {step.note}", flush=True)


def stepped(rig: Rig, rates: list[int], seconds: float, relay_frames: int, keep_going: bool) -> int:
    relay, relay_loss = relay_baseline(rig, relay_frames)
    print(f"bare relay: {relay:,.0f} frames/s (append + fdatasync/256, UDP + TLS send); "
          f"UDP sink lost {relay_loss:.1%}", flush=True)  # fmt: skip
    best: Step | None = None
    for rate in rates:
        step = run_step(rig, rate, seconds)
        print_step(step)
        if step.lossless:
            best = best if best and best.achieved > step.achieved else step
        elif not keep_going:
            break
    relay_after, _ = relay_baseline(rig, relay_frames)
    relay = max(relay, relay_after)
    print(f"bare relay again: {relay_after:,.0f} frames/s", flush=True)
    if best is None:
        print("highest lossless rate: none (the first step lost PDUs)")
        return 0
    lat = best.latency or (0.0, 0.0)
    print(
        f"highest lossless rate: {best.offered:,.0f} PDUs/s offered, {best.achieved:,.0f} achieved "
        f"(p99 latency {lat[1] * 1e3:.1f} ms); ratio to the bare relay "
        f"{best.achieved / relay:.3f} (goal: >= 30,000 PDUs/s, >= 0.5, p99 < 20 ms)"
    )
    return 0


def idle(rig: Rig, seconds: float) -> int:
    """Server CPU and wake-ups with no traffic, then at 1,000 PDUs/s (steady state only)."""
    assert rig.server is not None
    time.sleep(2.0)  # let start-up settle
    pid = rig.server.pid
    a, began = usage(pid), time.monotonic()
    time.sleep(seconds)
    print("idle: " + _load(a, usage(pid), time.monotonic() - began), flush=True)
    frames = int(500 * (seconds + 5))
    capture = write_capture(rig.work / f"frames-{frames}.pcap", frames)
    tap = _tap_in_thread(rig, capture, 500, seconds * 4 + 60)
    logged = rig.logged()
    wait_for(lambda: rig.logged() > logged, 30, every=0.02)  # the tap is up and sending
    time.sleep(1.0)
    a, began = usage(pid), time.monotonic()
    time.sleep(seconds)
    load = _load(a, usage(pid), time.monotonic() - began)
    print(f"1,000 PDUs/s: {load} (goal: < 10%)", flush=True)
    tap.join(seconds * 4 + 90)
    return 0


def _load(a: Usage, b: Usage, took: float) -> str:
    return (
        f"server {100 * (b.cpu - a.cpu) / took:.1f}% of a core, "
        f"{(b.wakeups - a.wakeups) / took:,.0f} wake-ups/s (voluntary context switches)"
    )


def _tap_in_thread(rig: Rig, capture: Path, rate: int, limit: float) -> threading.Thread:
    thread = threading.Thread(target=rig.run_tap, args=(capture, rate, limit), daemon=True)
    thread.start()
    return thread


def catchup(rig: Rig, down: float, rate: int) -> int:
    """The TLS agency stops for ``down`` s under ``rate`` frames/s, then catches up.

    Catch-up rate: what the agency took from its restart until it held
    everything the log held at the restart, over that time (live traffic
    goes on meanwhile, as it would).
    """
    lead, limit = 3.0, 90.0
    frames = int(rate * (lead + down + limit))
    capture = write_capture(rig.work / f"frames-{frames}.pcap", frames)
    tap = _tap_in_thread(rig, capture, rate, (lead + down + limit) * 2 + 60)
    time.sleep(lead)
    rig.stop_receiver("tls")
    time.sleep(down)
    counter = rig.counters["tls"]
    target, backlog = rig.logged(), rig.backlog("tls")
    rig.start_receiver("tls")
    began, start_count = time.monotonic(), counter.count()
    caught = wait_for(lambda: counter.count() >= target, limit, every=0.05)
    took = time.monotonic() - began
    got = counter.count() - start_count
    live = rate * 2
    if not caught:
        print(f"catch-up: not caught up in {limit:g} s ({got:,} PDUs of {target - start_count:,})")
    else:
        catch = got / took
        print(
            f"catch-up: backlog {backlog:,} PDUs after {down:g} s down; caught up in {took:.1f} s "
            f"(receiver start included) at {catch:,.0f} PDUs/s; live rate {live:,} PDUs/s: "
            f"{catch / live:.2f}x (goal: >= 3x)",
            flush=True,
        )
    if rig.tap is not None and rig.tap.poll() is None:
        rig.tap.send_signal(signal.SIGTERM)  # enough: the rest of the capture is not needed
    tap.join((lead + down + limit) * 2 + 90)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="500,1000,2000,4000,8000,16000",
                        help="offered frames/s per step (two PDUs a frame)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=4.0, help="per step")
    parser.add_argument("--relay-frames", type=int, default=100_000)
    parser.add_argument("--checkout", type=Path, default=HERE, help="run serve/receive from here")
    parser.add_argument("--tap-checkout", type=Path, default=HERE, help="run the tap from here")
    parser.add_argument("--idle", action="store_true", help="server CPU idle and at 1,000 PDUs/s")
    parser.add_argument(
        "--catchup",
        type=float,
        metavar="SECONDS",
        help="stop the TLS agency this long, then measure its catch-up",
    )
    parser.add_argument("--catchup-rate", type=int, default=1250, metavar="FRAMES")
    parser.add_argument("--all", action="store_true", help="run every step, lossy or not")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the work directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    if not rates or min(rates) < 1 or len(rates) > 20 or not 0.5 <= args.seconds <= 60:
        parser.error("--rates: 1 to 20 positive rates; --seconds: 0.5 to 60")
    work = Path(tempfile.mkdtemp(prefix="e2e-", dir=args.dir))
    rig = Rig(work, Checkout(args.checkout), Checkout(args.tap_checkout))
    print(f"e2e: serve/receive from {rig.checkout.root}, tap from {rig.tap_checkout.root}; "
          f"{os.cpu_count()} CPUs; work in {work}", flush=True)  # fmt: skip
    try:
        rig.setup()
        for kind in ("udp", "tls"):
            rig.start_receiver(kind)
        rig.start_server()
        if args.idle:
            return idle(rig, 10.0)
        if args.catchup is not None:
            return catchup(rig, args.catchup, args.catchup_rate)
        return stepped(rig, rates, args.seconds, args.relay_frames, args.all)
    finally:
        rig.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
