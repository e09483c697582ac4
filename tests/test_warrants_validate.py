"""Input validation: what a person may type, and the one-line refusals."""

from __future__ import annotations

import datetime as dt

import pytest

from mediation.errors import UsageError
from mediation.warrants import target_text as tt
from mediation.warrants import validate as v
from mediation.warrants.model import ContentLevel, Stream, Target, TargetKind

NOW = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)


def refused(func, *args) -> UsageError:
    with pytest.raises(UsageError) as info:
        func(*args)
    return info.value


@pytest.mark.parametrize("case_id", ["CASE-0001", "C", "X" * 25, "CASE 0001/A"])
def test_case_identity_accepts_1_to_25_visible_characters(case_id: str) -> None:
    assert v.parse_case_id(case_id) == case_id


@pytest.mark.parametrize("case_id", ["", "X" * 26, "CASE-\u00e9", "CASE\t1", None])
def test_case_identity_refuses_others_without_repeating_them(case_id: str | None) -> None:
    error = refused(v.parse_case_id, case_id)
    assert error.field == "--case-id"
    assert "25" in error.problem
    if case_id:
        assert case_id not in str(error)


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("192.0.2.10", TargetKind.ADDRESS, "192.0.2.10"),
        ("2001:DB8:0::10", TargetKind.ADDRESS, "2001:db8::10"),
        ("198.51.100.0/24", TargetKind.PREFIX, "198.51.100.0/24"),
        ("2001:db8::/48", TargetKind.PREFIX, "2001:db8::/48"),
        ("192.0.2.10/32", TargetKind.ADDRESS, "192.0.2.10"),
        ("02:00:5E:00:53:01", TargetKind.MAC, "02:00:5e:00:53:01"),
        ("02-00-5e-00-53-01", TargetKind.MAC, "02:00:5e:00:53:01"),
        ("0200.5e00.5301", TargetKind.MAC, "02:00:5e:00:53:01"),
        ("iface:eth0.100", TargetKind.INTERFACE, "eth0.100"),
    ],
)
def test_targets_are_normalised(text: str, kind: TargetKind, value: str) -> None:
    assert tt.parse_target(text) == Target(kind, value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("192.0.2.300", "not an IPv4/IPv6 address"),
        ("target.example", "not an IPv4/IPv6 address"),
        ("02:00:5e:00:53:zz", "not an IPv4/IPv6 address"),
        ("198.51.100.9/24", "host bits set"),
        ("2001:db8::1/48", "host bits set"),
        ("198.51.100.0/33", "not a prefix"),
        ("fe80::1%eth0", "zone"),
        ("iface:", "interface name"),
        ("iface:a/b", "interface name"),
        ("iface:" + "x" * 16, "interface name"),
    ],
)
def test_bad_targets_are_refused_by_position(text: str, words: str) -> None:
    error = refused(tt.parse_target, text, 1)
    assert error.field == "--target #2"
    assert words in error.problem
    if text != "iface:":  # the bare prefix is in the message's own example
        assert text not in str(error)


def test_targets_need_one_and_drop_duplicates() -> None:
    assert refused(tt.parse_targets, []).field == "--target"
    targets = tt.parse_targets(["192.0.2.10", "192.0.2.10/32", "02-00-5e-00-53-01"])
    assert [str(t) for t in targets] == ["192.0.2.10", "02:00:5e:00:53:01"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T00:00:00Z", dt.datetime(2026, 11, 23, tzinfo=dt.UTC)),
        ("2026-11-23T01:00:00+01:00", dt.datetime(2026, 11, 23, tzinfo=dt.UTC)),
        ("2026-11-22T19:00:00-05:00", dt.datetime(2026, 11, 23, tzinfo=dt.UTC)),
        ("2026-11-23", dt.datetime(2026, 11, 23, tzinfo=dt.UTC)),
        ("2026-11-23T00:00:00.75Z", dt.datetime(2026, 11, 23, tzinfo=dt.UTC)),
        ("now", NOW),
    ],
)
def test_times_are_utc_to_the_second(text: str, expected: dt.datetime) -> None:
    assert v.parse_time(text, "--start", NOW) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("2026-11-23T00:00:00", "no time zone"),
        ("2026-11-23 00:00", "no time zone"),
        ("tomorrow", "not a time"),
        ("2026-02-30", "not a valid date"),
    ],
)
def test_bad_times_are_refused(text: str, words: str) -> None:
    error = refused(v.parse_time, text, "--end", NOW)
    assert error.field == "--end"
    assert words in error.problem


def test_window_must_not_be_empty() -> None:
    assert refused(v.check_window, NOW, NOW).field == "--end"
    v.check_window(NOW, NOW + dt.timedelta(seconds=1))


