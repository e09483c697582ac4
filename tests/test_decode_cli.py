"""`mediate decode`, run as the analyst runs it: a real process on real files."""

from __future__ import annotations

import datetime as dt
import json
import select
import subprocess
import sys
from pathlib import Path

import pytest
from test_pcap import ethernet, udp_packet

from mediation import pdu as P
from mediation.evidence.pcap import LINKTYPE_ETHERNET, PcapWriter
from mediation.pdu.jsonview import packet_summary, to_json

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"

T = dt.datetime(2026, 11, 23, 0, 11, 0, 500000, tzinfo=dt.UTC)
CMII_STREAM = P.StreamId("w-3f9a1c", P.StreamKind.CMII)
CORRELATION = P.ContentIdentifier.correlation(b"\x01\x02")
# An IPv4/UDP packet from the target, as a CC payload.
CARRIED = udp_packet("192.0.2.10", 53000, "203.0.113.53", 53, b"q" * 12)

HEADER_REPORT = P.HeaderReport(
    case_id="CASE-0001",
    iap_system_id="IAP-1",
    timestamp=T,
    content_identifier=CORRELATION,
    header_set=P.HeaderSet(
        stream_id=P.Value.integer(1),
        source_ip=P.IPAddress("192.0.2.10", P.Allocation.DYNAMIC),
        destination_ip=P.IPAddress("2001:db8::1"),
        source_port="53000",
        destination_port="53",
    ),
)
CC = P.CCApdu(
    payload=CARRIED,
    header=P.CCDeliveryHeader(
        P.CorrelationInfo(CORRELATION, "CASE-0001", "IAP-1"), T, P.PacketDirection.FROM_SUBJECT, 9
    ),
)
KEEPALIVE = P.Keepalive(7, T)
ENVELOPE = P.Envelope(CMII_STREAM, 6, T, HEADER_REPORT, P.ClockStatus.SYNCHRONISED)
REPORT = P.ReceiverReport(CMII_STREAM, T, 8, (P.SequenceRange(2, 3),), 9)

RAW = [P.encode(r) for r in (HEADER_REPORT, CC, KEEPALIVE, ENVELOPE, REPORT)]


def mediate(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "mediation", "decode", *args],
        input=stdin.decode("latin-1"),
        capture_output=True,
        text=True,
        encoding="latin-1",
        timeout=60,
        check=False,
    )
    return done


def lines_of(done: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in done.stdout.splitlines()]


def offsets(parts: list[bytes]) -> list[int]:
    out, at = [], 0
    for part in parts:
        out.append(at)
        at += len(part)
    return out


def test_raw_ber_back_to_back(tmp_path: Path) -> None:
    path = tmp_path / "stream.ber"
    path.write_bytes(b"".join(RAW))
    done = mediate(str(path))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    pdus = lines_of(done)
    assert [p["type"] for p in pdus] == [
        "data-Header-Report",
        "IAS-CC-APDU",
        "keepalive",
        "pduEnvelope",
        "receiverReport",
    ]
    assert [p["from"] for p in pdus] == [{"file": str(path), "offset": o} for o in offsets(RAW)]

    report, cc, keepalive, envelope, receiver = pdus
    assert report["caseId"] == "CASE-0001"
    assert report["timestamp"] == "2026-11-23T00:11:00.500000Z"
    assert report["contentIdentifier"] == {"correlationID": "0102"}
    assert report["headerSet"] == {
        "streamID": {"integer": 1},
        "sourceIPaddress": {"address": "192.0.2.10", "allocationMethod": "dynamic"},
        "destinationIPaddress": {"address": "2001:db8::1", "allocationMethod": "unknown"},
        "sourcePortNumber": "53000",
        "destinationPortNumber": "53",
    }
    assert cc["payload"] == CARRIED.hex()
    assert cc["ccDeliveryHeader"]["packetDirection"] == "fromSubject"
    assert cc["ccDeliveryHeader"]["sequenceNumber"] == 9
    assert cc["packet"] == {
        "ipVersion": 4,
        "protocol": 17,
        "protocolName": "udp",
        "src": "192.0.2.10",
        "dst": "203.0.113.53",
        "length": len(CARRIED),
        "srcPort": 53000,
        "dstPort": 53,
    }
    assert keepalive == {
        "from": {"file": str(path), "offset": offsets(RAW)[2]},
        "type": "keepalive",
        "keepaliveId": 7,
        "sentTime": "2026-11-23T00:11:00.500000Z",
    }
    assert envelope["clockStatus"] == "synchronised" and envelope["redelivered"] is False
    assert envelope["content"] == {k: v for k, v in report.items() if k != "from"}
    assert receiver["missing"] == [{"first": 2, "last": 3}] and receiver["highestSequence"] == 9


