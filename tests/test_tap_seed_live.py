"""The seed's form (`mediate tap -i IF -x -y -z -d -f FILTER`) on a veth pair into serve.

The seed gives a tcpdump filter instead of targets: the kernel filter is
that expression; the server still checks each PDU against the warrant
registered for this tap with the same case identity, and refuses (and
counts) PDUs whose case identity no warrant of this tap has.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from netns_support import veth_pair_or_skip
from taplink_support import SAMPLE, TAP, TARGET_MAC, add_tapped_warrant, serve, stored, tap_port
from test_control_live import wait_for
from test_warrants_support import Carrier

from mediation.evidence.pcap import PcapReader
from mediation.pdu import StreamKind, decode
from mediation.pdu.fast import decode_cc
from mediation.tap.packet import parse_frame
from mediation.tap.tapconfig import load_tap_key, seal_tap_file

pytestmark = pytest.mark.netns
CONTENT_ID = "CID-TEST-0001"


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    return carrier


def _seed(carrier: Carrier, port: str, interface: str, case_id: str, form: str) -> list[str]:
    """The seed's command line, or ``tap run --config`` on a tap file holding the same."""
    credentials = carrier.tmp / f"{TAP}.tap"
    values = {
        "interface": interface, "content-id": CONTENT_ID, "case-id": case_id,
        "iap-id": "IAP-TEST", "destination": "127.0.0.1", "content": "full",
        "cmii-port": int(port.rsplit(":", 1)[1]), "filter": f"ether host {TARGET_MAC}",
    }  # fmt: skip
    mediate = [sys.executable, "-m", "mediation", "tap"]
    if form == "config":
        text = "".join(
            f"{k} = {v}\n" if isinstance(v, int) else f'{k} = "{v}"\n' for k, v in values.items()
        )
        tap_file = carrier.tmp / "intercept.conf"
        tap_file.write_bytes(seal_tap_file(load_tap_key(credentials), text))
        return [*mediate, "run", "--config", str(tap_file), "--credentials", str(credentials)]
    return [
        *mediate, "-i", interface, "-x", CONTENT_ID, "-y", case_id, "-z", "IAP-TEST",
        "-d", "127.0.0.1", "-c", "-n", str(values["cmii-port"]), "-f", str(values["filter"]),
        "--credentials", str(credentials),
    ]  # fmt: skip


