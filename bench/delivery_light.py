"""Delivery at light traffic, in process: trio task steps, TLS sends and CPU per commit round.

    python bench/delivery_light.py [--rounds N] [--code CHECKOUT]

One agency with a TLS and a UDP endpoint, each carrying two CmCC streams
(two warrants); every 10 ms a round of ten PDUs per stream is ingested
(about 2,000 PDUs/s), the rounds each their own commits of the log, as a
tap's batches are at light traffic. Prints, per round: the process's CPU
(server and both agencies, which run in it), the TLS endpoint's sends,
the trio task steps of the delivery tasks (the link's tasks, the UDP
endpoint's task) and of everything, and the thread's CPU spent in the
delivery tasks' steps (their sends included; the agencies' and the log's
excluded: the figure to compare for delivery itself). Wall-clock rates are not the point
here; steps and sends are load-independent, and CPU is compared between
checkouts run one after the other (``--code /work/main``, then without).
The agencies are the tests' (tests/delivery_agency.py).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
CODE = sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv[:-1] else str(HERE)
sys.path[:0] = [CODE, str(HERE / "tests")]

import trio  # noqa: E402  (after the path is set)
from delivery_agency import TlsAgency, UdpAgency  # noqa: E402
from delivery_support import (  # noqa: E402
    Site,
    cc_pdu,
    fast_config,
    make_cert,
    tls_endpoint,
    udp_endpoint,
    wait_until,
)

from mediation import pdu as P  # noqa: E402
from mediation.warrants.model import Stream  # noqa: E402

PER_ROUND = 10  # PDUs per stream per round
SPACING = 0.01  # seconds between rounds


class Steps(trio.abc.Instrument):
    """Task steps, and the thread's CPU in them, by the task's function name, while ``on``."""

    def __init__(self) -> None:
        self.by: collections.Counter[str] = collections.Counter()
        self.cpu: collections.Counter[str] = collections.Counter()  # ns
        self.on = False
        self._began = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            self.by[task.name.rsplit(".", 1)[-1]] += 1
            self._began = time.thread_time_ns()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.on and self._began:
            self.cpu[task.name.rsplit(".", 1)[-1]] += time.thread_time_ns() - self._began
            self._began = 0


async def measure(tmp: Path, rounds: int) -> None:
    site = Site(tmp)
    cert = make_cert(tmp / "certs", "agency receiver")
    tls, udp = TlsAgency(cert, site.server_ca), UdpAgency(interval=1.0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(tls.serve)
        udp_port = await udp.bind()
        nursery.start_soon(udp.run)
        handle = site.agency(
            "AGENCY-A",
            tls_endpoint(port, fingerprint=cert.fingerprint, streams=(Stream.CMCC,)),
            udp_endpoint(udp_port, streams=(Stream.CMCC,)),
        )
        warrants = [site.warrant(handle, case_id=f"CASE-000{i}") for i in (1, 2)]
        sids = [P.StreamId(w.handle, P.StreamKind.CMCC) for w in warrants]
        pdus = [cc_pdu(n=n, payload=1400) for n in range(PER_ROUND)]
        async with site.server(fast_config()) as server:
            await tls.connected.wait()
            await trio.sleep(0.5)
            worker = next(w for w in server.delivery.workers if w.transport == "tls")
            sends = worker.writes
            steps = Steps()
            trio.lowlevel.add_instrument(steps)
            steps.on, cpu = True, time.process_time()
            for _ in range(rounds):
                async with trio.open_nursery() as batch:
                    for warrant in warrants:
                        for data in pdus:
                            batch.start_soon(server.ingest, warrant.handle, "cmCC", data)
                await trio.sleep(SPACING)
            want = rounds * PER_ROUND
            await wait_until(lambda: all(len(tls.stored.get(s, ())) >= want for s in sids))
            steps.on, cpu = False, time.process_time() - cpu
            sends = worker.writes - sends
        nursery.cancel_scope.cancel()
    delivery = steps.by["guarded"] + steps.by["_deliver"]
    link_us, udp_us = steps.cpu["guarded"] / rounds / 1e3, steps.cpu["_deliver"] / rounds / 1e3
    print(f"{CODE}: per round of {2 * PER_ROUND} PDUs: CPU {cpu / rounds * 1e6:,.0f} us "
          f"(server and agencies), TLS sends {sends / rounds:.2f}, delivery task steps "
          f"{delivery / rounds:.1f} (link {steps.by['guarded'] / rounds:.1f}, UDP streams "
          f"{steps.by['_deliver'] / rounds:.1f}), all task steps "
          f"{sum(steps.by.values()) / rounds:.1f}; delivery tasks' CPU {link_us + udp_us:,.0f} us "
          f"(TLS link {link_us:,.0f}, UDP {udp_us:,.0f})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--code", type=Path, help="measure this checkout's mediation package")
    args = parser.parse_args()
    if not 10 <= args.rounds <= 10_000:
        parser.error("--rounds: 10 to 10,000")
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(measure, Path(tmp), args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
