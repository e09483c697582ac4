"""CC delivered as SCTE datagrams (``agency add --udp H:P --format scte``), end to end."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import trio
from delivery_support import HOST, TEST_UDP_KEY, Site, cc_pdu
from test_protocol_scte import tshark_pcli, udp_in_ip
from test_warrants_support import AGENCY, Carrier, error_line

from mediation import pdu as P
from mediation.evidence.pcap import LINKTYPE_RAW, PcapWriter
from mediation.protocol.scte import ScteRefused, ccc_id, open_datagram, scte_key
from mediation.warrants.model import Endpoint, Stream


async def test_cc_arrives_as_authentic_sequenced_scte_datagrams(tmp_path: Path) -> None:
    site = Site(tmp_path)
    receiver = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await receiver.bind((HOST, 0))
    port = receiver.getsockname()[1]
    endpoint = Endpoint(
        "udp", HOST, port, (Stream.CMCC,),
        udp_key_id=TEST_UDP_KEY.key_id, udp_key=TEST_UDP_KEY.key, udp_format="scte",
    )  # fmt: skip
    agency = site.agency("AGENCY-TEST-SCTE", endpoint)
    warrant = site.warrant(agency, case_id="CASE-TEST-0001")
    key = scte_key(TEST_UDP_KEY.key)
    sent = [cc_pdu(case_id="CASE-TEST-0001", payload=40, n=n) for n in range(20)]
    got = []
    async with site.server() as server:
        for der in sent:
            assert await server.ingest(warrant.handle, "cmCC", der)
        with trio.fail_after(20):
            while len(got) < len(sent):
                got.append(await receiver.recv(65536))
        # Counted as delivered like envelopes (sent before they were received).
        [row] = server.delivery_rows()
        assert (row.delivered, row.state) == (20, "waiting")
    receiver.close()
    opened = [open_datagram(key, data) for data in got]
    assert [d.sequence for d in opened] == list(range(20))
    assert {d.ccc for d in opened} == {ccc_id(key, warrant.handle)}
    assert [d.packet for d in opened] == [P.decode(der).payload for der in sent]
    assert all(d.time == P.decode(sent[0]).header.time_stamp for d in opened)
    # Nothing of the case in clear: only the packets (the content) are.
    assert not any(b"CASE-TEST" in data or warrant.handle.encode() in data for data in got)
    with pytest.raises(ScteRefused):
        open_datagram(scte_key(bytes(32)), got[0])
    if shutil.which("tshark"):
        path = tmp_path / "wire.pcap"
        with PcapWriter.open(path, linktype=LINKTYPE_RAW) as writer:
            for data in got:
                writer.write(udp_in_ip(data), opened[0].time)
        rows = tshark_pcli(path)
        assert len(rows) == 20 and all(int(r[0], 0) == opened[0].ccc for r in rows)


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    return carrier


def test_format_scte_is_registered_and_its_refusals(carrier: Carrier) -> None:
    out = carrier.ok(
        "agency", "add", AGENCY, "--udp", "203.0.113.5:5556", "--streams", "cmcc",
        "--format", "scte", "--udp-key-out", str(carrier.tmp / "scte-key.toml"),
    )  # fmt: skip
    assert "udp 203.0.113.5:5556 streams=cmcc key=" in out and "format=scte" in out
    shown = json.loads(carrier.ok("agency", "show", AGENCY, "--json"))
    assert shown["endpoints"][-1].endswith("format=scte")
    cases = [
        (["--udp", "203.0.113.5:5557", "--format", "scte"], "--format: scte carries CC only"),
        (
            ["--udp", "203.0.113.5:5557", "--streams", "cmcc", "--format", "pcli"],
            "--format: must be envelope (the default) or scte",
        ),
        (
            ["--tls", "203.0.113.5:5557", "--fingerprint", "ab" * 32, "--format", "scte"],
            "--format: only for --udp endpoints",
        ),
    ]
    for extra, expected in cases:
        before = carrier.files()
        run = carrier("agency", "add", AGENCY, *extra)
        assert run.code == 2 and expected in error_line(run), (extra, run.err)
        assert carrier.files() == before
