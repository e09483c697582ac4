"""Every record type round-trips through the reference (asn1tools) codec.

``decode(encode(x)) == x`` over the strategies of ``tests/strategies.py``,
with the record's own class coming back (AccessRejected has the shape of
AccessFailed, SessionAlreadyEstablished that of SessionStart).
"""

from __future__ import annotations

import pytest
import strategies as S
from hypothesis import HealthCheck, given, settings

from mediation import pdu as P

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_round_trip(record: object) -> None:
    data = P.encode(record)
    back = P.decode(data)
    assert back == record
    assert type(back) is type(record)
    assert P.encode(back) == data


@pytest.mark.parametrize("cls", P.CMII_MESSAGES, ids=lambda cls: cls.__name__)
def test_cmii_message_round_trips(cls: type) -> None:
    @FAST
    @given(S.CMII_STRATEGIES[cls])
    def check(message: P.CmIIMessage) -> None:
        assert P.kind_of(P.encode(message)) == "IasProtocol"
        assert_round_trip(message)

    check()


@FAST
@given(S.cc_apdus())
def test_cc_apdu_round_trips(apdu: P.CCApdu) -> None:
    assert P.kind_of(P.encode(apdu)) == "IAS-CC-APDU"
    assert_round_trip(apdu)


@pytest.mark.parametrize("kind", ["cmII", "cmCC", "notice"])
def test_envelope_round_trips(kind: str) -> None:
    FAST(given(S.envelopes(kind))(assert_round_trip))()


@pytest.mark.parametrize("cls", list(S.CONTROL_STRATEGIES), ids=lambda cls: cls.__name__)
def test_control_message_round_trips(cls: type) -> None:
    FAST(given(S.CONTROL_STRATEGIES[cls])(assert_round_trip))()


@FAST
@given(S.unknown_delivery_messages())
def test_later_version_message_comes_back_unknown_and_whole(
    message: P.UnknownDeliveryMessage,
) -> None:
    assert_round_trip(message)


def test_every_delivery_alternative_has_a_strategy() -> None:
    from mediation.pdu.delivery import DELIVERY_ALTERNATIVES

    covered = {P.Envelope, *S.CONTROL_STRATEGIES}
    assert covered == set(DELIVERY_ALTERNATIVES.values())


@settings(max_examples=200, deadline=None)
@given(S.times)
def test_times_keep_seconds_and_microseconds(time: object) -> None:
    record = P.Keepalive(1, time)
    data = P.encode(record)
    assert data[5] == 0x81  # keepaliveId 1 takes three octets, then sentTime [1]
    text = data[7:]
    assert text.endswith(b"Z")
    assert text[14:15] in (b".", b"Z")  # seconds always written
    assert not text.endswith(b"0Z") or b"." not in text  # no trailing zeros in a fraction
    assert P.decode(data) == record
