"""The generated capture: 1500-octet frames to and from a documentation-address target."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

TARGET_MAC = bytes.fromhex("02005e005301")  # documentation MACs (RFC 7042)
OTHER_MAC = bytes.fromhex("02005e005302")
TARGET_IP = bytes([192, 0, 2, 10])  # TEST-NET-1
PEER_IP = bytes([198, 51, 100, 20])  # TEST-NET-2
FRAME_SIZE = 1500


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF


def frame(index: int) -> bytes:
    """A 1500-octet Ethernet/IPv4/UDP frame, from the target (even) or to it (odd)."""
    out = index % 2 == 0
    src_mac, dst_mac = (TARGET_MAC, OTHER_MAC) if out else (OTHER_MAC, TARGET_MAC)
    src, dst = (TARGET_IP, PEER_IP) if out else (PEER_IP, TARGET_IP)
    size = FRAME_SIZE - 14
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, index & 0xFFFF, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    ports = (40000, 5004) if out else (5004, 40000)
    udp = struct.pack("!HHHH", *ports, size - 20, 0)
    payload = (index.to_bytes(8, "big") * ((size - 28) // 8 + 1))[: size - 28]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp + payload


def write_capture(path: Path, count: int) -> Path:
    """A classic pcap (link type Ethernet) of ``count`` frames; recorded times are unused."""
    if path.exists():
        return path
    start = int(time.time())
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for index in range(count):
            data = frame(index)
            out.write(struct.pack("<IIII", start + index // 1000, index % 1000 * 1000,
                                  len(data), len(data)))  # fmt: skip
            out.write(data)
        # On disk before the step: written back during it, it would be a burst
        # of the bench's own in the disk the processes measured share.
        out.flush()
        os.fsync(out.fileno())
    return path