def _run_seed(
    carrier: Carrier, case_id: str, done: object, form: str = "argv"
) -> tuple[object, str]:
    """Start the server, run the seed tap on a veth pair, send the sample, wait for ``done``."""
    with PcapReader.open(SAMPLE) as reader:
        frames = [packet.data for packet in reader]
    server = serve(carrier)
    errors = carrier.tmp / "tap.err"
    try:
        with veth_pair_or_skip("s") as pair, errors.open("w") as err:
            tap = subprocess.Popen(
                _seed(carrier, tap_port(server), pair.capture, case_id, form),
                env={**os.environ, **carrier.env},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            try:
                wait_for(lambda: "capturing on" in errors.read_text(), "the capture", 30)
                assert pair.send(frames) == len(frames)
                wait_for(lambda: done(server.status() or {}), "the server's counts", 30)
                status = server.status() or {}
                tap.send_signal(signal.SIGTERM)
                assert tap.wait(timeout=30) == 0, errors.read_text()
            finally:
                if tap.poll() is None:
                    tap.kill()
    finally:
        server.stop()
    return status, errors.read_text()


def _target_frames() -> list[bytes]:
    """The IP packets of the sample's frames to or from the target's MAC."""
    mac = bytes.fromhex(TARGET_MAC.replace(":", ""))
    out = []
    with PcapReader.open(SAMPLE) as reader:
        for packet in reader:
            if mac in (packet.data[0:6], packet.data[6:12]):
                parsed = parse_frame(packet.data)
                if parsed.ip_offset >= 0:
                    out.append(packet.data[parsed.ip_offset :])
    return out


@pytest.mark.parametrize("form", ["argv", "config"])
def test_seed_tap_stores_the_targets_packets_with_its_content_id(
    carrier: Carrier, form: str
) -> None:
    handle = add_tapped_warrant(carrier)
    want = _target_frames()
    assert want

    def all_in(status: dict) -> bool:
        return status.get("ingest", {}).get("accepted", 0) >= len(want)

    status, errors = _run_seed(carrier, "CASE-TEST-0001", all_in, form)
    assert not status["taps"].get("refused_pdus"), status["taps"]
    assert "no warrant with this case identity" not in errors
    got = stored(carrier, handle)
    ccs = [decode_cc(d) for d in got[StreamKind.CMCC]]
    assert [cc.payload for cc in ccs] == want
    for cc in ccs:
        info = cc.header.correlation_info
        assert info.content_identifier.value == CONTENT_ID.encode()
        assert (info.case_id, info.iap_id) == ("CASE-TEST-0001", "IAP-TEST")


def test_seed_tap_with_a_case_id_no_warrant_of_the_tap_has_is_refused(carrier: Carrier) -> None:
    handle = add_tapped_warrant(carrier)

    def refused(status: dict) -> bool:
        return (status.get("taps") or {}).get("refused_pdus", {}).get("not_served", 0) > 0

    status, errors = _run_seed(carrier, "CASE-TEST-0009", refused)
    assert status.get("ingest", {}).get("accepted", 0) == 0
    assert "no warrant with this case identity for this tap" in errors
    got = stored(carrier, handle)
    assert got[StreamKind.CMII] == [] and got[StreamKind.CMCC] == []


@pytest.mark.parametrize("form", ["argv", "config"])
def test_seed_tap_replays_a_file_through_its_filter(carrier: Carrier, form: str) -> None:
    """``--read`` in the seed form: the -f filter applies to the file as the kernel's would."""
    handle = add_tapped_warrant(carrier)
    want = _target_frames()
    server = serve(carrier)
    try:
        command = _seed(carrier, tap_port(server), "eth9", "CASE-TEST-0001", form)
        done = subprocess.run(
            [*command, "--read", str(SAMPLE), "--speed", "full"],
            env={**os.environ, **carrier.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        status = server.status() or {}
    finally:
        server.stop()
    assert not status["taps"].get("refused_pdus"), status["taps"]
    got = stored(carrier, handle)
    assert [decode_cc(d).payload for d in got[StreamKind.CMCC]] == want  # the filter's, only
    # DHCP following as in `tap run`: the warrant's MAC leased an address in the sample.
    kinds = [type(decode(d)).__name__ for d in got[StreamKind.CMII]]
    assert kinds.count("HeaderReport") == len(want)
    assert kinds.count("SessionStart") == 1, kinds


def test_seed_read_refusals(carrier: Carrier) -> None:
    credentials = carrier.tmp / f"{TAP}.tap"
    base = [sys.executable, "-m", "mediation", "tap"]
    seed = ["-i", "eth9", "-x", CONTENT_ID, "-y", "CASE-TEST-0001", "-z", "IAP-TEST",
            "-d", "127.0.0.1", "--credentials", str(credentials)]  # fmt: skip
    cases = [
        ([*seed, "--read", str(carrier.tmp / "absent.pcap")], "--read: "),
        ([*seed, "-f", "ether host 02:00:5e:00:53:01", "--read", str(SAMPLE), "--read", "x"],
         "--read"),
        (["run", "--config", str(carrier.tmp / "x.conf"), "-i", "eth9",
          "--credentials", str(credentials)], "-i: the tap file names the interface"),
    ]  # fmt: skip
    for argv, message in cases:
        done = subprocess.run(
            [*base, *argv], env={**os.environ, **carrier.env}, capture_output=True, text=True
        )
        assert done.returncode == 2, (argv, done.stderr)
        assert message in done.stderr, done.stderr
