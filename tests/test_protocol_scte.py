"""SCTE/PacketCable content datagrams: byte by byte, refusals, and tshark reading them as pcli12."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from mediation.evidence.pcap import LINKTYPE_RAW, PcapWriter
from mediation.protocol.scte import (
    ScteRefused,
    ccc_id,
    frame,
    from_ntp,
    ntp_time,
    open_datagram,
    scte_key,
)

KEY = scte_key(bytes(range(32)))
WHEN = dt.datetime(2026, 11, 23, 0, 11, 0, 500000, tzinfo=dt.UTC)
# A UDP packet from the target 192.0.2.10 to 198.51.100.7 (documentation addresses).
PACKET = bytes.fromhex(
    "4500001c000100004011" + "0000" + "c000020a" + "c6336407" + "9c409c400008" + "0000"
)
TSHARK = shutil.which("tshark")


def test_frame_layout_is_pcli12_then_the_trailer() -> None:
    data = frame(KEY, 0x01020304, 4711, WHEN, PACKET)
    assert data[:4] == bytes.fromhex("01020304")
    seconds, fraction = struct.unpack(">II", data[4:12])
    assert seconds == int((WHEN - dt.datetime(1900, 1, 1, tzinfo=dt.UTC)).total_seconds())
    assert fraction == 1 << 31  # half a second
    assert data[12 : 12 + len(PACKET)] == PACKET
    trailer = data[12 + len(PACKET) :]
    assert trailer[:4] == b"MDSC" and int.from_bytes(trailer[4:12], "big") == 4711
    assert trailer[12:] == hmac.new(KEY, data[:-16], hashlib.sha256).digest()[:16]


def test_open_gives_back_what_was_framed() -> None:
    opened = open_datagram(KEY, frame(KEY, 7, 2**64 - 1, WHEN, PACKET))
    assert (opened.ccc, opened.sequence, opened.time, opened.packet) == (7, 2**64 - 1, WHEN, PACKET)


def test_ntp_time_keeps_microseconds() -> None:
    for when in (WHEN, WHEN.replace(microsecond=1), WHEN.replace(microsecond=999999)):
        assert from_ntp(ntp_time(when)) == when


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda d: d[:20], "too short for an SCTE datagram"),
        (lambda d: d[:5] + bytes([d[5] ^ 1]) + d[6:], "tag does not verify"),
        (lambda d: d[:-20] + bytes([d[-20] ^ 1]) + d[-19:], "tag does not verify"),
        (lambda d: d[:-28] + b"XXXX" + d[-24:], "no sequence trailer"),
        (lambda d: PACKET * 3, "no sequence trailer"),
    ],
)
def test_altered_or_foreign_datagrams_are_refused(mangle, reason: str) -> None:
    with pytest.raises(ScteRefused, match=reason):
        open_datagram(KEY, mangle(frame(KEY, 7, 1, WHEN, PACKET)))


def test_another_key_is_refused_and_ccc_ids_depend_on_key_and_handle() -> None:
    other = scte_key(bytes(32))
    with pytest.raises(ScteRefused, match="tag does not verify"):
        open_datagram(other, frame(KEY, 7, 1, WHEN, PACKET))
    assert ccc_id(KEY, "w-3f9a1c") == ccc_id(KEY, "w-3f9a1c")
    assert ccc_id(KEY, "w-3f9a1c") != ccc_id(KEY, "w-3f9a1d")
    assert ccc_id(KEY, "w-3f9a1c") != ccc_id(other, "w-3f9a1c")


def udp_in_ip(payload: bytes, port: int = 40000) -> bytes:
    """An IPv4/UDP packet (198.51.100.1 -> 203.0.113.5:port) around ``payload``."""
    udp = struct.pack(">HHHH", 50000, port, 8 + len(payload), 0) + payload
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         bytes([198, 51, 100, 1]), bytes([203, 0, 113, 5]))  # fmt: skip
    return header + udp


def tshark_pcli(path: Path, port: int = 40000) -> list[list[str]]:
    """tshark's pcli12 fields for each datagram of ``path``: CCC id, time, inner addresses."""
    assert TSHARK is not None
    done = subprocess.run(
        [TSHARK, "-r", str(path), "-d", f"udp.port=={port},pcli12", "-d", "pcli.payload,ip",
         "-T", "fields", "-E", "occurrence=l", "-e", "pcli.cccid", "-e", "pcli.timestamp",
         "-e", "ip.src", "-e", "ip.dst", "-e", "udp.dstport"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [line.split("\t") for line in done.stdout.splitlines()]


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_tshark_decodes_the_datagrams_as_pcli12(tmp_path: Path) -> None:
    path = tmp_path / "scte.pcap"
    with PcapWriter.open(path, linktype=LINKTYPE_RAW) as writer:
        for n in range(3):
            writer.write(udp_in_ip(frame(KEY, 0xA0B0C0D0, n, WHEN, PACKET)), WHEN)
    rows = tshark_pcli(path)
    assert len(rows) == 3
    for ccc, stamp, src, dst, dport in rows:
        assert int(ccc, 0) == 0xA0B0C0D0
        assert "2026" in stamp and "00:11:00.5" in stamp
        # The inner packet's addresses: the target's packet, not the delivery one.
        assert (src, dst, dport) == ("192.0.2.10", "198.51.100.7", "40000")
