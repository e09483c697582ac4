"""fixtures/make_sample_capture.py: a deterministic pcap that tcpdump reads,
with a sidecar that says which packets are the target's.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "fixtures" / "make_sample_capture.py"
COMMITTED = ROOT / "fixtures" / "sample" / "sample.pcap"
TCPDUMP = shutil.which("tcpdump") or (
    "/usr/bin/tcpdump" if Path("/usr/bin/tcpdump").exists() else None
)
needs_tcpdump = pytest.mark.skipif(TCPDUMP is None, reason="tcpdump is not installed")

TARGET_MAC = "02:00:5e:00:53:01"


def _load_script():
    """Import the script by path: fixtures/ is not a package."""
    spec = importlib.util.spec_from_file_location("make_sample_capture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


msc = _load_script()


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The capture written by the script as a program, and its sidecar."""
    out = tmp_path_factory.mktemp("sample") / "sample.pcap"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True)
    return out, json.loads(out.with_suffix(".json").read_text())


def _records(data: bytes) -> list[tuple[int, int, bytes]]:
    """``(seconds, microseconds, frame)`` per record, read with struct alone."""
    magic, major, minor, _zone, _sigfigs, snaplen, link = struct.unpack("<IHHiIII", data[:24])
    assert (magic, major, minor, snaplen, link) == (0xA1B2C3D4, 2, 4, 65535, 1)
    out, pos = [], 24
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack("<IIII", data[pos : pos + 16])
        assert incl == orig and usec < 1_000_000
        out.append((sec, usec, data[pos + 16 : pos + 16 + incl]))
        pos += 16 + incl
    assert pos == len(data)
    return out


