"""The receiver's files are byte for byte what the straightforward way makes of the same input.

The receiver's hot path takes short cuts (lea/jsonline.py's remembered
JSON text, the wall clock read once per wake-up, the shape caches of the
decoders). Here the same envelopes go through the UDP reader and through a
TLS connection's machine, and every file is compared with the one written
out the plain way: the raw envelopes back to back, each CmII line the
reference decoder's record as JSON (``json.dumps`` of the view, as
``CaseOutputs.store`` did before), and each CC packet through ``PcapWriter``.
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import json
import operator
import socket
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_lea_support import CMCC, CMII, HANDLE, UDP_KEY, cc_record, cmii_record

from mediation import pdu as P
from mediation.evidence.pcap import DEFAULT_SNAPLEN, LINKTYPE_RAW, PcapWriter
from mediation.lea.cc_pcap import capture_time, is_ip_packet, pcap_record_header
from mediation.lea.files import BUFFER, HashedFile, sha256_of
from mediation.lea.outputs import NOT_IP_LISTED, CaseOutputs
from mediation.lea.state import ReceiverState
from mediation.lea.udp import UdpDelivery
from mediation.pdu.fast import encode_content
from mediation.pdu.jsonview import iso_time, to_json
from mediation.protocol import ContentKind, DatagramSender, StoredRecord, StreamReceiver
from mediation.protocol.sealed import DatagramSealer, Direction

AT = dt.datetime(2026, 11, 23, 0, 11, 0, 250000, tzinfo=dt.UTC)  # the receiver's wall clock


def _flow_report(seq: int) -> StoredRecord:
    """Header reports of one flow: equal but for their time (the decoders' cached shape)."""
    report = P.HeaderReport(
        case_id="CASE-0001",
        iap_system_id="IAP-1",
        timestamp=AT + dt.timedelta(microseconds=137 * seq),
        content_identifier=P.ContentIdentifier.correlation(b"\x01"),
        header_set=P.HeaderSet(
            stream_id=P.Value.integer(7),
            source_ip=P.IPAddress(ipaddress.ip_address("192.0.2.10")),
            destination_ip=P.IPAddress(ipaddress.ip_address("198.51.100.20")),
            source_port="40000",
            destination_port="5004",
        ),
    )
    when = (AT - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) + seq
    return StoredRecord(seq, when, ContentKind.CMII, None, encode_content(report)[1])


def _records(stream: P.StreamId, count: int) -> list[StoredRecord]:
    if stream.kind is P.StreamKind.CMCC:
        records = [cc_record(seq) for seq in range(count)]
        records[5] = cc_record(5, b"not an IP packet")  # kept raw, left out of the pcap
        return records
    # flow reports, with the support's other reports and notices among them
    return [cmii_record(seq) if seq % 4 == 3 else _flow_report(seq) for seq in range(count)]


def _envelopes(stream: P.StreamId, count: int) -> list[bytes]:
    sender = DatagramSender(stream)
    return [sender.envelope(record, 0.0) for record in _records(stream, count)]


def _expected(stream: P.StreamId, arrived: list[bytes]) -> dict[str, bytes]:
    """The files of one stream written the plain way, from the envelopes stored in order."""
    seen: set[int] = set()
    raw, lines = b"", b""
    pcap = io.BytesIO()
    writer = PcapWriter(pcap, linktype=LINKTYPE_RAW)  # type: ignore[arg-type]
    for data in arrived:
        envelope = P.decode_delivery(data)  # the reference codec
        if envelope.sequence_number in seen:
            continue
        seen.add(envelope.sequence_number)
        raw += data
        if isinstance(envelope.content, P.CCApdu):
            if is_ip_packet(envelope.content.payload):
                writer.write(envelope.content.payload, capture_time(envelope))
            continue
        line = to_json(envelope)
        line["retrieved"] = False
        line["receivedTime"] = iso_time(AT)
        lines += json.dumps(line, separators=(",", ":")).encode() + b"\n"
    writer.flush()
    if stream.kind is P.StreamKind.CMCC:
        return {"cmcc.raw": raw, "cmcc.pcap": pcap.getvalue()}
    return {"cmii.raw": raw, "cmii.jsonl": lines}


def _arrival(count: int) -> list[bytes]:
    """Both streams interleaved, then the first few of each again (duplicates)."""
    cmii, cmcc = _envelopes(CMII, count), _envelopes(CMCC, count)
    mixed = [e for pair in zip(cmii, cmcc, strict=True) for e in pair]
    return mixed + cmii[:3] + cmcc[:3]


def _check(out: Path, arrived: list[bytes]) -> None:
    for stream in (CMII, CMCC):
        mine = [d for d in arrived if P.decode_delivery(d).stream == stream]
        for name, content in _expected(stream, mine).items():
            assert (out / HANDLE / name).read_bytes() == content, name


@pytest.mark.parametrize("late", [False, True])
def test_udp_stores_what_the_plain_way_writes(tmp_path: Path, late: bool) -> None:
    arrived = _arrival(40)
    if late:  # a datagram overtaken by later ones: a gap, then filled
        arrived.insert(30, arrived.pop(10))
    sealer = DatagramSealer(UDP_KEY, Direction.SERVER_TO_AGENCY, 1_000_000)
    state = ReceiverState(tmp_path, utc_now=lambda: AT)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        delivery = UdpDelivery(sock, state, 1.0, [UDP_KEY])
        for n, data in enumerate(arrived):
            delivery.receive(sealer.seal(data), ("192.0.2.1", 9), float(n // 7))  # wake-ups
    state.close()
    _check(tmp_path, arrived)


def test_tls_stores_what_the_plain_way_writes(tmp_path: Path) -> None:
    arrived = _arrival(40)
    state = ReceiverState(tmp_path, utc_now=lambda: AT)
    machine = StreamReceiver(trackers=state.trackers, streams=state.accepted)
    machine.connection_made(0.0)
    data = b"".join(arrived)
    for n, at in enumerate(range(0, len(data), 1000)):  # reads that split messages
        part = data[at : at + 1000]
        events = machine.receive_data(part, float(n // 3))
        # The octets as received, kept on the events by the machine (as the driver takes them).
        state.on_events(events, operator.attrgetter("raw"), "tls", float(n // 3))
    state.close()
    _check(tmp_path, arrived)


_ZONES = st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), None])


@given(
    packet=st.one_of(
        st.binary(max_size=64),
        st.integers(DEFAULT_SNAPLEN - 2, DEFAULT_SNAPLEN + 2).map(lambda n: b"\x45" * n),
    ),
    when=st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1)),
    zone=_ZONES,
)
def test_the_pcap_record_header_is_what_the_writer_writes(
    packet: bytes, when: dt.datetime, zone: dt.tzinfo | None
) -> None:
    """The stored short cut: header + packet, or None where the writer cuts, refuses or converts."""
    when = when.replace(tzinfo=zone)
    header = pcap_record_header(packet, when)
    out = io.BytesIO()
    writer = PcapWriter(out, linktype=LINKTYPE_RAW)  # type: ignore[arg-type]
    try:
        writer.write(packet, when)
    except ValueError:
        assert header is None  # the writer refuses it: the receiver asks the writer
        return
    if header is not None:
        assert out.getvalue()[24:] == header + packet
    else:  # only the cases the writer handles otherwise
        assert when.tzinfo is None or len(packet) > DEFAULT_SNAPLEN


@given(parts=st.lists(st.binary(max_size=3 * BUFFER // 4), max_size=6), flushes=st.integers(0, 63))
def test_a_hashed_file_holds_and_hashes_every_write(
    tmp_path_factory: pytest.TempPathFactory, parts: list[bytes], flushes: int
) -> None:
    """Writes held in memory (to BUFFER) reach the file in order, and the hash is the file's."""
    path = tmp_path_factory.mktemp("hashed") / "f.raw"
    path.write_bytes(b"earlier run\n")
    target = HashedFile(path)
    for n, part in enumerate(parts):
        target.write(part)
        if flushes >> n & 1:
            target.flush()
    assert target.size == len(b"earlier run\n") + sum(map(len, parts))
    digest = target.close()
    assert path.read_bytes() == b"earlier run\n" + b"".join(parts)
    assert digest == sha256_of(path)


def test_a_hashed_file_dropped_unclosed_hands_its_writes_to_the_kernel(tmp_path: Path) -> None:
    """As a buffered file would: a run that dies by an exception loses nothing it wrote."""
    path = tmp_path / "f.raw"
    target = HashedFile(path)
    target.write(b"written, never flushed")
    del target
    assert path.read_bytes() == b"written, never flushed"


@given(st.lists(st.binary(max_size=48), max_size=12))
def test_packets_go_to_the_pcap_as_is_ip_packet_says(payloads: list[bytes]) -> None:
    """The store's inline IP check keeps exactly what is_ip_packet calls a packet."""
    with tempfile.TemporaryDirectory() as out:
        case = CaseOutputs(Path(out), HANDLE)
        for seq, payload in enumerate(payloads):
            case._cc_packet(seq, payload, AT, [])
        kept = [n for n, p in enumerate(payloads) if not is_ip_packet(p)]
        assert (case.not_ip, case.not_ip_sequences) == (len(kept), kept[:NOT_IP_LISTED])
        case.close()
