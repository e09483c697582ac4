"""mediation/tap/packet.py: the common frame's one-unpack reader equals the general parser."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.tap import packet as P
from mediation.tap.packet import LINKTYPE_ETHERNET, parse_frame


def _frame(
    ethertype: int = 0x0800,
    first: int = 0x45,
    total: int | None = None,
    flags: int = 0,
    protocol: int = 17,
    ports: tuple[int, int] = (40000, 5004),
    payload: bytes = b"x" * 20,
) -> bytes:
    body = struct.pack(">HH", *ports) + payload
    size = 20 + len(body) if total is None else total
    ip = struct.pack(">BBHHHBBH4s4s", first, 0, size, 7, flags, 64, protocol, 0,
                     bytes([192, 0, 2, 10]), bytes([198, 51, 100, 20]))  # fmt: skip
    return bytes.fromhex("02005e00530202005e005301") + struct.pack(">H", ethertype) + ip + body


def _same(frame: bytes) -> None:
    common = P._common(frame)
    general = P._general(frame, LINKTYPE_ETHERNET)
    if common is not None:
        assert common == general
        assert [type(x) for x in common] == [type(x) for x in general]
    assert parse_frame(frame) == general


def test_the_common_frame_takes_the_one_unpack_reader() -> None:
    frame = _frame()
    assert P._common(frame) is not None
    _same(frame)


def test_frames_it_leaves_to_the_general_parser() -> None:
    for frame in (
        _frame(ethertype=0x8100),  # a VLAN tag
        _frame(first=0x46),  # IPv4 options
        _frame(flags=0x2000),  # more fragments
        _frame(flags=0x0001),  # a later fragment
        _frame(protocol=1),  # ICMP: no ports
        _frame(total=22),  # too short for the ports
        _frame()[:37],  # cut before the ports end
    ):
        assert P._common(frame) is None
        _same(frame)


@settings(max_examples=400, deadline=None)
@given(
    ethertype=st.sampled_from([0x0800, 0x86DD, 0x8100, 0x0806]),
    first=st.sampled_from([0x45, 0x44, 0x46, 0x4F, 0x65, 0x35]),
    total=st.one_of(st.none(), st.integers(0, 0xFFFF), st.integers(0, 80)),
    flags=st.one_of(st.just(0), st.just(0x4000), st.integers(0, 0xFFFF)),
    protocol=st.sampled_from([6, 17, 33, 132, 136, 1, 58, 47, 0]),
    ports=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    payload=st.binary(max_size=40),
    cut=st.integers(0, 120),
)
def test_built_frames_parse_the_same_both_ways(
    ethertype: int,
    first: int,
    total: int | None,
    flags: int,
    protocol: int,
    ports: tuple[int, int],
    payload: bytes,
    cut: int,
) -> None:
    frame = _frame(ethertype, first, total, flags, protocol, ports, payload)
    _same(frame)
    _same(frame[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_any_octets_parse_the_same_both_ways(data: bytes) -> None:
    _same(data)
    _same(_frame()[:14] + data)
