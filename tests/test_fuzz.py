"""Bounded fuzz of mediation.pdu.decode: whatever the bytes, only PDUError, fast, small.

Seeded (``random.Random(SEED)``), so a failure reproduces: the report names
the input's index and its hex. The budget is checked, not assumed: at least
:data:`INPUTS` inputs, under :data:`BUDGET_SECONDS` of CPU, no input slower
than :data:`SLOW_SECONDS`, and a sample of inputs traced with tracemalloc
under :data:`PEAK_BYTES` each. Whatever does decode must also turn into the
JSON that ``mediate decode`` prints.

A hang must not take the machine down with it (one such asn1tools bug filled
24 GB before the OOM killer came): every input runs under an interval timer,
and the address space is capped for the duration of the test.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from mediation import pdu as P
from mediation.pdu.jsonview import to_json
from mediation.pdu.tlv import read_header

SEED = int(os.environ.get("MEDIATION_FUZZ_SEED", "20261123"))
INPUTS = int(os.environ.get("MEDIATION_FUZZ_INPUTS", "100000"))  # more for a long local run
BUDGET_SECONDS = 60.0
SLOW_SECONDS = 0.5
PEAK_BYTES = 4 * 1024 * 1024
TRACE_EVERY = 1000  # tracemalloc makes decoding several times slower: sample it
WATCHDOG_SECONDS = 5.0  # a hang is reported, not waited out
ADDRESS_SPACE_HEADROOM = 1024**3
# The codec turns MemoryError into PDUError like any other exception, so a
# big allocation between traced samples shows only in the peak RSS.
RSS_GROWTH_BYTES = 256 * 1024 * 1024

T = dt.datetime(2026, 11, 23, 0, 11, 0, 500000, tzinfo=dt.UTC)
STREAM = P.StreamId("w-3f9a1c", P.StreamKind.CMII)


def seed_records() -> list[object]:
    """One PDU of each kind, and a few with SEQUENCE OF, SET OF and an OID inside."""
    correlation = P.ContentIdentifier.correlation(b"\x01\x02\x03\x04")
    header_report = P.HeaderReport(
        case_id="CASE-0001",
        iap_system_id="IAP-1",
        timestamp=T,
        content_identifier=correlation,
        header_set=P.HeaderSet(
            stream_id=P.Value.integer(7),
            source_ip=P.IPAddress("192.0.2.10", P.Allocation.DYNAMIC),
            destination_ip=P.IPAddress("2001:db8::1"),
            source_port="5353",
            destination_port="53",
        ),
    )
    info = P.CorrelationInfo(correlation, "CASE-0001", "IAP-1")
    cc = P.CCApdu(
        payload=bytes.fromhex("4500001c000100004011") + bytes(18),
        header=P.CCDeliveryHeader(info, T, P.PacketDirection.FROM_SUBJECT, 42),
    )
    session = P.SessionStart(
        case_id="CASE-0001",
        iap_system_id="IAP-1",
        timestamp=T,
        subscriber_identity=P.Value.text("subscriber-1"),
        packet_data_session_id=P.Value.octets(b"\x09"),
        ip_address=P.IPAddress("198.51.100.7", P.Allocation.STATIC, prefix_len=32),
        delivery_information=P.LEACmCDelivery(
            correlation,
            P.DeliveryIdentifier("cccId", P.CCCIdentity("combCCC", "ccc-1")),
            P.CCDeliveryFormat("atis-678-ASN1", "1.2.840.113737.2.1.1.1.0"),
        ),
    )
    signalling = P.AccessSignalingMessageReport(
        case_id="CASE-0001",
        iap_system_id="IAP-1",
        timestamp=T,
        signaling_msg=(
            P.InterceptedSignalingMessage(P.SignalingMessageType.RADIUS, "Access-Request"),
            P.InterceptedSignalingMessage(P.SignalingMessageType.OTHER, "x"),
        ),
    )
    return [
        header_report,
        cc,
        P.Envelope(P.StreamId("w-3f9a1c", P.StreamKind.CMCC), 5, T, cc, redelivered=True),
        P.Envelope(STREAM, 6, T, header_report, P.ClockStatus.SYNCHRONISED),
        P.Keepalive(1, T),
        P.ReceiverReport(STREAM, T, 8, (P.SequenceRange(2, 3), P.SequenceRange(5, 5)), 9),
        P.ReplayRequest(3, STREAM, (P.SequenceRange(1, 4),)),
        session,
        signalling,
    ]


SEEDS = [P.encode(record) for record in seed_records()]


def headers(data: bytes) -> list[tuple[int, int, int]]:
    """Every TLV header in a valid encoding: ``(offset, content offset, length)``."""
    found: list[tuple[int, int, int]] = []

    def walk(start: int, end: int) -> None:
        while start < end:
            tag, content, length = read_header(data, start)
            found.append((start, content, length))
            if tag & 0x20:
                walk(content, content + length)
            start = content + length

    walk(0, len(data))
    return found


HEADERS = [headers(seed) for seed in SEEDS]


def _tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


# Input generators: each takes the Random and returns the bytes -------------


def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(64))


def plausible_start(rng: random.Random) -> bytes:
    """Random bytes behind a first tag the decoder accepts, so they reach asn1tools."""
    body = rng.randbytes(rng.randrange(48))
    first = rng.choice((0x30, 0xA0, 0xA1, 0xA4, 0xA6, 0xAF))
    return bytes([first, len(body)]) + body


def truncation(rng: random.Random) -> bytes:
    seed = rng.choice(SEEDS)
    return seed[: rng.randrange(len(seed))]


def mutation(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(SEEDS))
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data) + 1)
        kind = rng.random()
        if kind < 0.5 and at < len(data):
            data[at] = rng.randrange(256)
        elif kind < 0.65 and at < len(data):
            data[at] ^= 1 << rng.randrange(8)
        elif kind < 0.85:
            data[at:at] = rng.randbytes(rng.randint(1, 4))
        else:
            del data[at : at + rng.randint(1, 4)]
    return bytes(data)


def length_bomb(rng: random.Random) -> bytes:
    """One length field claiming gigabytes, or indefinite, or a non-minimal form."""
    index = rng.randrange(len(SEEDS))
    seed, found = SEEDS[index], HEADERS[index]
    start, content, length = rng.choice(found)
    tag_end = start + 1  # all tags in the seeds are one byte
    forms = (
        b"\x84" + rng.randbytes(4),
        b"\x84\xff\xff\xff\xff",
        b"\x88" + rng.randbytes(8),
        b"\xff" + rng.randbytes(3),
        b"\x80",
        b"\x82" + length.to_bytes(2, "big"),
    )
    return seed[:tag_end] + rng.choice(forms) + seed[content:]


def huge_tag(rng: random.Random) -> bytes:
    """A high tag number form with many continuation bytes, where a tag should be."""
    index = rng.randrange(len(SEEDS))
    seed, found = SEEDS[index], HEADERS[index]
    start, _content, _length = rng.choice(found)
    number = b"\xff" * rng.randint(1, 40) + bytes([rng.randrange(128)])
    return seed[:start] + bytes([seed[start] | 0x1F]) + number + seed[start + 1 :]


def deep_nesting(rng: random.Random) -> bytes:
    """Constructed tags nested up to a thousand deep, lengths right, short or indefinite."""
    depth = rng.randint(50, 1000)
    inner = rng.choice(SEEDS) if rng.random() < 0.5 else b"\x05\x00"
    tag = rng.choice((0xA0, 0x30, 0xA5, 0xBF))
    style = rng.random()
    if style < 0.3:
        prefix = (bytes([tag]) + b"\x80") * depth  # indefinite lengths
        return prefix + inner + b"\x00\x00" * depth
    if style < 0.6:
        claimed = len(inner) + 4 * depth  # each level claims more than there is
        return (bytes([tag, 0x82]) + claimed.to_bytes(2, "big")) * depth + inner
    data = inner
    for _ in range(depth):
        data = bytes([tag, 0x83]) + len(data).to_bytes(3, "big") + data
    return data


def splice(rng: random.Random) -> bytes:
    """A TLV of one PDU's tree in place of one of another's, lengths left as they were."""
    a, b = rng.sample(range(len(SEEDS)), 2)
    start, content, length = rng.choice(HEADERS[a])
    other_start, other_content, other_length = rng.choice(HEADERS[b])
    piece = SEEDS[b][other_start : other_content + other_length]
    return SEEDS[a][:start] + piece + SEEDS[a][content + length :]


def leaf_value(rng: random.Random) -> bytes:
    """One primitive value replaced, every enclosing length fixed up: deep, well-framed input.

    This is what reaches the value decoders (times, enumerations, addresses,
    constraints of the records) instead of stopping at the framing.
    """
    index = rng.randrange(len(SEEDS))
    seed = SEEDS[index]
    leaves = [h for h in HEADERS[index] if not seed[h[0]] & 0x20]
    target = rng.choice(leaves)[0]
    choice = rng.random()
    if choice < 0.4:
        value = rng.randbytes(rng.randrange(24))
    elif choice < 0.7:  # printable: times, strings, numbers as text
        value = bytes(rng.choice(b"0123456789.Z+-:TzA ") for _ in range(rng.randrange(24)))
    else:
        value = bytes([rng.choice((0x00, 0x7F, 0x80, 0xFF))]) * rng.randrange(1, 12)

    def rebuild(start: int, end: int) -> bytes:
        out = bytearray()
        while start < end:
            tag, content, length = read_header(seed, start)
            if start == target:
                inner = value
            elif tag & 0x20:
                inner = rebuild(content, content + length)
            else:
                inner = seed[content : content + length]
            out += _tlv(tag, inner)
            start = content + length
        return bytes(out)

    return rebuild(0, len(seed))


GENERATORS: list[tuple[Callable[[random.Random], bytes], int]] = [
    (random_bytes, 10),
    (plausible_start, 10),
    (truncation, 10),
    (mutation, 30),
    (leaf_value, 15),
    (length_bomb, 10),
    (huge_tag, 5),
    (deep_nesting, 3),
    (splice, 7),
]


def inputs(rng: random.Random, count: int) -> Iterator[bytes]:
    makers = [maker for maker, weight in GENERATORS for _ in range(weight)]
    for _ in range(count):
        yield rng.choice(makers)(rng)


# The harness -----------------------------------------------------------------


class Hang(BaseException):
    """Raised by the interval timer in the middle of an input that never ends.

    Not an ``Exception``: the codec turns those into PDUError, which would
    hide the hang.
    """


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """SIGALRM raises :class:`Hang`; the address space is capped (Linux) meanwhile."""

    def on_alarm(_signum: int, _frame: object) -> None:
        raise Hang(f"still decoding after {WATCHDOG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    limits = None
    try:
        import resource

        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[0])
        limits = resource.getrlimit(resource.RLIMIT_AS)
        cap = pages * resource.getpagesize() + ADDRESS_SPACE_HEADROOM
        if limits[1] == resource.RLIM_INFINITY or cap < limits[1]:
            resource.setrlimit(resource.RLIMIT_AS, (cap, limits[1]))
    except (ImportError, OSError, ValueError):
        limits = None  # not Linux: the timer still catches hangs
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if limits is not None:
            resource.setrlimit(resource.RLIMIT_AS, limits)


def decode_one(data: bytes) -> tuple[bool, BaseException | None]:
    """Decode (and view as JSON) under the timer: ``(decoded, the exception not PDUError)``."""
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_SECONDS)
    try:
        record = P.decode(data)
        json.dumps(to_json(record))  # what decoding accepts, `mediate decode` can print
    except P.PDUError as exc:
        if exc.offset is not None and not 0 <= exc.offset <= len(data):
            return False, AssertionError(f"PDUError offset {exc.offset} is outside the input")
        return False, None
    except (Exception, Hang) as exc:
        return False, exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return True, None


def max_rss() -> int:
    """Peak resident size of this process so far, in bytes (0 where unknown)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def describe(index: int, data: bytes, exc: BaseException) -> str:
    shown = data.hex() if len(data) <= 512 else f"{data[:512].hex()}... ({len(data)} bytes)"
    trace = "".join(traceback.format_exception(exc)[-3:])
    return f"input {index} (seed {SEED}): {type(exc).__name__}: {exc}\n  hex: {shown}\n{trace}"


