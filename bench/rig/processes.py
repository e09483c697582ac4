"""The processes of the whole path, set up through the CLI; /proc; what the agencies hold."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mediation.protocol.framing import MessageBuffer

CASE_ID = "CASE-TEST-0001"
TAP = "edge-1"
TICK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Usage:
    """CPU seconds (user + system, all threads) and peak RSS of a process."""

    cpu: float
    peak_rss: int  # bytes
    threads: dict[int, int] = dataclasses.field(default_factory=dict)  # thread: wake-ups
    queued: dict[int, int] = dataclasses.field(default_factory=dict)  # thread: run-queue ns

    def waited_since(self, earlier: Usage) -> float:
        """Seconds its threads spent runnable but waiting for a core since ``earlier``
        (``/proc/PID/task/TID/schedstat``, second field), counted as ``woke_since``."""
        return sum(n - earlier.queued.get(tid, 0) for tid, n in self.queued.items()) / 1e9

    def woke_since(self, earlier: Usage) -> int:
        """Voluntary context switches since ``earlier``, every thread: per thread, so a
        thread that ended in between (trio's idle worker threads do) takes nothing
        away; what it did after ``earlier`` is not counted (a slight undercount)."""
        return sum(n - earlier.threads.get(tid, 0) for tid, n in self.threads.items())


def usage(pid: int) -> Usage:
    """Read /proc for a running process."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    peak = peak_rss(pid)
    threads = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as handle:
            for line in handle:
                if line.startswith("voluntary_ctxt_switches:"):
                    threads[int(task)] = int(line.split()[1])
    return Usage(cpu, peak, threads, run_queue(pid))


def peak_rss(pid: int) -> int:
    """The process's peak RSS in bytes (``VmHWM``, its own since its exec; 0 once gone).

    Not ``wait4``'s ``ru_maxrss``: Linux keeps the larger of the process's and
    the image it replaced at exec, which is this bench's own fork, so a tap's
    figure was the bench's RSS (66 MiB, then 230-360 MiB as its lists grew).
    """
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_queue(pid: int, into: dict[int, int] | None = None) -> dict[int, int]:
    """Each thread's nanoseconds runnable but not running (the kernel's run-queue
    delay), added to ``into``: a thread that ended keeps its last reading."""
    queued = {} if into is None else into
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            path = f"/proc/{pid}/task/{task}/schedstat"
            with contextlib.suppress(OSError, IndexError, ValueError), open(path) as handle:
                queued[int(task)] = int(handle.read().split()[1])
    return queued


class Checkout:
    """Where ``mediate`` runs from: a checkout and its .venv's Python."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        venv = self.root / ".venv" / "bin" / "python"
        self.python = str(venv) if venv.exists() else sys.executable

    def argv(self, *args: str) -> list[str]:
        """``python -m mediation ARGS``: run it with ``cwd=root`` (``-m`` looks there first)."""
        return [self.python, "-m", "mediation", *args]

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {**base, "PYTHONPATH": str(self.root)}


class Rig:
    """One data directory, its agencies' directories, and the processes on them."""

    def __init__(
        self, work: Path, checkout: Checkout, tap_checkout: Checkout, apart: Path | None = None
    ) -> None:
        """``apart``: where the agencies' directories and the tap's spool go instead of
        ``work`` (e2e.py --apart: each on a disk of its own, as on a deployment)."""
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
        self.agency = (apart or work) / "agency"
        self.server: subprocess.Popen[bytes] | None = None
        self.receivers: dict[str, subprocess.Popen[bytes]] = {}
        self.tap: subprocess.Popen[bytes] | None = None
        self.tap_env: dict[str, str] = {}  # more environment for the tap (e2e.py --stages)
        self.tap_args: list[str] = []  # more options for `tap run` (e2e.py --linger)
        if apart is not None:
            self.tap_args += ["--spool", str(apart / f"{TAP}.tap.spool")]
        self.files = False  # a files endpoint for CmCC too (e2e.py --files)
        self.counters = {name: AgencyCounter(self.agency / name) for name in ("udp", "tls")}

    def mediate(self, *args: str) -> str:
        done = subprocess.run(
            self.checkout.argv(*args), env=self.checkout.env(self.env), cwd=self.checkout.root,
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
        if self.files:  # capture to disk: the server writes pcap files beside its log
            path = cases / "files.toml"
            files = self.work / "files"
            path.write_text(f'name = "TEST-LEA"\nfiles = "{files}"\nstreams = "cmcc"\n')
            path.chmod(0o600)
            self.mediate("agency", "add", "--from", str(path))
        return self.mediate("add", "--from", str(cases / "warrant.toml")).split()[0]

    def start_server(self) -> None:
        config = self.work / "mediation.toml"
        config.write_text(
            f'[retrieval]\nlisten = "127.0.0.1:{self.ports["retrieval"]}"\n'
            f'[taps]\ntls_listen = "127.0.0.1:{self.ports["taps"]}"\n'
        )
        with (self.work / "serve.log").open("ab") as log:
            self.server = subprocess.Popen(
                self.checkout.argv("serve", "--config", str(config)), cwd=self.checkout.root,
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
                env=self.checkout.env(self.env), stdout=log, stderr=log, cwd=self.checkout.root,
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
            "--read", str(capture), "--speed", f"{rate:g}", "-q", *self.tap_args,
        )  # fmt: skip
        out = self.work / "tap.out"
        with out.open("wb") as handle:
            began = time.monotonic()
            process = subprocess.Popen(
                argv,
                env=self.tap_checkout.env({**self.env, **self.tap_env}),
                stdout=handle,
                stderr=handle,
                cwd=self.tap_checkout.root,  # `python -m` looks in the working directory first
            )
            self.tap = process
            return self._reap(process, began, limit, out)

    def _reap(
        self, process: subprocess.Popen[bytes], began: float, limit: float, out: Path
    ) -> tuple[float, Usage, str]:
        deadline = began + limit
        queued: dict[int, int] = {}  # read while it runs: /proc forgets it at exit
        peak = 0
        while True:
            run_queue(process.pid, queued)
            peak = max(peak, peak_rss(process.pid))
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
        cpu = rusage.ru_utime + rusage.ru_stime
        return elapsed, Usage(cpu, peak, queued=queued), text

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
        self.buffers: dict[Path, MessageBuffer] = {}  # a raw file may end inside a message
        self.envelopes = 0
        # With ``keep``: (capture, the server's mediationTime, arrival) of every line
        # :meth:`latencies` read, epoch seconds (e2e.py --stages); else not kept.
        self.keep = False
        self.stamps: list[tuple[float, float | None, float]] = []

    def count(self) -> int:
        for path in self.out.glob("*/cm*.raw"):
            self.envelopes += self._scan(path)
        return self.envelopes

    def _scan(self, path: Path) -> int:
        """Envelopes (context tag 0) in what was appended to ``path`` since the last scan."""
        from mediation.protocol.framing import MessageBuffer  # the project's one BER framer

        buffer = self.buffers.setdefault(path, MessageBuffer())
        offset = self.offsets.get(path, 0)
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
        self.offsets[path] = offset + len(data)
        buffer.feed(data)
        return sum(message[0] == 0xA0 for message in buffer.messages())

    def latencies(self) -> tuple[list[tuple[float, float]], float | None, float | None]:
        """New CmII lines: (capture time, capture-to-agency seconds), first and last arrival."""
        out: list[tuple[float, float]] = []
        first = last = None
        for path in self.out.glob("*/cmii.jsonl"):
            offset = self.offsets.get(path, 0)
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
            end = data.rfind(b"\n") + 1
            self.offsets[path] = offset + end
            for line in data[:end].splitlines():
                parsed = json.loads(line)
                captured, arrived = _times(parsed)
                if arrived is None:
                    continue
                if self.keep and captured is not None:
                    self.stamps.append((captured, _epoch(parsed.get("mediationTime")), arrived))
                first = arrived if first is None else min(first, arrived)
                last = arrived if last is None else max(last, arrived)
                if captured is not None:
                    out.append((captured, arrived - captured))
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