def test_content_levels() -> None:
    assert v.parse_content("headers").streams == (Stream.CMII,)
    assert v.parse_content("full") is ContentLevel.FULL
    assert "headers" in refused(v.parse_content, "FULL").problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.5:5555", ("203.0.113.5", 5555)),
        ("[2001:db8::5]:5555", ("2001:db8::5", 5555)),
        ("lea.example.net:65535", ("lea.example.net", 65535)),
    ],
)
def test_endpoints(text: str, expected: tuple[str, int]) -> None:
    assert v.parse_host_port(text, "--udp") == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("203.0.113.5:0", "port must be 1 to 65535, got 0"),
        ("203.0.113.5:65536", "port must be 1 to 65535, got 65536"),
        ("203.0.113.5", "HOST:PORT"),
        ("2001:db8::5:5555", "HOST:PORT"),
        ("bad_host!:5555", "IP address or a DNS name"),
        ("[lea.example.net]:5555", "IP address or a DNS name"),
    ],
)
def test_bad_endpoints(text: str, words: str) -> None:
    error = refused(v.parse_host_port, text, "--tls")
    assert error.field == "--tls"
    assert words in error.problem


def test_streams_and_fingerprints() -> None:
    assert v.parse_streams(None) == (Stream.CMII, Stream.CMCC)
    assert v.parse_streams("cmcc,cmii") == (Stream.CMII, Stream.CMCC)
    assert v.parse_streams("cmcc") == (Stream.CMCC,)
    assert refused(v.parse_streams, "cmii,voice").field == "--streams"
    colons = ":".join(["AB"] * 32)
    assert v.parse_fingerprint(f"sha256:{colons}") == "ab" * 32
    assert refused(v.parse_fingerprint, "ab" * 31).field == "--fingerprint"


def test_ca_file_must_hold_a_certificate(tmp_path) -> None:
    missing = refused(v.read_ca_file, str(tmp_path / "absent.pem"))
    assert missing.field == "--ca"
    assert "cannot read" in missing.problem
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert "no PEM certificate" in refused(v.read_ca_file, str(junk)).problem


def test_names_handles_and_sources() -> None:
    assert v.parse_handle("w-3f9a1c") == "w-3f9a1c"
    assert refused(v.parse_handle, "w-3F9A1C").field == "HANDLE"
    assert v.parse_handle("a-000000", "a") == "a-000000"
    assert v.parse_tap_name("edge-1.pop2") == "edge-1.pop2"
    assert refused(v.parse_tap_name, "-edge").field == "NAME"
    assert str(v.parse_source("tzsp:192.0.2.1")) == "tzsp:192.0.2.1"
    assert refused(v.parse_source, "tzsp:router", 0).field == "--source #1"
    assert v.parse_iap("IAP-1") == "IAP-1"
    assert refused(v.parse_iap, "X" * 16).field == "--iap"
    assert refused(v.parse_free_text, "two\nlines", "--court-ref").field == "--court-ref"


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("192.0.2.10@vlan:100", Target(TargetKind.ADDRESS, "192.0.2.10", vlan=100)),
        ("192.0.2.10@iface:eth1", Target(TargetKind.ADDRESS, "192.0.2.10", interface="eth1")),
        (
            "198.51.100.0/24@iface:eth1@vlan:0",
            Target(TargetKind.PREFIX, "198.51.100.0/24", vlan=0, interface="eth1"),
        ),
        ("02-00-5E-00-53-01@vlan:4095", Target(TargetKind.MAC, "02:00:5e:00:53:01", vlan=4095)),
        ("iface:eth1@vlan:100", Target(TargetKind.INTERFACE, "eth1", vlan=100)),
        ("iface:a@b", Target(TargetKind.INTERFACE, "a@b")),  # '@' alone is no scope
    ],
)
def test_targets_may_be_scoped_to_a_vlan_and_an_interface(text: str, target: Target) -> None:
    parsed = tt.parse_target(text)
    assert parsed == target
    assert tt.parse_target(str(parsed)) == parsed  # what `mediate show` prints reads back


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("192.0.2.10@vlan:4096", "VLAN id from 0 to 4095"),
        ("192.0.2.10@vlan:", "VLAN id from 0 to 4095"),
        ("192.0.2.10@vlan:x1", "VLAN id from 0 to 4095"),
        ("192.0.2.10@vlan:1@vlan:2", "twice"),
        ("192.0.2.10@iface:", "@iface: needs"),
        ("192.0.2.10@iface:a/b", "@iface: needs"),
        ("iface:eth0@iface:eth1", "cannot also be scoped"),
        ("192.0.2.300@vlan:100", "not an IPv4/IPv6 address"),
    ],
)
def test_bad_scopes_are_refused_by_position(text: str, words: str) -> None:
    error = refused(tt.parse_target, text, 2)
    assert error.field == "--target #3"
    assert words in error.problem
    assert "192.0.2" not in str(error)


def test_a_scoped_target_is_another_target() -> None:
    targets = tt.parse_targets(["192.0.2.10", "192.0.2.10@vlan:100", "192.0.2.10@vlan:100"])
    assert [str(t) for t in targets] == ["192.0.2.10", "192.0.2.10@vlan:100"]
