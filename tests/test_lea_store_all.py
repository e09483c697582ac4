"""A wake-up's or a read's envelopes stored together write what one at a time writes.

The receiver stores what a UDP wake-up or a TLS read brings in one call
(``UdpDelivery.receive_all``, ``ReceiverState.envelopes``,
``StreamReceiver``'s read at a time,, ``CaseOutputs.store_all``: each file
appended once). Here the same arrivals (both stream kinds, gaps, late
fills, duplicates, checkpoints, refused and malformed datagrams, a packet
past the pcap's snap length) go through the receiver one message a call
and in batches of any size, and every file, counter and tracker is
compared; the envelopes' files are also compared with the plain way's
(``test_lea_outputs_same._expected``: the reference codec, ``json.dumps``,
``PcapWriter``).
"""

from __future__ import annotations

import operator
import socket
import tempfile
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_lea_outputs_same import AT, _expected, _flow_report
from test_lea_support import CMCC, CMII, HANDLE, UDP_KEY, cc_record, cmii_record

from mediation import pdu as P
from mediation.evidence.pcap import DEFAULT_SNAPLEN
from mediation.lea.state import ReceiverState
from mediation.lea.udp import UdpDelivery
from mediation.protocol import DatagramSender, StreamReceiver
from mediation.protocol.envelope import encode_message
from mediation.protocol.sealed import DatagramSealer, Direction

COUNT = 24  # per stream
SOURCE = ("192.0.2.1", 9)


def _records(stream: P.StreamId) -> list:
    if stream.kind is P.StreamKind.CMCC:
        records = [cc_record(seq) for seq in range(COUNT)]
        records[5] = cc_record(5, b"not an IP packet")  # kept raw, left out of the pcap
        return records
    return [cmii_record(seq) if seq % 4 == 3 else _flow_report(seq) for seq in range(COUNT)]


def _envelopes(stream: P.StreamId) -> list[bytes]:
    sender = DatagramSender(stream)
    return [sender.envelope(record, 0.0) for record in _records(stream)]


CMII_ENVELOPES, CMCC_ENVELOPES = _envelopes(CMII), _envelopes(CMCC)
CHECKPOINTS = [
    encode_message(P.ChainCheckpoint(stream, n, bytes([n]) * 32, AT, b"s" * 64, b"k1"))
    for n, stream in enumerate((CMII, CMCC, CMII))
]
MESSAGES = CMII_ENVELOPES + CMCC_ENVELOPES + CHECKPOINTS


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _outcome(state: ReceiverState, out: Path) -> tuple:
    state.close()
    stats = {stream: vars(s) for stream, s in state.stats.items()}
    held = {stream: list(t.missing()) for stream, t in state.trackers.items()}
    return _files(out), vars(state.counters), stats, held


def _check_plain(out: Path, arrived: list[bytes]) -> None:
    """The envelopes' files are what the plain way writes of them."""
    for stream in (CMII, CMCC):
        mine = [d for d in arrived if d[0] == 0xA0 and P.decode_delivery(d).stream == stream]
        if not mine:
            continue
        for name, content in _expected(stream, mine).items():
            path = out / HANDLE / name
            if not path.exists():  # no IP packet among them: no pcap made (the plain way: header)
                assert name == "cmcc.pcap" and len(content) == 24
                continue
            assert path.read_bytes() == content, name


def _udp(out: Path, datagrams: list[bytes], cuts: list[int]) -> tuple:
    """The datagrams one a call (``cuts`` empty), else in wake-ups of the sizes ``cuts`` cycles."""
    state = ReceiverState(out, utc_now=lambda: AT)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        delivery = UdpDelivery(sock, state, 1.0, [UDP_KEY])
        at = n = 0
        while at < len(datagrams):
            size = cuts[n % len(cuts)] if cuts else 1
            batch = datagrams[at : at + size]
            if cuts:
                delivery.receive_all([(d, SOURCE) for d in batch], float(n))
            else:
                for data in batch:
                    delivery.receive(data, SOURCE, float(n))
            at, n = at + size, n + 1
        routes = dict(delivery.routes)
        refused = dict(state.counters.unauthenticated)
    return (*_outcome(state, out), routes, refused)