def test_stdin_and_dash_and_unknown_later_message() -> None:
    data = RAW[2] + bytes.fromhex("af0100")
    for args in ((), ("-",)):
        done = mediate(*args, stdin=data)
        assert done.returncode == 0, done.stderr
        keepalive, later = lines_of(done)
        assert keepalive["from"] == {"file": "<stdin>", "offset": 0}
        assert later == {
            "from": {"file": "<stdin>", "offset": len(RAW[2])},
            "type": "unknownDeliveryMessage",
            "tag": 15,
            "raw": "af0100",
        }


def test_a_pipe_is_followed_pdu_by_pdu() -> None:
    """Each PDU comes out as soon as its last byte is in, not when the input ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mediation", "decode", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: select() must see every line still unread
    )
    assert process.stdin is not None and process.stdout is not None

    def next_line() -> dict:
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "no output while the input stays open"
        return json.loads(process.stdout.readline())

    try:
        process.stdin.write(RAW[2])
        process.stdin.flush()
        assert next_line()["from"] == {"file": "<stdin>", "offset": 0}
        process.stdin.write(RAW[4][:3])  # a header split across writes
        process.stdin.flush()
        process.stdin.write(RAW[4][3:] + RAW[2])
        process.stdin.flush()
        assert next_line()["type"] == "receiverReport"
        assert next_line()["from"] == {"file": "<stdin>", "offset": len(RAW[2] + RAW[4])}
        process.stdin.write(b"\x30\x80")  # indefinite length: refused without waiting
        process.stdin.flush()
        assert process.wait(timeout=30) == 2
        error = process.stderr.read().decode()
        at = len(RAW[2] + RAW[4] + RAW[2])
        assert (
            error == f"mediate: error: <stdin>: byte {at + 1}: indefinite length is not accepted\n"
        )
    finally:
        process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            pipe.close()


def test_hex_with_comments_groups_and_split_pdus(tmp_path: Path) -> None:
    half = len(RAW[0]) // 2
    text = (
        "# captured by hand\n"
        f"{RAW[2].hex().upper()}   # a keepalive\n"
        f"{RAW[0][:half].hex(' ')}\n"  # one PDU over two lines, spaced bytes
        f"  {RAW[0][half:].hex()}\n"
        "\n"
        "# second group\n"
        f"{RAW[4].hex()}\n"
    )
    path = tmp_path / "pdus.hex"
    path.write_text(text)
    done = mediate("--hex", str(path))
    assert done.returncode == 0, done.stderr
    pdus = lines_of(done)
    assert [p["type"] for p in pdus] == ["keepalive", "data-Header-Report", "receiverReport"]
    at = len(RAW[2]) + len(RAW[0])
    assert [p["from"] for p in pdus] == [
        {"file": str(path), "line": 2, "offset": 0},
        {"file": str(path), "line": 3, "offset": len(RAW[2])},
        {"file": str(path), "line": 7, "offset": at},
    ]
    # the same text on stdin
    assert lines_of(mediate("--hex", stdin=text.encode()))[2]["from"]["line"] == 7


def test_pretty_is_indented_with_a_blank_line_between(tmp_path: Path) -> None:
    path = tmp_path / "two.ber"
    path.write_bytes(RAW[2] + RAW[4])
    done = mediate("--pretty", str(path))
    assert done.returncode == 0, done.stderr
    blocks = done.stdout.split("\n\n")
    assert len(blocks) == 2
    assert [json.loads(b)["type"] for b in blocks] == ["keepalive", "receiverReport"]
    assert '\n  "type": "keepalive",\n' in blocks[0]


def _capture(path: Path) -> list[bytes]:
    """A capture of the delivery network, and the UDP payloads it carries, in order."""
    two = RAW[0] + RAW[1]  # a datagram may hold several PDUs
    frames = [
        ethernet(udp_packet("192.0.2.1", 40000, "198.51.100.2", 6666, two)),
        MAC_ARP,
        ethernet(udp_packet("192.0.2.1", 40001, "198.51.100.53", 53, b"\x12\x34not a PDU")),
        ethernet(udp_packet("192.0.2.1", 40000, "198.51.100.2", 6666, RAW[2]), vlans=(42,)),
        ethernet(udp_packet("2001:db8::1", 40002, "2001:db8::2", 6666, RAW[3])),
        ethernet(_later_fragment()),
    ]
    with PcapWriter.open(path, linktype=LINKTYPE_ETHERNET) as writer:
        for number, frame in enumerate(frames):
            writer.write(frame, T + dt.timedelta(milliseconds=number))
    return frames


MAC_ARP = bytes(6) + bytes.fromhex("02005e005301") + b"\x08\x06" + bytes(28)


def _later_fragment() -> bytes:
    packet = udp_packet("192.0.2.1", 40000, "198.51.100.2", 6666, RAW[4])
    return packet[:6] + b"\x00\x10" + packet[8:]  # fragment offset 128


def test_pcap_of_udp_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "delivery.pcap"
    _capture(path)
    done = mediate("--port", "6666", str(path))
    assert done.returncode == 0, done.stderr
    pdus = lines_of(done)
    assert [p["type"] for p in pdus] == [
        "data-Header-Report",
        "IAS-CC-APDU",
        "keepalive",
        "pduEnvelope",
    ]
    first = {"file": str(path), "packet": 1, "time": "2026-11-23T00:11:00.500000Z"}
    first |= {"src": "192.0.2.1", "sport": 40000, "dst": "198.51.100.2", "dport": 6666}
    assert pdus[0]["from"] == first | {"offset": 0}
    assert pdus[1]["from"] == first | {"offset": len(RAW[0])}
    assert pdus[2]["from"]["packet"] == 4  # behind the VLAN tag
    assert pdus[2]["from"]["time"] == "2026-11-23T00:11:00.503000Z"
    assert pdus[3]["from"] | {"time": None} == {
        "file": str(path),
        "packet": 5,
        "time": None,
        "src": "2001:db8::1",
        "sport": 40002,
        "dst": "2001:db8::2",
        "dport": 6666,
        "offset": 0,
    }
    assert pdus[1]["packet"]["srcPort"] == 53000
    # The later fragment cannot be read, and the analyst is told so.
    assert done.stderr.splitlines() == [
        f"mediate: note: {path}: skipped 1 IP fragment(s) after the first "
        "(fragments are not reassembled)"
    ]


def test_pcap_forced_and_detected_from_stdin(tmp_path: Path) -> None:
    path = tmp_path / "delivery.cap"
    _capture(path)
    done = mediate("--pcap", "--port", "6666", "-", stdin=path.read_bytes())
    assert done.returncode == 0, done.stderr
    assert len(lines_of(done)) == 4
    assert lines_of(done)[0]["from"]["file"] == "<stdin>"


def test_pcap_without_port_stops_at_a_datagram_that_is_not_pdus(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pcap"
    frames = _capture(path)
    done = mediate(str(path))
    assert done.returncode == 2
    assert len(lines_of(done)) == 2  # packet 1's PDUs came out first
    # The bad byte is named as a byte of the file: header, 3 records, frame headers.
    payload = 24 + sum(16 + len(f) for f in frames[:2]) + 16 + 14 + 20 + 8
    assert done.stderr.splitlines() == [
        f"mediate: error: {path}: byte {payload}: packet 3: "
        "length 52 runs past the end of the data (9 bytes left)"
    ]
    assert path.read_bytes()[payload] == 0x12


def test_garbage_names_the_byte_and_keeps_what_came_before(tmp_path: Path) -> None:
    path = tmp_path / "bad.ber"
    # A keepalive, then a header report whose case identity's tag is broken.
    broken = bytearray(RAW[0])
    at = broken.index(b"\x80\x09CASE-0001")
    broken[at] = 0x9F
    path.write_bytes(RAW[2] + bytes(broken))
    done = mediate(str(path))
    assert done.returncode == 2
    assert [p["type"] for p in lines_of(done)] == ["keepalive"]
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"mediate: error: {path}: byte {len(RAW[2]) + at}: IasProtocol: ")
    assert "CASE-0001" not in line  # errors never carry a case identity

    junk = tmp_path / "junk.bin"
    junk.write_bytes(RAW[2] + b"GIF89a")
    done = mediate(str(junk))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"mediate: error: {junk}: byte {len(RAW[2])}: "
        "length 73 runs past the end of the data (4 bytes left)"
    ]


def test_truncated_pdu_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "cut.ber"
    path.write_bytes(RAW[2] + RAW[3][:-5])
    done = mediate(str(path))
    assert done.returncode == 2
    assert len(lines_of(done)) == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"mediate: error: {path}: byte {len(RAW[2])}: length ")
    assert "runs past the end of the data" in line


def test_unreadable_files_and_the_files_after_them(tmp_path: Path) -> None:
    good = tmp_path / "good.ber"
    good.write_bytes(RAW[2])
    missing = tmp_path / "missing.ber"
    done = mediate(str(missing), str(tmp_path), str(good))
    assert done.returncode == 2
    assert [p["from"]["file"] for p in lines_of(done)] == [str(good)]
    assert done.stderr.splitlines() == [
        f"mediate: error: {missing}: cannot read: No such file or directory",
        f"mediate: error: {tmp_path}: cannot read: Is a directory",
    ]


@pytest.mark.parametrize(
    ("args", "data", "message"),
    [
        (("--hex",), b"a0 02\n05 0g\n", "byte 3: line 2: 'g' is not a hex digit"),
        (
            ("--hex",),
            f"{RAW[2].hex()}\n\n# next\nabc\n".encode(),
            f"byte {len(RAW[2]) + 1}: line 4: odd number of hex digits in this group",
        ),
        (("--pcap",), RAW[2], "byte 0: not a pcap file (bad magic number)"),
        ((), bytes.fromhex("d4c3b2a1") + bytes(8), "byte 12: truncated pcap file header"),
    ],
    ids=["hex-digit", "hex-odd", "not-pcap", "short-pcap"],
)
def test_input_errors(tmp_path: Path, args: tuple[str, ...], data: bytes, message: str) -> None:
    path = tmp_path / "input"
    path.write_bytes(data)
    done = mediate(*args, str(path))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"mediate: error: {path}: {message}"]


def test_truncated_pcap_record(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    frames = _capture(path)
    data = path.read_bytes()
    path.write_bytes(data[: 24 + 16 + len(frames[0]) + 10])
    done = mediate("--port", "6666", str(path))
    assert done.returncode == 2
    assert len(lines_of(done)) == 2
    assert done.stderr.splitlines() == [
        f"mediate: error: {path}: byte {24 + 16 + len(frames[0])}: truncated packet record header"
    ]


def test_usage_errors() -> None:
    done = mediate("--hex", "--port", "6666")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "mediate: error: --port: applies to pcap input, not to --hex"
    ]
    done = mediate("--port", "70000")
    assert done.returncode == 2
    assert "'70000' is not a port number" in done.stderr


def test_every_golden_pdu_kind_decodes() -> None:
    """One PDU of every kind (fixtures/golden) comes out with its ASN.1 type name."""
    files = sorted(GOLDEN.glob("*.hex"))
    if not files:
        pytest.skip("fixtures/golden has no PDUs")
    done = mediate("--hex", *map(str, files))
    assert done.returncode == 0, done.stderr
    types = [p["type"] for p in lines_of(done)]
    assert len(types) == len(files)
    for name in (
        "access-Attempt",
        "access-Signaling-Message-Report",
        "session-Already-Established",
        "data-Summary-Report",
        "IAS-CC-APDU",
        "pduEnvelope",
        "keepaliveAnswer",
        "acknowledgement",
        "replayRequest",
        "replayResult",
        "checkpoint",
    ):
        assert name in types


def test_json_view_of_values_and_packets() -> None:
    v6 = udp_packet("2001:db8::10", 5000, "2001:db8::53", 53, b"q")
    hop = bytes([17, 0]) + bytes(6)  # a hop-by-hop header before UDP
    v6_hop = v6[:4] + (len(v6) - 40 + 8).to_bytes(2, "big") + b"\x00" + v6[7:40] + hop + v6[40:]
    assert packet_summary(v6_hop) == {
        "ipVersion": 6,
        "protocol": 17,
        "protocolName": "udp",
        "src": "2001:db8::10",
        "dst": "2001:db8::53",
        "length": len(v6_hop),
        "srcPort": 5000,
        "dstPort": 53,
    }
    later = CARRIED[:6] + b"\x00\x03" + CARRIED[8:]  # fragment at offset 24: no ports
    assert packet_summary(later) == {
        "ipVersion": 4,
        "protocol": 17,
        "protocolName": "udp",
        "src": "192.0.2.10",
        "dst": "203.0.113.53",
        "length": len(CARRIED),
        "fragmentOffset": 24,
    }
    assert packet_summary(CARRIED[:30])["captured"] == 30
    for not_ip in (b"", b"\x45" + bytes(19), b"\x02\x00\x5e", b"\x60" + bytes(20)):
        assert packet_summary(not_ip) is None
    big = to_json(
        P.CCApdu(
            payload=b"\x00",
            header=P.CCDeliveryHeader(P.CorrelationInfo(CORRELATION), sequence_number=2**70),
        )
    )
    assert big["ccDeliveryHeader"]["sequenceNumber"] == hex(2**70)
    assert "packet" not in big
    assert list(big)[-1] == "payload"
