"""mediation/tap/header_report.py: the hand-written header-report template equals the reference."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.pdu import (
    Allocation,
    ContentIdentifier,
    HeaderReport,
    HeaderSet,
    IPAddress,
    Value,
    encode,
)
from mediation.tap.header_report import HeaderReportTemplate, _by_hand, _from_reference

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
visible = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=25)
addresses = st.one_of(
    st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
    st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)),
)
ip = st.builds(IPAddress, addresses, st.sampled_from(list(Allocation)))
values = st.one_of(
    st.builds(Value.integer, st.integers(-(2**70), 2**70)),
    st.builds(Value.utf8, st.text(max_size=300)),
    st.builds(Value.octets, st.binary(max_size=300)),
)
ports = st.one_of(st.none(), st.integers(0, 65535).map(str), st.text(max_size=200))


@st.composite
def reports(draw: st.DrawFn) -> HeaderReport:
    headers = HeaderSet(draw(values), draw(ip), draw(ip), draw(ports), draw(ports))
    return HeaderReport(
        case_id=draw(visible),
        iap_system_id=draw(visible) + "I" * draw(st.sampled_from([0, 200])),  # long lengths too
        timestamp=T0,
        content_identifier=ContentIdentifier.correlation(draw(st.binary(max_size=200))),
        header_set=headers,
    )


@settings(max_examples=300, deadline=None)
@given(report=reports())
def test_hand_written_template_equals_the_reference(report: HeaderReport) -> None:
    """Every report shape the tap builds is written by hand, identical to asn1tools' DER."""
    assert _by_hand(report) == _from_reference(report)
    later = T0 + dt.timedelta(days=3, microseconds=17)
    assert HeaderReportTemplate(report).render(later) == encode(
        dataclasses.replace(report, timestamp=later)
    )


def test_other_shapes_go_to_the_reference() -> None:
    """A stream ID as VisibleString, a flow label or a prefix length: not written by hand."""
    base = HeaderReport(
        case_id="CASE-1",
        iap_system_id="IAP-1",
        timestamp=T0,
        content_identifier=ContentIdentifier.correlation(b"\x00" * 12),
        header_set=HeaderSet(
            Value.text("flow-1"),
            IPAddress("192.0.2.1", Allocation.STATIC),
            IPAddress("2001:db8::1", Allocation.UNKNOWN, prefix_len=64),
        ),
    )
    assert _by_hand(base) is None
    assert HeaderReportTemplate(base).render(T0) == encode(base)


def test_a_tap_builds_header_reports_without_compiling_the_schema() -> None:
    """The tap's hot path never compiles the IAS schema (~0.2 s of CPU at start-up)."""
    code = (
        "import datetime as dt, sys; sys.path.insert(0, 'tests')\n"
        "import test_tap_frames as F\n"
        "from mediation.pdu.schema import compiled\n"
        "from mediation.tap.builder import PDUBuilder\n"
        "from mediation.tap.packet import parse_frame\n"
        "from mediation.tap.targets import Direction\n"
        "from mediation.warrants.model import ContentLevel\n"
        "b = PDUBuilder('CASE-1', 'IAP-1', ContentLevel.FULL)\n"
        "data = F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x0800,"
        " F.ipv4('192.0.2.10', '203.0.113.80', 6, F.tcp(1, 2, b'x')))\n"
        "assert len(b.packet(data, parse_frame(data), Direction.FROM_SUBJECT, F.T0)) == 2\n"
        "print(compiled.cache_info().currsize)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0"
