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
5. the server runs; the sample capture (fixtures/sample/sample.pcap,
   target and other subscribers' traffic) is replayed through the tap
   core as if captured now, and every PDU is stored, then delivered;
6. the agency's files are checked the way a court would: tcpdump reads
   the content, sha256sum checks the hashes, ``mediate log verify``
   checks the server's evidence log, and ``mediate receive verify``
   checks what the agency holds against the server's signed checkpoints.

Everything happens under ``demo-data/`` (wiped at the start). Until tap
links exist (a later issue), the server runs inside this process so the
replayed capture can be handed to its ingest directly; everything else
runs as the same ``mediate`` commands a person would type.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "fixtures" / "sample" / "sample.pcap"
WORK = Path(os.environ.get("MEDIATION_DEMO_DIR", ROOT / "demo-data"))
TARGET_MAC = "02:00:5e:00:53:01"  # documentation MAC (RFC 7042)
CASE_ID = "DEMO-CASE-0001"  # obviously fake


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
    step("3. carrier: register the agency and the warrant (case data in files, not in argv)")
    udp = f"127.0.0.1:{ports['udp']}"
    tls = f"127.0.0.1:{ports['tls']}"
    cert = str(agency / "agency-cert.pem")
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
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
            'court-ref = "DEMO-ORDER-1"\n',
        ),
    ]
    mediate("agency", "add", "--from", str(files[0]), env=env)
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


async def serve_and_replay(env: dict[str, str], ports: dict[str, int], handle: str) -> int:
    """Step 5: the server in this process; the sample replayed into its ingest."""
    from mediation.evidence.pcap import PcapReader
    from mediation.server.app import MediationServer
    from mediation.server.config import ServerConfig, load_config
    from mediation.tap.replay import Tap
    from mediation.warrants.keys import read_key_file
    from mediation.warrants.registry import load_snapshot

    step("5. mediation server: serve, and replay the sample capture through the tap")
    data_dir = WORK / "mediation"
    key = read_key_file(Path(env["MEDIATION_KEY_FILE"]))
    config_file = WORK / "mediation.toml"
    config_file.write_text(f'[retrieval]\nlisten = "127.0.0.1:{ports["retrieval"]}"\n')
    config: ServerConfig = load_config(config_file)
    [warrant] = [w for w in load_snapshot(data_dir, key).warrants if w.handle == handle]
    tap = Tap.for_warrant(warrant)
    server = MediationServer(data_dir, key, config=config)
    stored = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        with PcapReader.open(SAMPLE) as capture:
            packets = list(capture)
        # As if captured now: keep the capture's spacing, start a second ago.
        shift = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1) - packets[0].time
        receipts = []
        for packet in packets:
            for pdu in tap.process(packet.data, packet.time + shift):
                receipt = await server.ingest(handle, pdu.kind, pdu.der, pdu.time)
                if receipt is not None:
                    receipts.append(receipt)
        for receipt in receipts:
            await receipt.durable()
            stored += 1
        print(
            f"  {len(packets)} frames replayed; {tap.counters.matched} were the target's; "
            f"{stored} PDUs stored in the evidence log (fdatasynced)",
            flush=True,
        )
        await _until_delivered(server, stored)
        await _until_signed(server)
        await trio.to_thread.run_sync(lambda: mediate("status", env=env))
        receiver_done = trio.Event()
        nursery.start_soon(_wait_for_receiver, receiver_done)
        with trio.move_on_after(30):
            await receiver_done.wait()
        nursery.cancel_scope.cancel()
    return stored


RECEIVER: subprocess.Popen[str] | None = None


async def _wait_for_receiver(done: trio.Event) -> None:
    assert RECEIVER is not None
    await trio.to_thread.run_sync(RECEIVER.wait)
    done.set()


async def _until_delivered(server: object, stored: int, limit: float = 20.0) -> None:
    """Wait (bounded) until every endpoint has had every stored PDU."""
    with trio.move_on_after(limit):
        while True:
            rows = server.delivery_rows()  # type: ignore[attr-defined]
            done = sum(
                (row.acknowledged if row.acknowledged is not None else row.delivered) or 0
                for row in rows
            )
            if rows and done >= stored:
                return
            await trio.sleep(0.1)


async def _until_signed(server: object, limit: float = 5.0) -> None:
    """Wait (bounded) until a signed checkpoint covers each stream's last record.

    The log signs at least once a second; delivery sends each checkpoint
    right after the records it covers, so the agency can check them all.
    """
    with trio.move_on_after(limit):
        while True:
            logs = list(server.intake.streams.values())  # type: ignore[attr-defined]
            if all(
                log.latest_checkpoint is not None
                and log.latest_checkpoint.last_seq >= log.durable_seq
                for log in logs
            ):
                return
            await trio.sleep(0.1)


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
    step("6. agency: what arrived, checked as a court would")
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
    }
    print(f"demo: one intercept end to end on loopback; everything under {WORK}")
    handle = setup(env, ports)
    RECEIVER = start_receiver(env, ports)
    output = ReceiverOutput(RECEIVER)
    if not output.listening.wait(timeout=15) or RECEIVER.poll() is not None:
        raise SystemExit("demo: the receiver did not start:\n" + output.text())
    try:
        stored = trio.run(serve_and_replay, env, ports, handle)
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
