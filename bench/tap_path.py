"""The tap process in the whole path: two checkouts' taps, alternating, into one server.

    python bench/tap_path.py --old /work/main [--new .] [--rates 500,5000] [--seconds S]
                             [--rounds R] [--profile PREFIX]

One rig as ``bench/e2e.py`` sets it up (``mediate serve`` and two ``mediate
receive`` from this checkout), then, per round and per rate (frames a
second, two PDUs a frame), ``mediate tap run --read FILE --speed N`` from
the old checkout and then from the new one, so both meet the same server
and the same load. Per run: the tap's CPU per PDU (user + system from
``wait4``, start-up included: a start costs ~0.5-0.9 s of CPU, the
imports and the two ASN.1 compiles; ``--rates 1`` measures it), its
voluntary and involuntary context switches, the rate achieved, the
latency, and the tap's own summary line (PDUs, batches). ``--profile P``
runs each tap under cProfile into ``P-NAME-RATE.prof`` (the main thread
only). Every wait is bounded (``bench/rig``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "bench"))

import e2e  # noqa: E402  (after the path is set)
import rig.processes as processes  # noqa: E402
from rig.processes import Checkout, Rig  # noqa: E402

_rusage: dict[str, os.struct_rusage] = {}
_wait4 = os.wait4


def _recording_wait4(pid: int, options: int) -> tuple[int, int, os.struct_rusage]:
    """``os.wait4`` that keeps the reaped tap's rusage (its context switches)."""
    result = _wait4(pid, options)
    if result[0]:
        _rusage["tap"] = result[2]
    return result


def _profiled(checkout: Checkout, out: str) -> Checkout:
    """The checkout with its ``mediate`` run under cProfile into ``out``."""

    class Profiled(Checkout):
        def argv(self, *args: str) -> list[str]:
            return [self.python, "-m", "cProfile", "-o", out, "-m", "mediation", *args]

    return Profiled(checkout.root)


def one(rig: Rig, checkout: Checkout, rate: int, seconds: float) -> str:
    """One tap run at ``rate`` frames/s; its line."""
    rig.tap_checkout = checkout
    step = e2e.run_step(rig, rate, seconds)
    ru = _rusage.get("tap")
    switches = f"{ru.ru_nvcsw} vol, {ru.ru_nivcsw} invol" if ru else "?"
    cpu = f"{ru.ru_utime + ru.ru_stime:.2f} s: {ru.ru_stime:.2f} s system" if ru else "?"
    lat = step.latency or (0.0, 0.0)
    out = (rig.work / "tap.out").read_text(errors="replace").strip().splitlines()
    return (
        f"{checkout.root.name:14} {step.offered:7,.0f} PDUs/s offered, {step.achieved:7,.0f} "
        f"achieved, lost {step.lost}; tap {step.per_pdu['tap']:6.1f} us/PDU ({cpu}; "
        f"{switches} switches); serve {step.per_pdu['serve']:5.1f} us/PDU; "
        f"p50/p99 {lat[0] * 1e3:.0f}/{lat[1] * 1e3:.0f} ms; held {step.held}, "
        f"UDP socket drops {step.socket_drops}\n    " + "\n    ".join(out[-3:])
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--new", type=Path, default=HERE)
    parser.add_argument("--rates", default="500,5000", help="frames/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", default=None, metavar="PREFIX")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    if not rates or min(rates) < 1 or not 1 <= args.rounds <= 10 or not 1 <= args.seconds <= 60:
        parser.error("--rates: positive; --rounds: 1 to 10; --seconds: 1 to 60")
    processes.os.wait4 = _recording_wait4  # type: ignore[attr-defined]
    work = Path(tempfile.mkdtemp(prefix="tap-path-")).resolve()
    rig = Rig(work, Checkout(HERE), Checkout(HERE))
    try:
        rig.setup()
        for kind in ("udp", "tls"):
            rig.start_receiver(kind)
        rig.start_server()
        for _round in range(args.rounds):
            for rate in rates:
                for root in (args.old, args.new):
                    checkout = Checkout(root)
                    if args.profile:
                        name = f"{args.profile}-{checkout.root.name}-{rate}.prof"
                        checkout = _profiled(checkout, name)
                    print(one(rig, checkout, rate, args.seconds), flush=True)
            print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}", flush=True)
    finally:
        rig.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
