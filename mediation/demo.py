"""The main job: one intercept, end to end, on loopback, with the defaults.

What a carrier, the mediation server and an agency each do, in order:

1. the carrier initialises the server's data directory (SQLite registry,
   key file outside it, the server's CA);
2. the agency makes its certificate and gives the carrier its fingerprint;
3. the carrier registers the agency (CmII over UDP, CmCC over TLS) and a
   warrant on the sample capture's target MAC, content level ``full``,
   from case files (``--from FILE``, mode 0600, removed after), so no case
   data is ever in a process's arguments;
4. the agency starts ``mediate receive``;
5. the carrier starts ``mediate serve`` (its tap listener and retrieval
   on loopback ports);
6. the router runs the tap: ``mediate tap run --read`` replays the sample
   capture (fixtures/sample/sample.pcap, target and other subscribers'
   traffic) over the TLS tap link; the server stores every PDU durably
   before it acknowledges it, then delivers it;
7. the agency's files are checked the way a court would: tcpdump reads
   the content, sha256sum checks the hashes, ``mediate log verify``
   checks the server's evidence log, and ``mediate receive verify``
   checks what the agency holds against the server's signed checkpoints.

Everything happens under ``demo-data/`` (wiped at the start), and every
step is a ``mediate`` command a person would type; Python only writes the
case files and waits for the processes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "fixtures" / "sample" / "sample.pcap"
WORK = Path(os.environ.get("MEDIATION_DEMO_DIR", ROOT / "demo-data"))
TARGET_MAC = "02:00:5e:00:53:01"  # documentation MAC (RFC 7042)
CASE_ID = "DEMO-CASE-0001"  # obviously fake
TAP_NAME = "edge-1"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def mediate(*args: str, env: dict[str, str]) -> str:
    """Run ``mediate ARGS`` as a person would; show it and its output."""
    print("$ mediate " + shlex.join(args), flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "mediation", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    output = (done.stdout + done.stderr).rstrip()
    if output:
        print("  " + output.replace("\n", "\n  "), flush=True)
    if done.returncode != 0:
        raise SystemExit(f"demo: `mediate {args[0]}` failed (exit {done.returncode})")
    return done.stdout


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup(env: dict[str, str], ports: dict[str, int]) -> str:
    """Steps 1 to 3; returns the warrant handle."""
    agency = WORK / "agency"
    step("1. carrier: initialise the mediation server's data directory")
    mediate("init", env=env)
    step("2. agency: make a certificate for its receiver")
    mediate("receive", "make-cert", "--out", str(agency), "--name", "TEST-LEA", env=env)
    step("3. carrier: register the tap, the agency and the warrant (case data in files)")
    router = WORK / "router"
    router.mkdir(mode=0o700)
    credentials = str(router / f"{TAP_NAME}.tap")
    taps = f"127.0.0.1:{ports['taps']}"
    mediate("tap", "register", TAP_NAME, "--server", taps, "--out", credentials, env=env)
    udp = f"127.0.0.1:{ports['udp']}"
    tls = f"127.0.0.1:{ports['tls']}"
    cert = str(agency / "agency-cert.pem")
    udp_key = str(agency / "udp-key.toml")  # handed to the agency, as tap bundles are
    # The tap reads the capture with its recorded times: the window opens before them.
    start = (
        min(_first_capture_time(), dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=1)
    ).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    files = [
        case_file("agency-udp.toml", f'name = "TEST-LEA"\nudp = "{udp}"\nstreams = "cmii"\n'),
        case_file(
            "agency-tls.toml",
            f'name = "TEST-LEA"\ntls = "{tls}"\nca = "{cert}"\nstreams = "cmcc"\n',
        ),
        case_file(
            "warrant.toml",
            f'case-id = "{CASE_ID}"\nagency = "TEST-LEA"\ntarget = ["{TARGET_MAC}"]\n'
            f'content = "full"\nstart = "{start}"\nend = "{end}"\niap = "DEMO-IAP"\n'
            f'court-ref = "DEMO-ORDER-1"\ntap = ["{TAP_NAME}"]\n',
        ),
    ]
    mediate("agency", "add", "--from", str(files[0]), "--udp-key-out", udp_key, env=env)
    mediate("agency", "add", "--from", str(files[1]), env=env)
    out = mediate("add", "--from", str(files[2]), env=env)
    print(f"$ rm {' '.join(shlex.quote(str(f)) for f in files)}", flush=True)
    for path in files:  # from here on, only the encrypted registry holds the case data
        path.unlink()
    return out.split()[0]


def case_file(name: str, text: str) -> Path:
    """Write case data where only its owner can read it (mode 0600), and show it.

    The carrier's commands read it with ``--from FILE``, so the case
    identity, the target and the agency never appear in ``ps`` or in the
    shell's history.
    """
    from mediation.durable import write_new

    folder = WORK / "carrier"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / name
    write_new(path, text.encode())
    print(f"$ cat {path}  (mode 0600)", flush=True)
    print("  " + text.rstrip().replace("\n", "\n  "), flush=True)
    return path


def start_receiver(env: dict[str, str], ports: dict[str, int]) -> subprocess.Popen[str]:
    step("4. agency: start the receiver (UDP for CmII, TLS for CmCC, retrieval of gaps)")
    agency = WORK / "agency"
    args = [
        "receive",
        "--udp", f"127.0.0.1:{ports['udp']}",
        "--udp-key", str(agency / "udp-key.toml"),
        "--tls", f"127.0.0.1:{ports['tls']}",
        "--cert", str(agency / "agency-cert.pem"),
        "--key", str(agency / "agency-key.pem"),
        "--server-ca", str(WORK / "mediation" / "ca" / "server-ca.pem"),
        "--retrieve-from", f"127.0.0.1:{ports['retrieval']}",
        "--out", str(agency / "intercepts"),
        "--until-idle", "4",
    ]  # fmt: skip
    print("$ mediate " + shlex.join(args) + " &", flush=True)
    return subprocess.Popen(
        [sys.executable, "-m", "mediation", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _first_capture_time() -> dt.datetime:
    from mediation.evidence.pcap import PcapReader

    with PcapReader.open(SAMPLE) as capture:
        return next(iter(capture)).time


def serve_and_tap(env: dict[str, str], ports: dict[str, int]) -> int:
    """Steps 5 and 6: ``mediate serve``, then ``mediate tap run`` on the sample; PDUs stored."""
    step("5. carrier: start the mediation server (tap listener, retrieval)")
    config_file = WORK / "mediation.toml"
    config_file.write_text(
        f'[retrieval]\nlisten = "127.0.0.1:{ports["retrieval"]}"\n'
        f'[taps]\ntls_listen = "127.0.0.1:{ports["taps"]}"\n'
    )
    print(f"$ cat {config_file}")
    print("  " + config_file.read_text().rstrip().replace("\n", "\n  "))
    args = ["serve", "--config", str(config_file)]
    print("$ mediate " + shlex.join(args) + f" >{WORK / 'serve.log'} 2>&1 &", flush=True)
    with (WORK / "serve.log").open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mediation", *args], env=env, stdout=out, stderr=out
        )
    try:
        if (
            _wait(lambda: ((_status(server) or {}).get("taps") or {}).get("tls_listening"), 30)
            is None
        ):
            raise SystemExit("demo: the server did not start:\n" + (WORK / "serve.log").read_text())
        step("6. router: the tap replays the sample capture over the TLS tap link")
        credentials = str(WORK / "router" / f"{TAP_NAME}.tap")
        mediate("tap", "run", "--credentials", credentials, "--read", str(SAMPLE),
                "--speed", "full", env=env)  # fmt: skip
        status = _status(server) or {}
        stored = (status.get("ingest") or {}).get("accepted", 0)
        print(f"  {stored} PDUs stored in the evidence log (fdatasynced before acknowledged)")
        _wait(lambda: _delivered(_status(server)), 20)
        mediate("status", env=env)
        assert RECEIVER is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            RECEIVER.wait(timeout=30)  # it stops once idle: all delivered and checkpointed
    finally:
        print("$ kill -TERM %1  (mediate serve)", flush=True)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    return stored


def _status(server: subprocess.Popen[bytes]) -> dict | None:
    """The running server's status over its control socket; None when it does not answer."""
    from mediation.server.control import request, socket_path

    if server.poll() is not None:
        raise SystemExit("demo: the server stopped:\n" + (WORK / "serve.log").read_text())
    return request(socket_path(WORK / "mediation"), {"op": "status"})


