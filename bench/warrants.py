"""Thousands of intercepts: what the server costs per active warrant.

    python bench/warrants.py [--warrants 1000] [--rate 10000] [--seconds 20] [--idle 10]

Sets up a data directory with ``--warrants`` active full-content warrants
(two log streams each) of one agency whose TLS endpoint never answers (so
delivery waits and the figures are ingest's and the log's), runs the real
server (``MediationServer``) in this process, and feeds it ``--rate`` PDUs
a second in total, round robin over every stream, through
``MediationServer.ingest`` (ticks of 10 ms), for ``--seconds``. Then it
waits until every PDU is durable and leaves the server idle for ``--idle``
seconds.

Prints: offered and achieved rate, lossless (every PDU accepted and
durable, per stream), peak and final RSS, threads, open files, fdatasyncs
a second, and wake-ups a second (context switches of all the process's
threads, from /proc) under load and idle. The goals (issue #10): lossless,
RSS under 1 GiB, threads and open files bounded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio
from rig.processes import usage

ROOT = Path(__file__).resolve().parent.parent
TICK = 0.01
# A CmII PDU (IasProtocol: an OID first) and a CmCC PDU (IAS-CC-APDU, [1]
# payload) that pass ingest's checks; in-process ingest does not read the
# case identity (the tap link does), so every warrant can share them.
CMII_DER = b"\x30\x0b\x06\x03\x2a\x03\x04\xa0\x04\x80\x02\x43\x30"
CMCC_DER = b"\x30\x82\x05\xc4\x81\x82\x05\xc0" + bytes(1472)


def setup(base: Path, warrants: int) -> tuple[Path, object, list[str]]:
    """Data dir, registry key, the warrants' handles."""
    from rig.registry import bench_registry

    from mediation.warrants.model import CaseDetails, ContentLevel, Target, TargetKind
    from mediation.warrants.operations import add_warrant

    handles = []
    with bench_registry(base) as b:
        start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
        for n in range(warrants):
            mac = f"02:00:5e:00:{n // 256 % 256:02x}:{n % 256:02x}"
            details = CaseDetails(
                f"CASE-TEST-{n:06d}", (Target(TargetKind.MAC, mac),), (), "IAP-TEST"
            )
            warrant = add_warrant(
                b.registry, b.agency, details, ContentLevel.FULL, start,
                b.now + dt.timedelta(days=1), b.now,
            )  # fmt: skip
            handles.append(warrant.handle)
    return b.data, b.key, handles


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def counts() -> dict[str, int]:
    return {
        "threads": len(os.listdir("/proc/self/task")),
        "fds": len(os.listdir("/proc/self/fd")),
        "rss_mib": status_kib("VmRSS") // 1024,
        "hwm_mib": status_kib("VmHWM") // 1024,
    }


async def run(data: Path, key: object, handles: list[str], args: argparse.Namespace) -> dict:
    from mediation.server.app import MediationServer
    from mediation.server.config import RetrievalConfig, ServerConfig, TapsConfig

    config = ServerConfig(retrieval=RetrievalConfig(listen=""), taps=TapsConfig(tls_listen=""))
    server = MediationServer(data, key, config=config)  # type: ignore[arg-type]
    out: dict = {}
    async with trio.open_nursery() as nursery:
        began = time.perf_counter()
        await nursery.start(server.run)
        out["start_s"] = time.perf_counter() - began
        intake = server.intake
        assert intake is not None
        targets = [(h, k, d) for h in handles for k, d in (("cmII", CMII_DER), ("cmCC", CMCC_DER))]
        # Ignore the warrantActive notices: count only what the bench sends.
        base = {sid: s.next_seq for sid, s in intake.streams.items()}
        await trio.sleep(2)  # start-up notices stored
        out["after_start"] = counts()
        syncs0 = sum(s.stats.syncs for s in intake.streams.values())
        sw0, cpu0, t0 = usage(os.getpid()), time.process_time(), time.perf_counter()
        per_tick, sent, refused, i = args.rate * TICK, 0, 0, 0
        next_tick = trio.current_time()
        last = {}
        while time.perf_counter() - t0 < args.seconds:
            due = int((time.perf_counter() - t0) / TICK * per_tick) - sent
            for _ in range(max(0, due)):
                handle, kind, der = targets[i % len(targets)]
                i += 1
                appended = await server.ingest(handle, kind, der)
                if appended is None:
                    refused += 1
                else:
                    last[(handle, kind)] = appended
                sent += 1
            next_tick += TICK
            await trio.sleep_until(next_tick)
        elapsed = time.perf_counter() - t0
        for appended in last.values():
            await appended.durable()
        durable_elapsed = time.perf_counter() - t0
        out["load"] = counts()
        out["sent"], out["refused"] = sent, refused
        out["rate"] = sent / elapsed
        out["durable_s"] = durable_elapsed - elapsed
        out["cpu_load"] = (time.process_time() - cpu0) / elapsed
        out["wakeups_load"] = usage(os.getpid()).woke_since(sw0) / elapsed
        syncs = sum(s.stats.syncs for s in intake.streams.values())
        out["syncs_load"] = (syncs - syncs0) / elapsed
        stored = sum(s.next_seq - base.get(sid, 0) for sid, s in intake.streams.items())
        out["lossless"] = refused == 0 and stored >= sent and all(
            s.durable_seq == s.next_seq - 1 for s in intake.streams.values()
        )
        await trio.sleep(3)  # commits and checkpoints of the tail done
        sw1, cpu1 = usage(os.getpid()), time.process_time()
        await trio.sleep(args.idle)
        out["wakeups_idle"] = usage(os.getpid()).woke_since(sw1) / args.idle
        out["cpu_idle"] = (time.process_time() - cpu1) / args.idle
        out["idle"] = counts()
        out["streams"] = len(intake.streams)
        nursery.cancel_scope.cancel()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warrants", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=10_000, help="PDUs a second, in total")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--dir", type=Path, default=None, help="filesystem to test (default: cwd)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-warrants-", dir=args.dir or Path.cwd()) as tmp:
        began = time.perf_counter()
        data, key, handles = setup(Path(tmp), args.warrants)
        print(f"set up {args.warrants} warrants in {time.perf_counter() - began:.1f} s")
        out = trio.run(run, data, key, handles, args)
    print(f"warrants bench: {args.warrants} warrants, {out['streams']} streams, "
          f"{args.rate} PDUs/s offered for {args.seconds:.0f} s, on {os.cpu_count()} CPUs")
    print(f"  server start (streams opened):  {out['start_s']:8.1f} s")
    print(f"  achieved:                       {out['rate']:8.0f} PDUs/s "
          f"(sent {out['sent']}, refused {out['refused']}); last durable "
          f"{out['durable_s'] * 1000:.0f} ms after the last sent")
    print(f"  lossless:                       {'yes' if out['lossless'] else 'NO'}")
    print(f"  CPU under load / idle:          {out['cpu_load']:8.0%} / "
          f"{out['cpu_idle']:.1%} of a core")
    print(f"  fdatasyncs under load:          {out['syncs_load']:8.0f} /s")
    print(f"  wake-ups under load / idle:     {out['wakeups_load']:8.0f} /s / "
          f"{out['wakeups_idle']:.0f} /s")
    for phase in ("after_start", "load", "idle"):
        c = out[phase]
        print(f"  {phase:12s} threads {c['threads']:5d}  open files {c['fds']:5d}  "
              f"RSS {c['rss_mib']:5d} MiB  peak {c['hwm_mib']:5d} MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