def test_seeds_are_valid_and_decode() -> None:
    for record, seed in zip(seed_records(), SEEDS, strict=True):
        assert P.decode(seed) == record


@pytest.mark.slow
def test_fuzz_decode_raises_only_pdu_error() -> None:
    rng = random.Random(SEED)
    failures: list[str] = []
    slowest, slowest_input = 0.0, b""
    peak, decoded = 0, 0
    rss_start = max_rss()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    with guarded():
        for index, data in enumerate(inputs(rng, INPUTS)):
            trace = index % TRACE_EVERY == 0
            if trace:
                tracemalloc.start()
            started = time.thread_time()  # CPU time: other jobs on the box do not count
            ok, problem = decode_one(data)
            spent = time.thread_time() - started
            decoded += ok
            if trace:
                peak = max(peak, tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()
                if peak > PEAK_BYTES and problem is None:
                    problem = AssertionError(f"tracemalloc peak {peak} bytes")
            elif spent > slowest:
                slowest, slowest_input = spent, data
            if problem is not None:
                failures.append(describe(index, data, problem))
                if len(failures) >= 5:
                    break
    cpu = time.process_time() - cpu_start
    wall = time.perf_counter() - wall_start
    print(
        f"fuzz: {INPUTS} inputs ({decoded} decoded), {cpu:.1f} s CPU, {wall:.1f} s wall, "
        f"slowest {slowest:.4f} s ({len(slowest_input)} bytes), traced peak {peak} bytes"
    )
    assert not failures, "\n".join(failures)
    assert slowest < SLOW_SECONDS, f"slowest input took {slowest:.3f} s: {slowest_input.hex()}"
    assert cpu < BUDGET_SECONDS * INPUTS / 100_000, f"{INPUTS} inputs took {cpu:.1f} s of CPU"
    assert max_rss() - rss_start < RSS_GROWTH_BYTES, "peak RSS grew while fuzzing"


def _keepalive_with_time(text: bytes) -> bytes:
    return _tlv(0xA1, _tlv(0x80, b"\x01") + _tlv(0x81, text))


# Single large hostile inputs, built when their test runs. The OID, time and
# SEQUENCE OF ones hung (minutes to forever) before codec.py guarded asn1tools.
LARGE: dict[str, Callable[[], bytes]] = {
    "oid-300k-continuation-bytes": lambda: _tlv(
        0x30, _tlv(0x06, b"\xff" * 300_000 + b"\x01") + b"\xa0\x00"
    ),
    # A one-octet OID that does not end its subidentifier, then 8 MB whose
    # length octets and content all have the continuation bit set.
    "oid-reading-on-past-its-end": lambda: _tlv(
        0x30, _tlv(0x06, b"\xff") + _tlv(0xA0, b"\xff" * 0x808080)
    ),
    "generalized-time-300k": lambda: _keepalive_with_time(b"2026" + b"1" * 300_000 + b"Z"),
    "generalized-time-300k-fraction": lambda: _keepalive_with_time(
        b"20261123001100." + b"9" * 300_000 + b"Z"
    ),
    "sequence-of-wrong-tags": lambda: _tlv(
        0xA6,
        _tlv(0xA0, _tlv(0x80, b"w-1") + _tlv(0x81, b"\x00"))
        + _tlv(0x81, b"20261123001100Z")
        + _tlv(0x83, b"\x01")
        + _tlv(0xA4, b"\x04\x00" * 50_000),
    ),
    "integer-100k": lambda: _tlv(
        0xA1, _tlv(0x80, b"\x7f" * 100_000) + _tlv(0x81, b"20261123001100Z")
    ),
    "nesting-10k": lambda: b"\xa0\x80" * 10_000 + b"\x00\x00" * 10_000,
}


@pytest.mark.parametrize("name", list(LARGE))
def test_large_hostile_input(name: str) -> None:
    data = LARGE[name]()
    with guarded():
        tracemalloc.start()
        started = time.thread_time()
        try:
            _ok, problem = decode_one(data)
            spent = time.thread_time() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert problem is None, describe(0, data, problem)
    assert spent < SLOW_SECONDS * 4, f"{name}: {spent:.2f} s"
    # The input itself is copied a few times on the way (bytes, bytearray, slices).
    assert peak < PEAK_BYTES + 8 * len(data), f"{name}: peak {peak} bytes"
