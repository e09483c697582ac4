"""mediation.evidence.pcap and udp_frames: files round-trip, tcpdump reads what we write, and UDP
datagrams come out of every frame shape a capture of the delivery network has.

The frame builders here are used by test_decode_cli.py too.
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from mediation.evidence import pcap, udp_frames

TCPDUMP = shutil.which("tcpdump") or (
    "/usr/sbin/tcpdump" if Path("/usr/sbin/tcpdump").exists() else None
)
needs_tcpdump = pytest.mark.skipif(TCPDUMP is None, reason="tcpdump is not installed")

T0 = dt.datetime(2026, 11, 23, 0, 11, 0, 500001, tzinfo=dt.UTC)
T0_NS = 1795392660_500001_000
MAC_A = bytes.fromhex("02005e005301")
MAC_B = bytes.fromhex("02005e005302")


# Frame builders -------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes, **ip: int) -> bytes:
    """An IPv4 or IPv6 packet (by the addresses) holding one UDP datagram, checksums right.

    ``ip`` may set ``flags_fragment`` (IPv4) to build fragments.
    """
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    length = 8 + len(payload)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, 17, length)
    else:
        pseudo = s.packed + d.packed + struct.pack("!IxxxB", length, 17)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    check = _checksum(pseudo + header + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, length, check) + payload
    if s.version == 6:
        return struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + s.packed + d.packed + udp
    flags = ip.get("flags_fragment", 0x4000)  # DF
    head = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 1, flags, 64, 17, 0)
    head += s.packed + d.packed
    head = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
    return head + udp


def ethernet(packet: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    """An Ethernet II frame, with 802.1Q tags (outermost first) if ``vlans``."""
    ethertype = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
    tags = b"".join(struct.pack("!HH", 0x8100, vid) for vid in vlans)
    return MAC_B + MAC_A + tags + struct.pack("!H", ethertype) + packet


def sll(packet: bytes) -> bytes:
    """A Linux cooked (SLL, link type 113) frame: what ``tcpdump -i any`` used to write."""
    ethertype = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
    return (
        struct.pack("!HHH", 0, 1, 6) + MAC_A + b"\x00\x00" + struct.pack("!H", ethertype) + packet
    )


def read_all(data: bytes) -> tuple[pcap.PcapReader, list[pcap.Packet]]:
    reader = pcap.PcapReader(io.BytesIO(data))
    return reader, list(reader)


def tcpdump(path: Path, *options: str) -> list[str]:
    """What tcpdump prints for a file, one string per packet."""
    done = subprocess.run(
        [TCPDUMP, "-r", str(path), "-nn", "-tt", *options],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


# Round trips ----------------------------------------------------------------

FRAMES = [
    ethernet(udp_packet("192.0.2.1", 5000, "198.51.100.2", 6666, b"x" * n)) for n in (0, 9, 300)
]


@pytest.mark.parametrize("nanosecond", [False, True])
@pytest.mark.parametrize("order", ["<", ">"])
def test_round_trip(nanosecond: bool, order: str) -> None:
    out = io.BytesIO()
    with pcap.PcapWriter(out, nanosecond=nanosecond, byte_order=order) as writer:  # type: ignore[arg-type]
        writer.write(FRAMES[0], T0)
        writer.write(FRAMES[1], T0_NS + 789)
        writer.write(FRAMES[2], T0 + dt.timedelta(seconds=1))
    reader, packets = read_all(out.getvalue())
    assert (reader.nanosecond, reader.byte_order, reader.linktype) == (nanosecond, order, 1)
    assert reader.version == (2, 4) and reader.snaplen == pcap.DEFAULT_SNAPLEN
    assert [p.data for p in packets] == FRAMES
    assert [p.number for p in packets] == [1, 2, 3]
    assert [p.orig_len for p in packets] == [len(f) for f in FRAMES]
    # Microsecond files drop the nanoseconds (never round a packet later).
    assert packets[1].time_ns == T0_NS + (789 if nanosecond else 0)
    assert packets[0].time == T0
    assert packets[2].time == T0 + dt.timedelta(seconds=1)
    # offset points at the frame's bytes in the file
    data = out.getvalue()
    assert all(data[p.offset : p.offset + len(p.data)] == p.data for p in packets)


def test_header_bytes_are_the_classic_format() -> None:
    out = io.BytesIO()
    with pcap.PcapWriter(out, linktype=pcap.LINKTYPE_RAW, snaplen=65535) as writer:
        writer.write(b"\x45" + bytes(19), T0)
    data = out.getvalue()
    assert data[:24] == bytes.fromhex("d4c3b2a1 0200 0400 00000000 00000000 ffff0000 65000000")
    assert data[24:40] == struct.pack("<IIII", 1795392660, 500001, 20, 20)
    assert len(data) == 24 + 16 + 20


def test_hand_built_big_endian_nanosecond_file_is_read() -> None:
    head = struct.pack(">IHHiIII", pcap.MAGIC_NSEC, 2, 4, 0, 0, 65535, 113)
    frame = sll(udp_packet("203.0.113.5", 1, "203.0.113.6", 2, b"hi"))
    record = struct.pack(">IIII", 1795392660, 999_999_999, len(frame), len(frame)) + frame
    reader, packets = read_all(head + record)
    assert reader.linktype == pcap.LINKTYPE_LINUX_SLL and reader.nanosecond
    assert packets[0].time_ns == 1795392660_999_999_999
    assert udp_frames.udp_datagram(packets[0].data, reader.linktype).payload == b"hi"


def test_snaplen_cuts_frames_and_keeps_original_length() -> None:
    out = io.BytesIO()
    with pcap.PcapWriter(out, snaplen=64) as writer:
        writer.write(FRAMES[2], T0)
    _reader, (packet,) = read_all(out.getvalue())
    assert packet.data == FRAMES[2][:64] and packet.orig_len == len(FRAMES[2])
    datagram = udp_frames.udp_datagram(packet.data, pcap.LINKTYPE_ETHERNET)
    assert datagram.truncated and datagram.payload == b"x" * (64 - 14 - 20 - 8)


def test_writer_flushes_and_closes_its_file(tmp_path: Path) -> None:
    path = tmp_path / "cc.pcap"
    with pcap.PcapWriter.open(path, nanosecond=True) as writer:
        writer.write(FRAMES[1], T0)
        writer.sync()
        assert path.stat().st_size == 24 + 16 + len(FRAMES[1])  # on disk before close
    assert writer._stream.closed
    with pytest.raises(ValueError, match="closed"):
        writer.write(FRAMES[1], T0)
    writer.close()  # twice is fine
    with pytest.raises(FileExistsError):
        pcap.PcapWriter.open(path)
    with pcap.PcapReader.open(path) as reader:
        assert [p.data for p in reader] == [FRAMES[1]]


def test_writer_leaves_a_callers_stream_open() -> None:
    out = io.BytesIO()
    with pcap.PcapWriter(out) as writer:
        writer.write(FRAMES[0], T0)
    assert not out.closed


def test_writer_refuses_bad_times() -> None:
    with pcap.PcapWriter(io.BytesIO()) as writer:
        with pytest.raises(ValueError, match="timezone-aware"):
            writer.write(FRAMES[0], T0.replace(tzinfo=None))
        with pytest.raises(ValueError, match="1970 to 2106"):
            writer.write(FRAMES[0], -1)
        with pytest.raises(TypeError):
            writer.write(FRAMES[0], 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message", "offset"),
    [
        (b"", "not a pcap file", 0),
        (b"\x0a\x0d\x0d\x0a" + bytes(40), "pcapng is not supported", 0),
        (b"GIF89a" + bytes(40), "not a pcap file", 0),
        (bytes.fromhex("d4c3b2a1 0200"), "truncated pcap file header", 6),
        (bytes.fromhex("d4c3b2a1 0100 0000") + bytes(16), "version 1.0", 4),
    ],
)
def test_bad_file_header(data: bytes, message: str, offset: int) -> None:
    with pytest.raises(pcap.PcapError, match=message) as info:
        pcap.PcapReader(io.BytesIO(data))
    assert info.value.offset == offset


def test_bad_records_name_their_offset() -> None:
    out = io.BytesIO()
    with pcap.PcapWriter(out) as writer:
        writer.write(FRAMES[0], T0)
    good = out.getvalue()
    with pytest.raises(pcap.PcapError, match="truncated packet: 42 bytes announced, 41") as info:
        read_all(good[:-1])
    assert info.value.offset == 24
    with pytest.raises(pcap.PcapError, match="truncated packet record header"):
        read_all(good + b"\x00" * 5)
    huge = good + struct.pack("<IIII", 0, 0, 0xFFFFFFF0, 0xFFFFFFF0)
    with pytest.raises(pcap.PcapError, match="claims 4294967280 bytes") as info:
        read_all(huge)
    assert info.value.offset == len(good) + 8


# tcpdump reads what we write ------------------------------------------------


@needs_tcpdump
def test_tcpdump_reads_ethernet_with_vlan_and_ipv6(tmp_path: Path) -> None:
    path = tmp_path / "eth.pcap"
    with pcap.PcapWriter.open(path) as writer:
        writer.write(ethernet(udp_packet("192.0.2.1", 5000, "198.51.100.2", 6666, b"a" * 10)), T0)
        v4 = udp_packet("192.0.2.1", 5001, "198.51.100.2", 6667, b"b" * 20)
        writer.write(ethernet(v4, vlans=(42,)), T0 + dt.timedelta(seconds=1))
        v6 = udp_packet("2001:db8::1", 5002, "2001:db8::2", 6668, b"c" * 30)
        writer.write(ethernet(v6), T0 + dt.timedelta(seconds=2))
    lines = tcpdump(path, "-e")
    assert len(lines) == 3
    assert lines[0].startswith("1795392660.500001 ")
    assert "192.0.2.1.5000 > 198.51.100.2.6666: UDP, length 10" in lines[0]
    assert (
        "vlan 42" in lines[1] and "192.0.2.1.5001 > 198.51.100.2.6667: UDP, length 20" in lines[1]
    )
    assert lines[2].startswith("1795392662.500001 ")
    assert "2001:db8::1.5002 > 2001:db8::2.6668: UDP, length 30" in lines[2]


@needs_tcpdump
def test_tcpdump_checks_our_checksums(tmp_path: Path) -> None:
    """The test frames are honest packets: tcpdump -vv verifies every checksum."""
    path = tmp_path / "v.pcap"
    with pcap.PcapWriter.open(path, linktype=pcap.LINKTYPE_RAW) as writer:
        writer.write(udp_packet("192.0.2.1", 5000, "198.51.100.2", 6666, b"abc"), T0)
        writer.write(udp_packet("2001:db8::1", 5000, "2001:db8::2", 6666, b"abcd"), T0)
    text = "\n".join(tcpdump(path, "-vv"))
    assert "bad" not in text and "incorrect" not in text, text
    assert text.count("udp sum ok") == 2, text


@needs_tcpdump
@pytest.mark.parametrize(
    ("linktype", "build", "name"),
    [(pcap.LINKTYPE_RAW, lambda p: p, "RAW"), (pcap.LINKTYPE_LINUX_SLL, sll, "LINUX_SLL")],
)
def test_tcpdump_reads_raw_ip_and_sll(tmp_path: Path, linktype: int, build, name: str) -> None:
    path = tmp_path / f"{name}.pcap"
    with pcap.PcapWriter.open(path, linktype=linktype, nanosecond=True) as writer:
        writer.write(
            build(udp_packet("203.0.113.7", 40000, "198.51.100.9", 6666, b"z" * 5)), T0_NS + 1
        )
    done = subprocess.run(
        [TCPDUMP, "-r", str(path), "-nn", "-tt", "--time-stamp-precision=nano"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert f"link-type {name}" in done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith("1795392660.500001001 ")
    assert "203.0.113.7.40000 > 198.51.100.9.6666: UDP, length 5" in line


# UDP datagrams out of frames ------------------------------------------------

V4 = udp_packet("192.0.2.1", 5000, "198.51.100.2", 6666, b"payload")
V6 = udp_packet("2001:db8::1", 5000, "2001:db8::2", 6666, b"payload")


@pytest.mark.parametrize(
    ("frame", "linktype", "offset"),
    [
        (ethernet(V4), 1, 14 + 28),
        (ethernet(V4, vlans=(10,)), 1, 18 + 28),
        (ethernet(V4, vlans=(10, 20)), 1, 22 + 28),  # QinQ
        (sll(V4), 113, 16 + 28),
        (struct.pack("!HHIHBB", 0x0800, 0, 3, 1, 0, 6) + MAC_A + b"\0\0" + V4, 276, 20 + 28),
        (V4, 101, 28),
        (V4, 228, 28),
    ],
    ids=["ethernet", "vlan", "qinq", "sll", "sll2", "raw", "ipv4"],
)
def test_udp_datagram_ipv4(frame: bytes, linktype: int, offset: int) -> None:
    datagram = udp_frames.udp_datagram(frame, linktype)
    src, sport, dst, dport, payload = datagram
    assert (str(src), sport, str(dst), dport, payload) == (
        "192.0.2.1",
        5000,
        "198.51.100.2",
        6666,
        b"payload",
    )
    assert frame[datagram.offset :] == b"payload" and datagram.offset == offset
    assert not datagram.truncated


def test_udp_datagram_ipv6_and_extension_headers() -> None:
    src, sport, dst, dport, payload = udp_frames.udp_datagram(ethernet(V6), 1)
    assert (str(src), sport, str(dst), dport, payload) == (
        "2001:db8::1",
        5000,
        "2001:db8::2",
        6666,
        b"payload",
    )
    # hop-by-hop options (8 octets) before the UDP header
    hop = bytes([17, 0]) + bytes(6)
    with_hop = V6[:4] + struct.pack("!H", len(V6) - 40 + 8) + bytes([0]) + V6[7:40] + hop + V6[40:]
    assert udp_frames.udp_datagram(with_hop, 101).payload == b"payload"


def test_ethernet_padding_is_not_payload() -> None:
    short = udp_packet("192.0.2.1", 5000, "198.51.100.2", 6666, b"ab")
    frame = ethernet(short) + bytes(60 - 14 - len(short))  # padded to the Ethernet minimum
    assert udp_frames.udp_datagram(frame, 1).payload == b"ab"


def test_ipv4_fragments() -> None:
    first = udp_packet("192.0.2.1", 5000, "198.51.100.2", 6666, b"p" * 100, flags_fragment=0x2000)
    cut = first[: 20 + 8 + 40]  # the first fragment carries the first 48 bytes of UDP
    cut = cut[:2] + struct.pack("!H", len(cut)) + cut[4:]
    datagram = udp_frames.udp_datagram(ethernet(cut), 1)
    assert datagram.truncated and datagram.payload == b"p" * 40
    later = cut[:6] + struct.pack("!H", 6) + cut[8:]  # offset 48
    with pytest.raises(udp_frames.SkippedFrame, match="IPv4 fragment at offset 48") as info:
        udp_frames.udp_datagram(ethernet(later), 1)
    assert info.value.fragment


@pytest.mark.parametrize(
    ("frame", "linktype", "reason"),
    [
        (MAC_B + MAC_A + b"\x08\x06" + bytes(28), 1, "not IP"),
        (V4[:9] + b"\x06" + V4[10:], 101, "not UDP"),
        (V4[:26], 101, "truncated UDP header"),
        (V4[:10], 101, "truncated or bad IPv4 header"),
        (b"", 101, "empty frame"),
        (b"\x60" + bytes(10), 101, "truncated or bad IPv6 header"),
        (V4, 147, "link type 147"),
        (MAC_B + MAC_A + b"\x81\x00\x00", 1, "truncated VLAN tag"),
    ],
    ids=["arp", "tcp", "udp-cut", "ip-cut", "empty", "ipv6-cut", "linktype", "vlan-cut"],
)
def test_frames_without_a_udp_datagram(frame: bytes, linktype: int, reason: str) -> None:
    with pytest.raises(udp_frames.SkippedFrame, match=reason) as info:
        udp_frames.udp_datagram(frame, linktype)
    assert not info.value.fragment


# records(): the replay's reader -------------------------------------------------


@pytest.mark.parametrize("nanosecond", [False, True])
def test_records_give_what_iterating_gives_without_packets(nanosecond: bool) -> None:
    out = io.BytesIO()
    with pcap.PcapWriter(out, nanosecond=nanosecond) as writer:
        writer.write(FRAMES[0], T0)
        writer.write(FRAMES[1], T0_NS + 789)
        writer.write(FRAMES[2], T0 + dt.timedelta(seconds=1))
    _reader, packets = read_all(out.getvalue())
    records = list(pcap.PcapReader(io.BytesIO(out.getvalue())).records())
    assert records == [(p.data, p.time_ns) for p in packets]
    assert [pcap.capture_time(ns) for _data, ns in records] == [p.time for p in packets]


def test_records_refuse_what_iterating_refuses_at_the_same_offset() -> None:
    out = io.BytesIO()
    with pcap.PcapWriter(out) as writer:
        writer.write(FRAMES[0], T0)
    good = out.getvalue()
    for bad in (good[:-1], good + b"\x00" * 5, good + struct.pack("<IIII", 0, 0, 2**32 - 16, 0)):
        with pytest.raises(pcap.PcapError) as iterating:
            read_all(bad)
        with pytest.raises(pcap.PcapError) as reading:
            list(pcap.PcapReader(io.BytesIO(bad)).records())
        assert str(reading.value) == str(iterating.value)
        assert reading.value.offset == iterating.value.offset
