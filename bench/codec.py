"""The PDU hot path against the reference codec (asn1tools), in the same run.

    python bench/codec.py [--rounds R] [--seconds S]

For CC packets of 64, 512 and 1500 payload bytes, each in a DeliveryMessage
pduEnvelope (the per-packet PDU), measures PDUs/s of:

- the reference codec, :mod:`mediation.pdu.codec` (records <-> bytes
  through asn1tools' ``der`` codec), against the hot path,
  :mod:`mediation.pdu.fast`, for encode and for decode;
- asn1tools alone on the plain dicts it takes and gives (no records),
  which is what the reference codec spends most time in.

Each figure is the best of ``--rounds`` rounds, the codecs alternating
within a round, since the machine is shared. Every PDU is checked
byte-identical between the codecs first. Exits 1 if the hot path is below
5 times either of them (the goal: at least 5 times asn1tools, for encode
and for decode).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mediation.pdu import (
    CCApdu,
    CCDeliveryHeader,
    ClockStatus,
    ContentIdentifier,
    CorrelationInfo,
    Envelope,
    PacketDirection,
    StreamId,
    StreamKind,
    codec,
    fast,
)
from mediation.pdu.codec import DELIVERY
from mediation.pdu.schema import compiled

SIZES = (64, 512, 1500)
BATCH = 200  # distinct PDUs per size: sequence numbers, times and payloads vary
MIN_RATIO = 5.0
START = dt.datetime(2026, 11, 23, 0, 11, 0, tzinfo=dt.UTC)


def envelopes(size: int) -> list[Envelope]:
    """A stream's worth of CC envelopes: one warrant, one correlation id."""
    rng = random.Random(size)
    stream = StreamId("w-bench01", StreamKind.CMCC)
    info = CorrelationInfo(ContentIdentifier.correlation(b"\xc0\xff\xee\x00\x01"), "CASE-0001")
    out = []
    for n in range(BATCH):
        # Microseconds of every shape: none, trailing zeros, six digits.
        at = START + dt.timedelta(microseconds=rng.choice([0, 500000, rng.randrange(10**6)]) + n)
        header = CCDeliveryHeader(info, at, rng.choice(list(PacketDirection)), 1000 + n)
        apdu = CCApdu(rng.randbytes(size), header)
        out.append(Envelope(stream, 70000 + n, at, apdu, ClockStatus.SYNCHRONISED))
    return out


def per_second(function: Callable[[object], object], items: list, seconds: float) -> float:
    """Items/s of ``function`` over ``items``, looping for about ``seconds``."""
    done = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: collections are noise here
    try:
        start = time.perf_counter()
        while True:
            for item in items:
                function(item)
            done += len(items)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return done / elapsed
    finally:
        if gc_was_enabled:
            gc.enable()


def best(contenders: dict[str, tuple[Callable, list]], rounds: int, seconds: float) -> dict:
    """Best rate of each contender over alternating rounds."""
    rates = dict.fromkeys(contenders, 0.0)
    for _ in range(rounds):
        for name, (function, items) in contenders.items():
            rates[name] = max(rates[name], per_second(function, items, seconds))
    return rates


def check_identical(records: list[Envelope], encoded: list[bytes]) -> None:
    for record, data in zip(records, encoded, strict=True):
        if fast.encode_envelope(record) != data or fast.decode_envelope(data) != record:
            sys.exit("FAIL: the hot path does not match the reference codec")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.15, help="per measurement")
    args, _other = parser.parse_known_args()  # ./dev bench passes its arguments to all
    spec = compiled()
    print(
        f"{'payload':>7} {'op':<6} {'reference PDU/s':>16} {'hot path PDU/s':>15} "
        f"{'ratio':>7}   {'asn1tools alone':>15} {'ratio':>6}"
    )
    failures = []
    for size in SIZES:
        records = envelopes(size)
        encoded = [codec.encode(r) for r in records]
        check_identical(records, encoded)
        dicts = [("pduEnvelope", r.to_asn1()) for r in records]
        encode = best(
            {
                "ref": (codec.encode, records),
                "hot": (fast.encode_envelope, records),
                "bare": (lambda v: spec.encode(DELIVERY, v), dicts),
            },
            args.rounds,
            args.seconds,
        )
        decode = best(
            {
                "ref": (codec.decode, encoded),
                "hot": (fast.decode_envelope, encoded),
                "bare": (lambda b: spec.decode(DELIVERY, b), encoded),
            },
            args.rounds,
            args.seconds,
        )
        for op, rates in (("encode", encode), ("decode", decode)):
            ratio = rates["hot"] / rates["ref"]
            bare_ratio = rates["hot"] / rates["bare"]
            flag = "" if min(ratio, bare_ratio) >= MIN_RATIO else "  <-- below 5x"
            print(
                f"{size:>7} {op:<6} {rates['ref']:>16,.0f} {rates['hot']:>15,.0f} "
                f"{ratio:>6.1f}x   {rates['bare']:>15,.0f} {bare_ratio:>5.1f}x{flag}"
            )
            if min(ratio, bare_ratio) < MIN_RATIO:
                failures.append(f"{op} of {size}-byte payloads: {ratio:.1f}x, {bare_ratio:.1f}x")
    if failures:
        print(f"FAIL: hot path below {MIN_RATIO:.0f}x: " + "; ".join(failures))
        return 1
    print(
        f"OK: hot path at least {MIN_RATIO:.0f}x the reference codec and asn1tools alone, "
        "for encode and decode"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