def _tcpdump(path: Path, *flags: str) -> list[str]:
    run = subprocess.run(
        [TCPDUMP, "-nn", *flags, "-r", str(path)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "link-type EN10MB" in run.stderr
    return run.stdout.splitlines()


def test_output_is_byte_identical_each_run(tmp_path: Path, capture: tuple[Path, dict]) -> None:
    again = tmp_path / "sample.pcap"
    assert msc.main(["--out", str(again)]) == 0
    first, _meta = capture
    assert again.read_bytes() == first.read_bytes()
    assert again.with_suffix(".json").read_bytes() == first.with_suffix(".json").read_bytes()


def test_committed_sample_is_up_to_date() -> None:
    assert COMMITTED.stat().st_size < 50_000
    assert msc.main(["--check"]) == 0, "run `python fixtures/make_sample_capture.py`"


def test_check_notices_a_changed_file(tmp_path: Path) -> None:
    out = tmp_path / "s.pcap"
    assert msc.main(["--out", str(out)]) == 0
    out.write_bytes(out.read_bytes()[:-1])
    assert msc.main(["--out", str(out), "--check"]) == 1


def test_pcap_format_and_fixed_timestamps(capture: tuple[Path, dict]) -> None:
    path, meta = capture
    records = _records(path.read_bytes())
    assert len(records) == meta["packet_count"]
    # 2026-11-23T00:11:00Z, microsecond resolution, strictly increasing.
    assert records[0][:2] == (1795392660, 0)
    stamps = [sec * 1_000_000 + usec for sec, usec, _ in records]
    assert stamps == sorted(set(stamps))
    for (sec, usec, _frame), packet in zip(records, meta["packets"], strict=True):
        assert packet["time"] == f"2026-11-23T00:11:{sec - 1795392660:02d}.{usec:06d}Z"


def test_sidecar_partitions_packets(capture: tuple[Path, dict]) -> None:
    _path, meta = capture
    target, other = meta["target_indices"], meta["non_target_indices"]
    assert sorted(target + other) == list(range(meta["packet_count"]))
    assert [p["index"] for p in meta["packets"] if p["target"]] == target
    assert len(target) == 22 and len(other) == 10
    assert meta["target"] == {
        "mac": TARGET_MAC,
        "ipv4": "192.0.2.10",
        "ipv6": "2001:db8:0:1::10",
        "vlan": 100,
    }
    protocols = {p["protocol"] for p in meta["packets"] if p["target"]}
    assert protocols == {"dhcp", "dns", "tcp", "udp", "icmp", "ipv6", "vlan"}


DOCUMENTATION_NETS = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
]
DHCP_CLIENT = {ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("255.255.255.255")}


def test_only_documentation_addresses(capture: tuple[Path, dict]) -> None:
    path, _meta = capture
    for _sec, _usec, frame in _records(path.read_bytes()):
        assert frame[:5] in (b"\x02\x00\x5e\x00\x53", b"\xff" * 5)  # dst MAC
        assert frame[6:11] == b"\x02\x00\x5e\x00\x53"  # src MAC (RFC 7042)
        ethertype, offset = struct.unpack("!H", frame[12:14])[0], 14
        if ethertype == 0x8100:  # skip the 802.1Q tag
            ethertype, offset = struct.unpack("!H", frame[16:18])[0], 18
        if ethertype == 0x0800:
            addrs = [frame[offset + 12 : offset + 16], frame[offset + 16 : offset + 20]]
        else:
            assert ethertype == 0x86DD
            addrs = [frame[offset + 8 : offset + 24], frame[offset + 24 : offset + 40]]
        for raw in addrs:
            addr = ipaddress.ip_address(raw)
            documentation = any(
                addr in net for net in DOCUMENTATION_NETS if net.version == addr.version
            )
            assert documentation or addr in DHCP_CLIENT, addr


@needs_tcpdump
def test_tcpdump_reads_every_packet_and_protocol(capture: tuple[Path, dict]) -> None:
    path, meta = capture
    lines = _tcpdump(path)
    assert len(lines) == meta["packet_count"]  # one line per packet without -v
    text = "\n".join(lines)
    assert text.count("BOOTP/DHCP") == 4
    assert "A? www.example.com." in text and "A 203.0.113.80" in text
    assert "AAAA? www.example.com." in text
    for flags in ("[S]", "[S.]", "[.]", "[P.]", "[F.]"):
        assert f"Flags {flags}" in text
    assert "HTTP: GET / HTTP/1.1" in text
    assert "ICMP echo request" in text and "ICMP echo reply" in text
    assert "IP6 2001:db8:" in text and "ICMP6, echo request" in text
    assert "UDP, length 18" in text  # the target's plain UDP datagram
    verbose = "\n".join(_tcpdump(path, "-v"))
    for kind in ("Discover", "Offer", "Request", "ACK"):
        assert f"DHCP-Message (53), length 1: {kind}" in verbose
    assert "bad cksum" not in verbose and "incorrect" not in verbose


@needs_tcpdump
def test_tcpdump_sees_the_sidecar_target_split(capture: tuple[Path, dict]) -> None:
    """tcpdump's own reading agrees with the sidecar on which packets are the target's."""
    path, meta = capture
    lines = _tcpdump(path, "-e")  # -e: link-level header, so MACs and VLAN tags show
    assert len(lines) == meta["packet_count"]
    for packet, line in zip(meta["packets"], lines, strict=True):
        assert (TARGET_MAC in line) == packet["target"], line
    vlan = [n for n, line in enumerate(lines) if "802.1Q" in line]
    assert len(vlan) == 1 and "vlan 100" in lines[vlan[0]]
    assert meta["packets"][vlan[0]]["target"]
    # Filters agree too: the target's IPv4 traffic, after DHCP gave the address.
    by_host = _tcpdump(path, "host", "192.0.2.10")
    by_vlan = _tcpdump(path, "vlan", "and", "host", "192.0.2.10")
    ipv4_target = [p for p in meta["packets"] if p["target"] and p["protocol"] != "ipv6"]
    # The two DHCP client frames come from 0.0.0.0; the VLAN frame needs `vlan`.
    assert len(by_host) == len(ipv4_target) - 2 - 1
    assert len(by_vlan) == 1
