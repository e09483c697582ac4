"""mediation/tap/bpf.py: the kernel filter's expressions, chaining, and libpcap's programs.

The programs are run here by a small interpreter (tests/bpf_support.py) on
frames whose VLAN tags are in the frame (as this host sends them); the
network namespace tests (test_tap_live.py) run them in the kernel, where
received tags are metadata.
"""

from __future__ import annotations

import os

import pytest
import test_tap_frames as F
from bpf_support import run

from mediation.tap.bpf import (
    ACCEPT_ALL,
    ACCEPT_NONE,
    Insn,
    chain,
    filter_expressions,
    kernel_filter,
)
from mediation.warrants.target_text import parse_target


def targets(*texts: str) -> list:
    return [parse_target(t) for t in texts]


def test_expressions_unscoped_then_each_vlan_scope() -> None:
    out = filter_expressions(
        targets("192.0.2.10", "198.51.100.0/24", "192.0.2.20@vlan:100"), "eth1"
    )
    body = "host 192.0.2.10 or net 198.51.100.0/24"
    assert out == [
        body,
        f"vlan and ({body})",
        f"vlan and vlan and ({body})",
        "vlan 100 and (host 192.0.2.20)",
        "vlan 100 and vlan and (host 192.0.2.20)",
    ]


def test_dhcp_goes_with_a_mac_only() -> None:
    out = filter_expressions(targets(F.TARGET_MAC), "eth1")
    assert out is not None and out[0] == f"ether host {F.TARGET_MAC} or udp port 67 or udp port 68"
    assert "udp port 67" not in filter_expressions(targets("192.0.2.10"), "eth1")[0]


def test_interface_scopes_pick_the_capture_interface() -> None:
    ts = targets("192.0.2.10@iface:eth1", "192.0.2.11@iface:eth2", "iface:eth2")
    assert filter_expressions(ts, "eth1")[0] == "host 192.0.2.10"
    assert filter_expressions(ts, "eth2") is None  # iface:eth2 takes everything there
    assert filter_expressions(ts, "eth3") == []  # nothing for eth3: accept nothing


def test_chain_accepts_what_any_program_accepts() -> None:
    # Program 1 accepts frames whose first octet is 1; program 2 those whose first is 2.
    def first_is(value: int) -> list[Insn]:
        return [Insn(0x30, 0, 0, 0), Insn(0x15, 0, 1, value), Insn(0x06, 0, 0, 99),
                Insn(0x06, 0, 0, 0)]  # fmt: skip

    both = chain([first_is(1), first_is(2)])
    assert [run(both, bytes([n])) for n in (1, 2, 3)] == [99, 99, 0]
    assert chain([]) == ACCEPT_NONE
    assert run(ACCEPT_ALL, b"x") and not run(ACCEPT_NONE, b"x")


def needs_libpcap_live() -> None:
    if os.geteuid() != 0:
        pytest.skip("libpcap compiles for a live interface only with CAP_NET_RAW")


def udp(src: str, dst: str, *vlans: int, sport: int = 5000, dport: int = 53) -> bytes:
    packet = F.ipv4(src, dst, 17, F.udp(sport, dport))
    return F.eth(F.GATEWAY_MAC, F.OTHER_MAC, 0x0800, packet, *[(0x8100, v) for v in vlans])


def test_libpcap_programs_select_the_targets_frames() -> None:
    needs_libpcap_live()
    kf = kernel_filter(targets("192.0.2.10", "192.0.2.20@vlan:100", "2001:db8::10"), "lo")
    assert kf.alternatives == 5 and not kf.fallback
    accept = {
        "target": udp("192.0.2.10", "203.0.113.5"),
        "to target, tagged": udp("203.0.113.5", "192.0.2.10", 300),
        "to target, QinQ": udp("203.0.113.5", "192.0.2.10", 300, 7),
        "scoped, its VLAN": udp("192.0.2.20", "203.0.113.5", 100),
        "scoped, QinQ in its VLAN": udp("192.0.2.20", "203.0.113.5", 100, 7),
        "IPv6": F.eth(
            F.GATEWAY_MAC,
            F.OTHER_MAC,
            0x86DD,
            F.ipv6("2001:db8::10", "2001:db8::1", 17, F.udp(1, 2)),
        ),
    }
    refuse = {
        "bystander": udp("192.0.2.11", "203.0.113.5"),
        "scoped address, other VLAN": udp("192.0.2.20", "203.0.113.5", 200),
        "scoped address, untagged": udp("192.0.2.20", "203.0.113.5"),
        "scoped address, inner tag only": udp("192.0.2.20", "203.0.113.5", 200, 100),
        "DHCP without a MAC target": udp("0.0.0.0", "255.255.255.255", sport=68, dport=67),
    }
    assert {name for name, f in accept.items() if not run(kf.program, f)} == set()
    assert {name for name, f in refuse.items() if run(kf.program, f)} == set()


def test_libpcap_program_for_a_mac_passes_dhcp_for_following() -> None:
    needs_libpcap_live()
    kf = kernel_filter(targets(F.TARGET_MAC), "lo")
    offer = udp("192.0.2.1", "255.255.255.255", sport=67, dport=68)  # neither MAC is the target's
    assert run(kf.program, offer)
    assert not run(kf.program, udp("192.0.2.11", "203.0.113.5"))


def test_too_many_targets_fall_back_to_accepting_everything() -> None:
    needs_libpcap_live()
    many = targets(*(f"198.51.{n // 256}.{n % 256}@vlan:{n % 4000 + 1}" for n in range(80)))
    kf = kernel_filter(many, "lo")
    assert kf.fallback and kf.program == ACCEPT_ALL
