"""Tap throughput: frames/s of parse and match, and PDUs/s of the whole tap.

    python bench/tap.py [--frames N] [--rounds R]

The 32 frames of fixtures/sample/sample.pcap are repeated to ``--frames``
frames (default 200,000) and run through:

1. ``parse_frame`` alone;
2. ``TargetMatcher.match`` alone, on frames parsed beforehand, for a warrant
   that matches none of them (the common case on a busy link: a MAC, two
   addresses and two prefixes, none present);
3. parse and match together, for that warrant and for the sample's target
   MAC (22 of every 32 frames match);
4. the whole ``Tap.process`` (window, match, DHCP, PDUs), headers only and
   full content, for the absent target and for the sample's: frames/s and PDUs/s;
5. for scale, scapy's ``Ether(frame)`` on a slice of the frames (the parser
   the tap does not use on its hot path), and the header report through the
   reference codec against the per-flow template the builder uses.

Each figure is the best of ``--rounds`` rounds (the machine is shared). No
goal is enforced; the numbers are printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mediation.evidence.pcap import PcapReader
from mediation.pdu import decode, encode
from mediation.tap import TargetMatcher, parse_frame
from mediation.tap.header_report import HeaderReportTemplate
from mediation.tap.replay import Tap
from mediation.warrants.model import CaseDetails, ContentLevel, Target, TargetKind, Warrant

SAMPLE = Path(__file__).resolve().parent.parent / "fixtures" / "sample" / "sample.pcap"
START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
NOT_PRESENT = (
    Target(TargetKind.MAC, "02:00:5e:00:53:99"),
    Target(TargetKind.ADDRESS, "192.0.2.99"),
    Target(TargetKind.ADDRESS, "2001:db8:0:1::99"),
    Target(TargetKind.PREFIX, "198.51.100.128/25"),
    Target(TargetKind.PREFIX, "2001:db8:9::/48"),
)
SAMPLE_TARGET = (Target(TargetKind.MAC, "02:00:5e:00:53:01"),)


def load(count: int) -> tuple[list[bytes], list[dt.datetime], int]:
    """The sample's frames repeated to ``count``, with times that keep increasing."""
    with PcapReader.open(SAMPLE) as reader:
        packets = list(reader)
        linktype = reader.linktype
    frames, times = [], []
    for i in range(count):
        packet = packets[i % len(packets)]
        frames.append(packet.data)
        times.append(packet.time + dt.timedelta(seconds=i // len(packets)))
    return frames, times, linktype


def best(rounds: int, run: Callable[[], int]) -> float:
    """Best items/s over ``rounds`` runs of ``run`` (which returns its item count)."""
    rates = []
    for _ in range(rounds):
        gc.collect()
        began = time.perf_counter()
        items = run()
        rates.append(items / (time.perf_counter() - began))
    return max(rates)


def warrant(targets: tuple[Target, ...], content: ContentLevel) -> Warrant:
    details = CaseDetails("CASE-BENCH-1", targets, iap="IAP-BENCH")
    return Warrant("w-bench1", "a-bench", content, START, END, START, START, details=details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    frames, times, linktype = load(args.frames)
    n, rounds = len(frames), args.rounds
    print(f"tap bench: {n} frames (fixtures/sample/sample.pcap repeated), best of {rounds}")

    def parse_all() -> int:
        for frame in frames:
            parse_frame(frame, linktype)
        return n

    parsed = [parse_frame(f, linktype) for f in frames]
    none = TargetMatcher(NOT_PRESENT)
    sample = TargetMatcher(SAMPLE_TARGET)

    def match_only(matcher: TargetMatcher) -> Callable[[], int]:
        def run() -> int:
            match = matcher.match
            for p in parsed:
                match(p)
            return n

        return run

    def parse_and_match(matcher: TargetMatcher) -> Callable[[], int]:
        def run() -> int:
            match = matcher.match
            for frame in frames:
                match(parse_frame(frame, linktype))
            return n

        return run

    rows = [
        ("parse_frame", best(rounds, parse_all)),
        ("match only, no target present", best(rounds, match_only(none))),
        ("match only, sample target (22/32 match)", best(rounds, match_only(sample))),
        ("parse + match, no target present", best(rounds, parse_and_match(none))),
        ("parse + match, sample target", best(rounds, parse_and_match(sample))),
    ]
    for label, rate in rows:
        print(f"  {label:<44} {rate:>12,.0f} frames/s")
    for targets, name in ((NOT_PRESENT, "no target present"), (SAMPLE_TARGET, "sample target")):
        for content in (ContentLevel.HEADERS, ContentLevel.FULL):
            frames_rate, pdu_rate = tap_rate(frames, times, warrant(targets, content), rounds)
            label = f"Tap.process, {name}, {content.value}"
            print(f"  {label:<44} {frames_rate:>12,.0f} frames/s {pdu_rate:>10,.0f} PDUs/s")
    baselines(frames, times, linktype, rounds, rows[0][1])
    return 0


def tap_rate(
    frames: list[bytes], times: list[dt.datetime], w: Warrant, rounds: int
) -> tuple[float, float]:
    """Frames/s and PDUs/s of ``Tap.process`` (a fresh tap per round)."""
    pdus = 0

    def run() -> int:
        nonlocal pdus
        tap = Tap.for_warrant(w)
        process = tap.process
        pdus = sum(len(process(f, t)) for f, t in zip(frames, times, strict=True))
        return len(frames)

    rate = best(rounds, run)
    return rate, rate * pdus / len(frames)


def baselines(
    frames: list[bytes], times: list[dt.datetime], linktype: int, rounds: int, ours: float
) -> None:
    """scapy's parser, and the reference header report encoding, for scale."""
    from scapy.layers.l2 import Ether

    subset = frames[:5000]

    def scapy_parse() -> int:
        for frame in subset:
            Ether(frame)
        return len(subset)

    scapy_rate = best(rounds, scapy_parse)
    print(f"  {'scapy Ether(frame), for scale':<44} {scapy_rate:>12,.0f} frames/s")
    print(f"  parse_frame / scapy: {ours / scapy_rate:.0f}x")
    tap = Tap.for_warrant(warrant(SAMPLE_TARGET, ContentLevel.HEADERS))
    [pdu] = tap.process(frames[8], times[8])  # the target's TCP SYN
    report = decode(pdu.der)
    template = HeaderReportTemplate(report)  # what the builder keeps per flow
    count = 2000

    def reference() -> int:
        for _ in range(count):
            encode(report)
        return count

    def templated() -> int:
        for i in range(count):
            template.render(times[i])
        return count

    ref, fast = best(rounds, reference), best(rounds, templated)
    print(f"  {'header report, reference codec':<44} {ref:>12,.0f} PDUs/s")
    print(f"  {'header report, per-flow template':<44} {fast:>12,.0f} PDUs/s ({fast / ref:.0f}x)")


if __name__ == "__main__":
    raise SystemExit(main())
