"""``user:NAME`` targets: parsed, shown, stored and matched (followed through RADIUS)."""

from __future__ import annotations

import pytest

from mediation.errors import UsageError
from mediation.tap.targets import TargetMatcher
from mediation.warrants import target_text as tt
from mediation.warrants.model import CaseDetails, Target, TargetKind
from mediation.warrants.rows import case_from_json, case_to_json


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("user:user-test-1", "user-test-1"),
        ("  user:user-test-1@example.net ", "user-test-1@example.net"),
        ("user:Test User", "Test User"),  # spaces inside a name are kept, case too
        ("user:" + "é" * 126, "é" * 126),  # 252 octets of UTF-8
    ],
)
def test_user_targets_are_kept_as_given(text: str, value: str) -> None:
    target = tt.parse_target(text)
    assert target == Target(TargetKind.USER, value)
    assert str(target) == f"user:{value}"
    assert tt.parse_target(str(target)) == target


@pytest.mark.parametrize(
    "text",
    ["user:", "user: user-test-1", "user:\tuser-test-1", "user:a\nb", "user:" + "x" * 254],
)
def test_bad_user_names_are_refused_by_position(text: str) -> None:
    with pytest.raises(UsageError) as info:
        tt.parse_target(text, 2)
    assert info.value.field == "--target #3"
    assert "user name must be 1 to 253 octets" in info.value.problem
    assert text[5:].strip() not in str(info.value) or not text[5:].strip()


def test_other_targets_still_parse_and_the_help_names_user_targets() -> None:
    assert tt.parse_target("192.0.2.10").kind is TargetKind.ADDRESS
    with pytest.raises(UsageError, match="iface:NAME or user:NAME"):
        tt.parse_target("target.example")
    assert [str(t) for t in tt.parse_targets(["user:u1", "user:u1", "02-00-5e-00-53-01"])] == [
        "user:u1",
        "02:00:5e:00:53:01",
    ]


def test_user_targets_survive_the_registry_record() -> None:
    details = CaseDetails("CASE-TEST-0001", (Target(TargetKind.USER, "user-test-1"),))
    assert case_from_json(case_to_json(details)) == details


def test_a_user_target_matches_nothing_until_followed() -> None:
    matcher = TargetMatcher([Target(TargetKind.USER, "user-test-1")])
    assert matcher.users == frozenset({b"user-test-1"}) and matcher.follows_users
    assert not matcher.follows_macs and not matcher.macs


def test_a_user_target_takes_the_kernel_filter_off() -> None:
    from mediation.tap.bpf import filter_expressions

    targets = [Target(TargetKind.ADDRESS, "192.0.2.10")]
    assert filter_expressions(targets, "eth0") == [
        "host 192.0.2.10",
        "vlan and (host 192.0.2.10)",
        "vlan and vlan and (host 192.0.2.10)",
    ]
    assert filter_expressions([*targets, Target(TargetKind.USER, "user-test-1")], "eth0") is None
