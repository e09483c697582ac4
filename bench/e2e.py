"""The whole path as separate processes: tap, server, two agencies, against a bare relay.

    python bench/e2e.py [--rates 500,1000,...] [--seconds S] [--checkout DIR]
    python bench/e2e.py --idle            server CPU idle and at 1,000 PDUs/s (and latency)
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
90 % of the offered; one that lost nothing but achieved less is marked
BEHIND (the tap could not keep up), one that lost PDUs LOSSY. Stepping
ends after the first step that is not lossless (``--all``: every step
runs). The summary gives the highest lossless rate, its ratio to the
relay, and the highest lossless rate whose steady p99 is under the goal's
20 ms.

Baseline in the same run: a bare Python relay (one process) reading the
same frames from memory, appending each to a file with fdatasync every
256, sending each by UDP and by TLS to a sink process.

``--checkout DIR`` runs ``mediate serve`` and ``mediate receive`` from
another checkout (its ``.venv``), so the same bench measures any branch;
the tap runs from ``--tap-checkout`` (default: this one, which has
``--speed N``). ``--apart DIR`` puts the agencies' directories and the
tap's spool under DIR (a tmpfs, say), so only the server's log writes to
the work directory's disk, as when each is its own machine. ``--files``
adds a files endpoint for the CC stream (``cmcc-*.pcap`` under the work
directory: capture to disk on the server's own disk). Every wait is
bounded in time; every step in count.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "bench"))

from rig.capture import write_capture  # noqa: E402  (after the path is set)
from rig.processes import Checkout, Rig, Usage, udp_drops, usage, wait_for  # noqa: E402
from rig.relay import relay_baseline  # noqa: E402
from rig.stages import breakdown, read_trace, report, report_slowest, slowest  # noqa: E402

# One step -------------------------------------------------------------------------------

WARM_UP = 1.0  # s of each step's capture left out of the steady latency
P99_GOAL = 0.020  # s: issue #10's capture-to-agency p99


@dataclasses.dataclass
class Step:
    offered: float  # PDUs/s
    achieved: float
    logged: int
    held: dict[str, int]
    latency: tuple[float, float] | None  # median, p99 (s)
    steady: tuple[float, float] | None  # the same, frames captured after the step's first second
    cpu: dict[str, float]
    peak: dict[str, int]
    per_pdu: dict[str, float]  # CPU microseconds per PDU
    waited: dict[str, float]  # seconds runnable but waiting for a core (run queue)
    socket_drops: int = 0  # at the UDP agency's socket (/proc/net/udp)
    note: str = ""
    stages: str = ""  # --stages: the steady latency by stage (rig/stages.py)

    @property
    def lost(self) -> int:
        return max(self.logged - min(self.held.values()), 0) if self.held else self.logged

    @property
    def lossless(self) -> bool:
        return self.logged > 0 and self.lost == 0 and self.achieved >= 0.9 * self.offered

    @property
    def verdict(self) -> str:
        """lossless; BEHIND (nothing lost, under 90% of the offered rate achieved); LOSSY."""
        if self.lossless:
            return "lossless"
        return "BEHIND" if self.logged > 0 and self.lost == 0 else "LOSSY"


def run_step(rig: Rig, rate: int, seconds: float) -> Step:
    """Offer ``rate`` frames/s for ``seconds``; wait until delivered; measure."""
    frames = max(int(rate * seconds), 2)
    capture = write_capture(rig.work / f"frames-{frames}.pcap", frames)
    before, held0, logged0 = rig.usages(), _held(rig), rig.logged()
    drops0 = udp_drops(rig.ports["udp"])
    for counter in rig.counters.values():
        counter.latencies()  # skip what earlier steps wrote
        counter.stamps.clear()
    _elapsed, tap, note = rig.run_tap(capture, rate, seconds * 4 + 60)
    _drain(rig)
    after, held1, logged1 = rig.usages(), _held(rig), rig.logged()
    logged = logged1 - logged0
    held = {k: held1[k] - held0[k] for k in held1}
    lat: list[tuple[float, float]] = []
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
    waited = {name: after[name].waited_since(before[name]) for name in after}
    waited["tap"] = tap.waited_since(Usage(0.0, 0))
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
        latency=_percentiles([seconds for _, seconds in lat]),
        steady=_percentiles(_after_warm_up(lat)),
        cpu=cpu,
        peak=peak,
        per_pdu=per_pdu,
        waited=waited,
        socket_drops=udp_drops(rig.ports["udp"]) - drops0,
        note=note,
        stages=_stages(rig, lat, seconds),
    )


def _stages(rig: Rig, lat: list[tuple[float, float]], seconds: float) -> str:
    """With --stages: the steady PDUs' latency by stage, from the tap's trace and the lines."""
    trace = rig.tap_env.get("MEDIATION_TAP_TRACE")
    if not trace or not lat:
        return ""
    batches = read_trace(Path(trace))
    since = min(captured for captured, _ in lat) + WARM_UP
    stamps = {name: counter.stamps for name, counter in rig.counters.items()}
    steady = [b for b in batches if b.first >= since]
    lines = report(breakdown(batches, stamps, since), steady, max(seconds - WARM_UP, 0.1))
    tails = report_slowest(slowest(batches, stamps, since))
    return f"{lines}\n{tails}" if tails else lines


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


def _after_warm_up(lat: list[tuple[float, float]]) -> list[float]:
    """Latencies of frames captured after the step's first second.

    Each step starts a new tap process: frames it captures before its link
    to the server is up wait in its spool (hundreds of ms), which a tap
    that runs for days meets once. The steady figure leaves them out.
    """
    if not lat:
        return []
    start = min(captured for captured, _ in lat) + WARM_UP
    return [seconds for captured, seconds in lat if captured >= start]


def _percentiles(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    values.sort()
    return statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))]


# Reports ---------------------------------------------------------------------------------

PROCESSES = ("tap", "serve", "receive-udp", "receive-tls")


def print_step(step: Step) -> None:
    lat = f"{_ms(step.latency)} (after the first second {_ms(step.steady)})"
    held = " ".join(f"{k}={v}" for k, v in step.held.items())
    print(
        f"offered {step.offered:>7,.0f}/s achieved {step.achieved:>7,.0f}/s  log {step.logged:>7}  "
        f"{held}  lost {step.lost:>6} (UDP socket drops {step.socket_drops})  "
        f"latency ms med/p99 {lat}  "
        f"{step.verdict}",
        flush=True,
    )
    cells = [
        f"{name} {step.cpu.get(name, 0):.1f}s {step.per_pdu.get(name, 0):.0f}us/PDU "
        f"{step.peak.get(name, 0) / 2**20:.0f}MiB"
        for name in PROCESSES
    ]
    print("    cpu, per PDU, peak RSS: " + "; ".join(cells), flush=True)
    queued = [
        f"{name} {step.waited.get(name, 0):.2f}s "
        f"({step.waited.get(name, 0) / max(step.cpu.get(name, 0), 1e-9):.2f} per CPU s)"
        for name in PROCESSES
    ]
    print("    waited for a core (run queue): " + "; ".join(queued), flush=True)
    if step.note:
        print(f"    tap: {step.note}", flush=True)
    if step.stages:
        print("    stages after the first second:\n" + step.stages, flush=True)


def _ms(latency: tuple[float, float] | None) -> str:
    return "-" if latency is None else f"{latency[0] * 1e3:.1f}/{latency[1] * 1e3:.1f}"


def stepped(rig: Rig, rates: list[int], seconds: float, relay_frames: int, keep_going: bool) -> int:
    relay, relay_loss = relay_baseline(rig, relay_frames)
    print(f"bare relay: {relay:,.0f} frames/s (append + fdatasync/256, UDP + TLS send); "
          f"UDP sink lost {relay_loss:.1%}", flush=True)  # fmt: skip
    best: Step | None = None
    quick: Step | None = None  # the highest lossless step with its steady p99 under the goal
    for rate in rates:
        step = run_step(rig, rate, seconds)
        print_step(step)
        if step.lossless:
            best = best if best and best.achieved > step.achieved else step
            if step.steady and step.steady[1] < P99_GOAL:
                quick = quick if quick and quick.achieved > step.achieved else step
        elif not keep_going:
            break
    relay_after, _ = relay_baseline(rig, relay_frames)
    relay = max(relay, relay_after)
    print(f"bare relay again: {relay_after:,.0f} frames/s", flush=True)
    if best is None:
        print("highest lossless rate: none (the first step lost PDUs or fell behind)")
        return 0
    lat, steady = best.latency or (0.0, 0.0), best.steady or (0.0, 0.0)
    print(
        f"highest lossless rate: {best.offered:,.0f} PDUs/s offered, {best.achieved:,.0f} achieved "
        f"(p99 latency {lat[1] * 1e3:.1f} ms, {steady[1] * 1e3:.1f} after the tap's first second); "
        f"ratio to the bare relay "
        f"{best.achieved / relay:.3f} (goal: >= 30,000 PDUs/s, >= 0.5, p99 < 20 ms)"
    )
    goal = f"p99 under {P99_GOAL * 1e3:.0f} ms after the tap's first second"
    if quick is None or quick.steady is None:
        print(f"{goal}: at no lossless step")
    else:
        print(f"{goal}: up to {quick.offered:,.0f} PDUs/s offered ({quick.steady[1] * 1e3:.1f} ms)")
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
    for counter in rig.counters.values():
        counter.latencies()  # only PDUs that arrive in the window count
    a, began, batches = usage(pid), time.monotonic(), _tap_batches(rig)
    before = rig.usages()
    time.sleep(seconds)
    b, took, batches = usage(pid), time.monotonic() - began, _tap_batches(rig) - batches
    print(f"1,000 PDUs/s: {_load(a, b, took)} (goal: < 10%)", flush=True)
    lat = _percentiles([s for c in rig.counters.values() for _, s in c.latencies()[0]])
    if lat is not None:  # the other goal at the same rate: both agencies' PDUs in the window
        print(f"  capture-to-agency median {lat[0] * 1e3:.1f} ms, p99 {lat[1] * 1e3:.1f} ms "
              "(goal: p99 < 20 ms)", flush=True)  # fmt: skip
    if batches > 0:  # the tap's batch size varies with its load: the fixed cost is per batch
        cpu, woke = 1e6 * (b.cpu - a.cpu) / batches, b.woke_since(a) / batches
        print(f"  tap batches {batches / took:,.0f}/s; server {cpu:,.0f} us and "
              f"{woke:.1f} wake-ups per batch", flush=True)  # fmt: skip
    _receivers_load(before, rig.usages(), time.monotonic() - began)
    tap.join(seconds * 4 + 90)
    return 0


def _receivers_load(before: dict[str, Usage], after: dict[str, Usage], took: float) -> None:
    """Each receiver's CPU and wake-ups over the same interval as the server's."""
    for name in sorted(before):
        if name.startswith("receive-") and name in after:
            a, b = before[name], after[name]
            print(
                f"  {name}: {100 * (b.cpu - a.cpu) / took:.1f}% of a core, "
                f"{b.woke_since(a) / took:,.0f} wake-ups/s",
                flush=True,
            )


def _tap_batches(rig: Rig) -> int:
    """Tap batches the server has taken so far (``mediate status``)."""
    return int(rig.status().get("taps", {}).get("batches", 0))


def _load(a: Usage, b: Usage, took: float) -> str:
    return (
        f"server {100 * (b.cpu - a.cpu) / took:.1f}% of a core, "
        f"{b.woke_since(a) / took:,.0f} wake-ups/s (voluntary context switches)"
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
    restarted, start_count = time.monotonic(), counter.count()
    rig.start_receiver("tls")
    wait_for(lambda: counter.count() > start_count, limit, every=0.02)
    began, first_count = time.monotonic(), counter.count()
    before = rig.usages()
    caught = wait_for(lambda: counter.count() >= target, limit, every=0.05)
    ended, held = time.monotonic(), counter.count()
    took = ended - began
    # Busy or waiting: each process's share of a core while it caught up.
    busy = {name: (u.cpu - before[name].cpu) / took for name, u in rig.usages().items()}
    got = held - first_count
    live = rate * 2
    if not caught:
        print(f"catch-up: not caught up in {limit:g} s ({got:,} PDUs of {target - start_count:,})")
    else:
        catch = got / took if took > 0 else 0.0
        print(
            f"catch-up: backlog {backlog:,} PDUs after {down:g} s down; first envelope "
            f"{began - restarted:.1f} s after the restart, then caught up in {took:.1f} s at "
            f"{catch:,.0f} PDUs/s; live rate {live:,} PDUs/s: {catch / live:.2f}x (goal: >= 3x)",
            flush=True,
        )
        # The agency's view: from its return, the reconnect delay included.
        whole = (held - start_count) / (ended - restarted)
        print(f"  from the restart: caught up in {ended - restarted:.1f} s, {whole:,.0f} PDUs/s "
              f"({whole / live:.2f}x live)", flush=True)  # fmt: skip
        print("  CPU while catching up: " + ", ".join(
            f"{name} {100 * share:.0f}% of a core" for name, share in busy.items()
        ), flush=True)  # fmt: skip
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
    parser.add_argument("--stages", action="store_true", help="latency by stage (rig/stages.py)")
    parser.add_argument("--linger", type=float, metavar="MS", help="the tap's --linger")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the work directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--apart",
        type=Path,
        metavar="DIR",
        help="the agencies' directories and the tap's spool under DIR (say a tmpfs, "
        "/dev/shm): off the server's disk, as on separate machines",
    )
    parser.add_argument(
        "--files",
        action="store_true",
        help="a files endpoint for the CC stream too (pcap files on the server's disk)",
    )
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    if not rates or min(rates) < 1 or len(rates) > 20 or not 0.5 <= args.seconds <= 60:
        parser.error("--rates: 1 to 20 positive rates; --seconds: 0.5 to 60")
    work = Path(tempfile.mkdtemp(prefix="e2e-", dir=args.dir)).resolve()
    apart = None if args.apart is None else Path(tempfile.mkdtemp(prefix="e2e-", dir=args.apart))
    rig = Rig(work, Checkout(args.checkout), Checkout(args.tap_checkout), apart)
    print(f"e2e: serve/receive from {rig.checkout.root}, tap from {rig.tap_checkout.root}; "
          f"{os.cpu_count()} CPUs; work in {work}"
          f"{'' if apart is None else f'; agencies and spool in {apart}'}", flush=True)  # fmt: skip
    if args.stages:  # the tap traces its batches (mediation/tap/trace.py); lines kept
        rig.tap_env["MEDIATION_TAP_TRACE"] = str(work / "tap-trace.txt")
        for counter in rig.counters.values():
            counter.keep = True
    rig.files = args.files
    if args.linger is not None:
        rig.tap_args += ["--linger", f"{args.linger:g}"]
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
            if apart is not None:
                shutil.rmtree(apart, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