@settings(max_examples=40, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(MESSAGES) + 1), min_size=1, max_size=80),
    cuts=st.lists(st.integers(1, 20), min_size=1, max_size=6),
)
@example(picks=[COUNT + 5], cuts=[1])  # only a CC packet that is not IP: no pcap at all
def test_udp_wake_ups_store_what_one_datagram_a_call_stores(
    picks: list[int], cuts: list[int]
) -> None:
    """Any arrival order (gaps, late fills, duplicates), any wake-up sizes."""
    sealer = DatagramSealer(UDP_KEY, Direction.SERVER_TO_AGENCY, 1_000_000)
    arrived, datagrams = [], []
    for pick in picks:
        if pick == len(MESSAGES):  # not ours: refused before it is read
            datagrams.append(b"\x00" * 60)
        elif pick == len(MESSAGES) + 1:  # authentic, not a delivery message: dropped, counted
            datagrams.append(sealer.seal(b"\xa0\x03\x01\x02\x03"))
        else:
            arrived.append(MESSAGES[pick])
            datagrams.append(sealer.seal(MESSAGES[pick]))
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as many:
        single = _udp(Path(one), datagrams, [])
        batched = _udp(Path(many), datagrams, cuts)
        assert batched == single
        _check_plain(Path(many), arrived)


def _tls(out: Path, messages: list[bytes], cuts: list[int]) -> tuple:
    """The messages each its own read (``cuts`` empty), else reads of the sizes ``cuts`` cycles."""
    state = ReceiverState(out, utc_now=lambda: AT)
    machine = StreamReceiver(trackers=state.trackers, streams=state.accepted)
    machine.connection_made(0.0)
    raw_of = operator.attrgetter("raw")
    reads = messages if not cuts else []
    if cuts:
        data, at, n = b"".join(messages), 0, 0
        while at < len(data):
            reads.append(data[at : at + cuts[n % len(cuts)]])
            at, n = at + cuts[n % len(cuts)], n + 1
    for n, part in enumerate(reads):
        state.on_events(machine.receive_data(part, float(n)), raw_of, "tls", float(n))
    return (*_outcome(state, out), machine.data_to_send())


_BIG = DatagramSender(CMCC)  # a packet past the snap length: the pcap writer cuts it


@settings(max_examples=30, deadline=None)
@given(
    again=st.lists(
        st.tuples(st.integers(0, 2 * COUNT - 1), st.integers(0, 2 * COUNT)), max_size=12
    ),
    cuts=st.lists(st.integers(40, 9000) | st.just(1 << 20), min_size=1, max_size=6),
    big=st.booleans(),
)
def test_tls_reads_store_what_one_message_a_read_stores(
    again: list[tuple[int, int]], cuts: list[int], big: bool
) -> None:
    """In order (a stream loses nothing), with earlier envelopes sent again and checkpoints."""
    cmcc = list(CMCC_ENVELOPES)
    if big:
        cmcc[7] = _BIG.envelopes.envelope(cc_record(7, b"\x45" + bytes(DEFAULT_SNAPLEN + 10)))
    messages = [e for pair in zip(CMII_ENVELOPES, cmcc, strict=True) for e in pair]
    for n, checkpoint in enumerate(CHECKPOINTS):
        messages.insert(10 + 7 * n, checkpoint)
    for which, where in sorted(again, key=operator.itemgetter(1), reverse=True):
        first = messages.index((CMII_ENVELOPES + cmcc)[which])
        if where > first:  # a duplicate comes after the first copy
            messages.insert(where, messages[first])
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as many:
        single = _tls(Path(one), messages, [])
        batched = _tls(Path(many), messages, cuts)
        assert batched == single
        _check_plain(Path(many), messages)
