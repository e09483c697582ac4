"""TZSP in-process: the server's own tap core is believed, a remote tap's PDUs still checked.

The PDUs the TZSP listener's tap core builds for a warrant it matched go
around the per-PDU gate that exists for remote taps (tap_gate.BuiltGate);
these tests prove that this changes nothing stored and nothing refused,
and that a remote tap's out-of-scope PDU is still refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import test_tap_frames as F
from delivery_agency import UdpAgency
from delivery_support import TARGET, Site, fast_config, udp_endpoint
from hypothesis import given
from hypothesis import strategies as st
from test_tap_ingest import batch as remote_batch
from test_tap_ingest import cc, payloads

from mediation.evidence.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW
from mediation.pdu import taplink as T
from mediation.protocol.tzsp import encode_tzsp
from mediation.server.config import TzspConfig
from mediation.server.tap_gate import BuiltGate, TapGate, cc_payload
from mediation.server.tzsp_sources import plain_addresses
from mediation.tap.packet import ipv4_addresses, parse_frame
from mediation.tap.replay import Tap
from mediation.warrants.model import CaseDetails, ContentLevel, Source, Target, TargetKind
from mediation.warrants.operations import add_warrant

ROUTER, STRANGER = "192.0.2.200", "192.0.2.201"
BYSTANDER, PEER = "192.0.2.11", "203.0.113.5"
TAP = "edge-1"


def packet(src: str, dst: str, n: int) -> bytes:
    return F.ipv4(src, dst, 17, F.udp(40000, 443, n.to_bytes(4, "big")))


def frame(src: str, dst: str, n: int) -> bytes:
    return F.eth(F.GATEWAY_MAC, F.OTHER_MAC, 0x0800, packet(src, dst, n))


def tzsp_warrant(site: Site, agency: str) -> str:
    """A full-content warrant on TARGET fed by the router at ROUTER."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    details = CaseDetails(
        "CASE-TEST-0002", (Target(TargetKind.ADDRESS, TARGET),), (Source("tzsp", ROUTER),),
        "IAP-TEST",
    )  # fmt: skip
    with site._registry() as registry:
        warrant = add_warrant(
            registry, agency, details, ContentLevel.FULL,
            now - dt.timedelta(minutes=1), now + dt.timedelta(days=1), now,
        )  # fmt: skip
    return warrant.handle


async def test_tzsp_stores_exactly_the_targets_frames_through_its_own_gate(
    tmp_path: Path,
) -> None:
    site = Site(tmp_path)
    agency = site.agency("AGENCY-A", udp_endpoint(await UdpAgency().bind()))
    handle = tzsp_warrant(site, agency)
    config = dataclasses.replace(fast_config(), tzsp=TzspConfig(listen="127.0.0.1:0"))
    sent = [  # the target's both ways, a bystander's, a stranger's datagram
        (frame(TARGET, PEER, 1), ROUTER),
        (frame(BYSTANDER, PEER, 2), ROUTER),
        (frame(PEER, TARGET, 3), ROUTER),
        (frame(TARGET, PEER, 4), STRANGER),
        (frame(PEER, BYSTANDER, 5), ROUTER),
    ]
    async with site.server(config) as server:
        tzsp = server.tzsp
        assert tzsp is not None
        [source] = tzsp.sources.values()
        assert [type(g) for g in source.gates] == [BuiltGate]  # not the remote taps' gate
        await tzsp.datagrams([(encode_tzsp(f), sender) for f, sender in sent])
        stored = [cc_payload(der) for der in await payloads(server, handle)]
        status = tzsp.status()
    assert stored == [packet(TARGET, PEER, 1), packet(PEER, TARGET, 3)]
    assert status["frames"] == 4 and status["refused_datagrams"] == {"unregistered-sender": 1}
    assert status["pdus"] == {"cmII": 2, "cmCC": 2} and status["refused_pdus"] == {}
    assert status["passed_over"] == 2  # the bystander's frames: dropped before parsing


