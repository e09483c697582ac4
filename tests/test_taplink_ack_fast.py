"""pdu/taplink.py: the server's acks, encoded by hand, are the module's DER octet for octet."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.pdu import PDUError
from mediation.pdu import taplink as T
from mediation.pdu.tlv import read_header

REASONS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=64)
COUNTS = st.one_of(st.integers(1, 2**32 - 1), st.sampled_from([1, 127, 128, 255, 256, 65535]))
IDS = st.one_of(st.integers(0, T.MAX_BATCH_ID), st.sampled_from([0, 127, 128, 2**63, 2**64 - 1]))


@settings(max_examples=400, deadline=None)
@given(IDS, st.integers(0, 2**32 - 1), st.lists(st.tuples(REASONS, COUNTS), max_size=5))
def test_the_hand_encoded_ack_is_the_reference_encoders(
    batch_id: int, accepted: int, refused: list[tuple[str, int]]
) -> None:
    ack = T.BatchAck(batch_id, accepted, tuple(refused))
    reference = T.spec().encode("TapLinkMessage", T._to_asn1(ack))
    assert T.encode(ack) == T.ack_message(ack) == reference
    assert T.decode(reference) == ack


def _reference_decode(data: bytes) -> object:
    try:
        return T._from_asn1(*T.spec().decode("TapLinkMessage", data))
    except Exception as exc:  # what the reference refuses
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(IDS, st.integers(0, 2**32 - 1))
def test_a_plain_ack_is_read_by_hand_as_the_reference_reads_it(
    batch_id: int, accepted: int
) -> None:
    data = T.ack_message(T.BatchAck(batch_id, accepted))
    head = 3 if data[1] == 0x81 else 2
    fast = T._read_plain_ack(data, head)
    assert fast is not None
    assert fast == _reference_decode(data) == T.decode(data) == T.BatchAck(batch_id, accepted)


@settings(max_examples=600, deadline=None)
@given(
    IDS,
    st.integers(0, 2**32 - 1),
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)), min_size=1, max_size=3),
    st.integers(-2, 2),
)
def test_an_altered_ack_is_read_by_hand_only_as_the_reference_reads_it(
    batch_id: int, accepted: int, changes: list[tuple[int, int]], cut: int
) -> None:
    """Octets changed, dropped or added: the hand reader answers None (the reference
    decides) or exactly what the reference reads; a refusal's error is the reference's."""
    data = bytearray(T.ack_message(T.BatchAck(batch_id, accepted)))
    for at, octet in changes:
        if at < len(data):
            data[at] = octet
    data = data[: len(data) + cut] if cut < 0 else data + bytes(cut)
    raw = bytes(data)
    try:
        tag, head, size = read_header(raw, 0)
    except PDUError:
        return
    if tag != 0xA4 or head + size != len(raw):  # decode() refuses it before reading
        return
    fast = T._read_plain_ack(raw, head)
    if fast is not None:
        assert fast == _reference_decode(raw) == T.decode(raw)