def _delivered(status: dict | None) -> bool:
    rows = (status or {}).get("delivery") or []
    return bool(rows) and all(row.get("backlog") == 0 for row in rows)


def _wait(ready: object, limit: float) -> object:
    """Poll ``ready()`` (bounded by ``limit`` seconds); its first true value, or None."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = ready()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.1)
    return None


RECEIVER: subprocess.Popen[str] | None = None


class ReceiverOutput:
    """Collects the receiver's output in a thread; tells when it listens."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))
            if "listening: tls" in line:
                self.listening.set()
        self.listening.set()  # ended: stop waiting either way

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "\n".join(self.lines)


def check_outputs(env: dict[str, str], handle: str) -> None:
    step("7. agency: what arrived, checked as a court would")
    case_dir = WORK / "agency" / "intercepts" / handle
    print(f"  files in {case_dir}:")
    for path in sorted(case_dir.iterdir()):
        print(f"    {path.name:20} {path.stat().st_size:8} bytes")
    pcap = case_dir / "cmcc.pcap"
    if shutil.which("tcpdump") and pcap.exists():
        print(f"$ tcpdump -nn -r {pcap.name} | head -5")
        done = subprocess.run(
            ["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True, check=False
        )
        lines = done.stdout.splitlines()
        for line in lines[:5]:
            print("  " + line)
        print(f"  ({len(lines)} packets)")
    print("$ sha256sum -c *.sha256")
    for sums in sorted(case_dir.glob("*.sha256")):
        done = subprocess.run(
            ["sha256sum", "-c", sums.name], cwd=case_dir, capture_output=True, text=True
        )
        print("  " + done.stdout.strip().replace("\n", "\n  "))
    mediate("log", "verify", env=env)
    # The carrier hands the agency its log key; the agency checks what it holds.
    key_file = WORK / "agency" / "log-signing.pub"
    key_file.write_text(mediate("log", "key", env=env))
    mediate("receive", "verify", str(case_dir.parent), "--log-key", str(key_file), env=env)


def main(argv: list[str] | None = None) -> int:
    global RECEIVER
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    env = dict(os.environ)
    env["MEDIATION_DATA_DIR"] = str(WORK / "mediation")
    env["MEDIATION_KEY_FILE"] = str(WORK / "registry.key")
    ports = {
        "udp": free_port(socket.SOCK_DGRAM),
        "tls": free_port(socket.SOCK_STREAM),
        "retrieval": free_port(socket.SOCK_STREAM),
        "taps": free_port(socket.SOCK_STREAM),
    }
    print(f"demo: one intercept end to end on loopback; everything under {WORK}")
    handle = setup(env, ports)
    RECEIVER = start_receiver(env, ports)
    output = ReceiverOutput(RECEIVER)
    if not output.listening.wait(timeout=15) or RECEIVER.poll() is not None:
        raise SystemExit("demo: the receiver did not start:\n" + output.text())
    try:
        stored = serve_and_tap(env, ports)
    finally:
        if RECEIVER.poll() is None:
            RECEIVER.send_signal(signal.SIGTERM)
        RECEIVER.wait(timeout=30)
        print("  receiver said:\n    " + output.text().strip().replace("\n", "\n    "))
    check_outputs(env, handle)
    print(f"\ndemo: done: {stored} PDUs stored and delivered; see {WORK}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