def test_the_prefilter_reads_the_addresses_the_parser_reads() -> None:
    for linktype, data in [
        (LINKTYPE_ETHERNET, frame(TARGET, PEER, 1)),
        (LINKTYPE_RAW, packet(PEER, TARGET, 2)),
        (LINKTYPE_RAW, F.ipv4(TARGET, PEER, 17, b"", total=9)),  # malformed: still its addresses
    ]:
        parsed = parse_frame(data, linktype)
        assert ipv4_addresses(data, linktype) == (parsed.src_raw, parsed.dst_raw)
    assert ipv4_addresses(frame(TARGET, PEER, 1)[:33]) is None  # short: parse it
    tagged = F.eth(F.GATEWAY_MAC, F.OTHER_MAC, 0x0800, packet(TARGET, PEER, 1), (0x8100, 7))
    assert ipv4_addresses(tagged) is None
    arp = F.eth(F.BROADCAST, F.OTHER_MAC, 0x0806, bytes(28))
    assert ipv4_addresses(arp) is None


@given(st.binary(max_size=80), st.sampled_from([LINKTYPE_ETHERNET, LINKTYPE_RAW]))
def test_the_prefilter_never_disagrees_with_the_parser(data: bytes, linktype: int) -> None:
    """Whatever the octets: when the prefilter reads addresses, they are the parser's."""
    pair = ipv4_addresses(data, linktype)
    if pair is not None:
        parsed = parse_frame(data, linktype)
        assert pair == (parsed.src_raw, parsed.dst_raw)


def test_only_exact_unscoped_addresses_are_prefiltered() -> None:
    def plain(*targets: str) -> frozenset[bytes] | None:
        return plain_addresses([Tap.for_warrant(F.warrant(*targets))])

    assert plain(TARGET, PEER) == {F.ip(TARGET), F.ip(PEER)}
    assert plain(TARGET, F.TARGET_MAC) is None  # a MAC: leases are followed
    assert plain("192.0.2.0/24") is None
    assert plain(f"{TARGET}@vlan:100") is None


async def test_a_remote_taps_out_of_scope_pdu_is_still_refused(tmp_path: Path) -> None:
    site = Site(tmp_path)
    agency = site.agency("AGENCY-A", udp_endpoint(await UdpAgency().bind()))
    warrant = site.warrant(agency, "CASE-0001")
    config = dataclasses.replace(fast_config(), tzsp=TzspConfig(listen="127.0.0.1:0"))
    async with site.server(config) as server:
        ingest = server.taps.ingest  # type: ignore[union-attr]
        gate = server.taps.gate(TAP)  # type: ignore[union-attr]
        assert type(gate) is TapGate
        outside = T.TapPdu("cmCC", F.T0, cc(9, BYSTANDER, PEER))
        mixed = T.PduBatch(1, (*remote_batch(1, range(2)).pdus, outside))
        done = await ingest.batch(gate, mixed)
        for receipt in done.receipts:
            await receipt.durable()
        assert done.ack == T.BatchAck(1, 2, (("not_target", 1),))
        assert ingest.refused["not_target"] == 1
        assert await payloads(server, warrant.handle) == [cc(0), cc(1)]


def test_a_batch_through_a_tap_builds_what_frame_by_frame_builds() -> None:
    arp = F.eth(F.BROADCAST, F.OTHER_MAC, 0x0806, bytes.fromhex("0001080006040001") + bytes(20))
    frames = [
        frame(TARGET, PEER, 1),
        frame(BYSTANDER, PEER, 2),
        arp,
        F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x0800, packet(PEER, TARGET, 3), (0x8100, 7)),
        frame(TARGET, PEER, 4)[:40],  # cut short: malformed, still the target's
        frame(PEER, TARGET, 5),
    ]
    for targets, when in [
        ((TARGET,), F.T0),
        ((TARGET, F.TARGET_MAC), F.T0),  # leases followed: frame by frame inside
        (("192.0.2.0/28",), F.T0),
        ((TARGET,), F.WINDOW[1]),  # outside the warrant's window: nothing
    ]:
        one, many = (Tap.for_warrant(F.warrant(*targets)) for _ in range(2))
        want = [p for f in frames for p in one.process(f, when, parse_frame(f))]
        got = many.process_many([(f, parse_frame(f)) for f in frames], when)
        assert [(p.kind, p.der) for p in got] == [(p.kind, p.der) for p in want]
        assert many.counters == one.counters
