"""Mediation-TapLink: the hand-written batch codec against the reference codec, and refusals."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.pdu import taplink as T
from mediation.pdu.errors import PDUError

NOW = dt.datetime(2026, 11, 23, 0, 11, 0, 250000, tzinfo=dt.UTC)
WARRANT = T.TapWarrant(
    "w-0a0001", "CASE-TEST-0001", "IAP-TEST", "full", NOW, NOW + dt.timedelta(days=1),
    ("02:00:5e:00:53:01", "192.0.2.10@vlan:100"),
)  # fmt: skip
MESSAGES = [
    T.TapHello("edge-1", 7, 3),
    T.TapHello("edge-1", 1, 0, T.Overflow(4, NOW, NOW + dt.timedelta(seconds=2))),
    T.ServerHello(6, 10),
    T.WarrantSet(12, (WARRANT,)),
    T.WarrantSet(0, ()),
    T.PduBatch(1, (T.TapPdu("cmII", NOW, b"\x30\x00"), T.TapPdu("cmCC", NOW, b"x" * 70000))),
    T.PduBatch(2**64 - 1, ()),
    T.BatchAck(5, 1000, (("not_target", 2), ("not_served", 1))),
    T.BatchAck(6, 0),
    T.Keepalive(1),
    T.KeepaliveAnswer(2**32 - 1),
    T.Close("server stopping"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_and_is_what_the_reference_codec_reads(
    message: T.Message,
) -> None:
    der = T.encode(message)
    assert T.decode(der) == message
    name, value = T.spec().decode("TapLinkMessage", der)  # the reference codec reads it
    assert T.spec().encode("TapLinkMessage", (name, value)) == der  # and writes the same octets


@settings(max_examples=60, deadline=None)
@given(
    batch_id=st.integers(0, 2**64 - 1),
    pdus=st.lists(
        st.tuples(
            st.sampled_from(T.KINDS),
            st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 1, 1)).map(
                lambda d: d.replace(tzinfo=dt.UTC)
            ),
            st.binary(max_size=300),
        ),
        max_size=8,
    ),
)
def test_the_batch_fast_path_writes_the_reference_encoding(batch_id: int, pdus: list) -> None:
    fast = T.batch_message(batch_id, T.encode_pdus(pdus))
    reference = T.spec().encode(
        "TapLinkMessage",
        (
            "pduBatch",
            {
                "batchId": batch_id,
                "pdus": [{"kind": k, "captured": t, "pdu": d} for k, t, d in pdus],
            },
        ),
    )
    assert fast == reference
    assert T.decode(fast) == T.PduBatch(batch_id, tuple(T.TapPdu(*p) for p in pdus))


@settings(max_examples=40, deadline=None)
@given(
    when=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 1, 1)).map(
        lambda d: d.replace(tzinfo=dt.UTC)
    ),
    pdus=st.lists(st.tuples(st.sampled_from(T.KINDS), st.binary(max_size=300)), max_size=6),
)
def test_pdus_sharing_one_time_object_are_written_as_the_reference_writes_them(
    when: dt.datetime, pdus: list
) -> None:
    """A frame's PDUs (and a replay step's) share one datetime: its encoding is reused."""
    items = [(kind, when, der) for kind, der in pdus] + [("cmII", NOW, b"\x30\x00")]
    reference = T.spec().encode(
        "TapLinkMessage",
        (
            "pduBatch",
            {"batchId": 1, "pdus": [{"kind": k, "captured": t, "pdu": d} for k, t, d in items]},
        ),
    )
    assert T.batch_message(1, T.encode_pdus(items)) == reference


def test_a_later_version_s_extra_fields_in_a_pdu_are_skipped() -> None:
    pdu = T.encode_pdu("cmCC", NOW, b"\x30\x00")
    extended = b"\x30" + bytes([pdu[1] + 3]) + pdu[2:] + b"\x83\x01\x07"  # [3] after pdu
    body = b"\x80\x01\x09\xa1" + bytes([len(extended)]) + extended
    message = b"\xa3" + bytes([len(body)]) + body
    assert T.decode(message) == T.PduBatch(9, (T.TapPdu("cmCC", NOW, b"\x30\x00"),))


@pytest.mark.parametrize(
    ("octets", "why"),
    [
        (T.encode(MESSAGES[5])[:-1], "runs past the end"),
        (T.encode(MESSAGES[5]) + b"\x00", "trailing"),
        (b"\xa3\x06\x80\x02\x00\x01\xa1\x00", "shortest form"),  # batch id 1 in two octets
        (b"\xa3\x05\x80\x01\xff\xa1\x00", "out of range"),  # batch id -1
        (b"\xa3\x03\x80\x01\x01", "pdus"),  # no pdus
        (b"\xa3\x0a\x80\x01\x01\xa1\x05\x30\x03\x80\x01\x05", "kind"),  # kind 5
        (b"\xbf\x1f\x00", "TapLinkMessage"),  # an alternative this side does not know
    ],
)
def test_bad_octets_are_refused_with_the_field_named(octets: bytes, why: str) -> None:
    with pytest.raises(PDUError, match=why):
        T.decode(octets)


def test_a_value_out_of_range_is_refused_when_encoding() -> None:
    with pytest.raises(PDUError, match="tapName"):
        T.TapHello("", 1, 0)  # a tap name is 1 to 64 characters
    with pytest.raises(PDUError, match="caseId"):
        T.TapWarrant("w-1", "C" * 26, None, "full", NOW, NOW, ())
    with pytest.raises(ValueError, match="batch id"):
        T.batch_message(-1, b"")


def test_a_pdu_s_time_is_checked_for_size_and_read_when_asked_for() -> None:
    """read_batch leaves each time's value to ``captured``; its size is checked at once."""
    good = T.encode_pdu("cmCC", NOW, b"\x30\x00")
    stamp = b"20261123001100.25Z"
    assert stamp in good
    no_such_day = good.replace(stamp, b"20261323001100.25Z")  # month 13, same size
    body = b"\x80\x01\x09\xa1" + bytes([2 * len(good)]) + good + no_such_day
    batch = T.decode(b"\xa3" + bytes([len(body)]) + body)
    assert isinstance(batch, T.PduBatch)
    assert batch.pdus[0].captured == NOW and batch.pdus[1].der == b"\x30\x00"
    with pytest.raises(PDUError, match="captured"):
        batch.pdus[1].captured  # noqa: B018 (the property reads the time)
    short = good.replace(b"\x81\x12" + stamp, b"\x81\x0e" + stamp[:14])
    short = b"\x30" + bytes([len(short) - 2]) + short[2:]
    body = b"\x80\x01\x09\xa1" + bytes([len(short)]) + short
    with pytest.raises(PDUError, match="captured: not a DER GeneralizedTime"):
        T.decode(b"\xa3" + bytes([len(body)]) + body)
