"""mediation/tap/seed.py: the seed tap takes what -f passes and follows its warrant's MACs' DHCP."""

from __future__ import annotations

import test_tap_frames as F

from mediation.pdu import HeaderReport, SessionStart, decode
from mediation.pdu import taplink as T
from mediation.tap.seed import followed_macs, refit, seed_tap
from mediation.tap.tapconfig import TapConfig
from mediation.warrants.model import ContentLevel, Target, TargetKind

CONFIG = TapConfig("eth9", "CID-TEST-0001", "CASE-TEST-0001", "IAP-TEST", "127.0.0.1",
                   ContentLevel.HEADERS, filter="host 192.0.2.10")  # fmt: skip
MAC = Target(TargetKind.MAC, F.TARGET_MAC)


def ack(mac: str, address: str) -> bytes:
    message = F.dhcp(5, mac, yiaddr=address, lease=3600, server="192.0.2.1")
    return F.dhcp_frame(message, from_client=False, dst_mac=mac, dst_ip=address)


def udp(src: str, dst: str) -> bytes:
    return F.eth(F.GATEWAY_MAC, F.OTHER_MAC, 0x0800, F.ipv4(src, dst, 17, F.udp(5000, 53)))


def kinds(tap: object, frame: bytes) -> list[type]:
    return [type(decode(p.der)) for p in tap.process(frame, F.T0, interface="eth9")]  # type: ignore[attr-defined]


def test_the_filter_decides_and_only_the_warrants_mac_is_followed() -> None:
    tap = seed_tap(CONFIG, (MAC,))
    assert tap.matcher.kernel_expression() == (  # type: ignore[attr-defined]
        "(host 192.0.2.10) or udp port 67 or udp port 68 or (vlan and (udp port 67 or udp port 68))"
    )
    assert kinds(tap, udp("192.0.2.10", "203.0.113.5")) == [HeaderReport]  # -f passes it
    assert kinds(tap, udp("192.0.2.11", "203.0.113.5")) == []  # -f does not
    assert kinds(tap, ack(F.OTHER_MAC, "192.0.2.11")) == []  # another subscriber's DHCP
    assert SessionStart in kinds(tap, ack(F.TARGET_MAC, "192.0.2.10"))  # the warrant's MAC
    assert tap.matcher.is_learned(F.ip("192.0.2.10"))


def test_without_macs_the_kernel_filter_is_the_seeds_own() -> None:
    tap = seed_tap(CONFIG)
    assert tap.follower is None
    assert tap.matcher.kernel_expression() == "host 192.0.2.10"  # type: ignore[attr-defined]


def test_refit_rebuilds_only_when_the_warrants_macs_change() -> None:
    tap = seed_tap(CONFIG)
    now = F.T0
    warrant = T.TapWarrant("w-0a0001", "CASE-TEST-0001", "IAP-TEST", "headers", now, now,
                           (F.TARGET_MAC, "192.0.2.10"))  # fmt: skip
    other = T.TapWarrant("w-0a0002", "CASE-TEST-0002", None, "headers", now, now, ())

    def rebuild(macs: tuple[Target, ...]) -> object:
        return seed_tap(CONFIG, macs)

    assert refit(tap, T.WarrantSet(1, (other,)), rebuild) == (False, None)
    served, fitted = refit(tap, T.WarrantSet(2, (warrant, other)), rebuild)
    assert served and fitted is not None and followed_macs(fitted) == (MAC,)
    assert refit(fitted, T.WarrantSet(3, (warrant,)), rebuild) == (True, None)  # unchanged
