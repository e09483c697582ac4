"""pdu/taplink.py: the server's acks, encoded by hand, are the module's DER octet for octet."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.pdu import taplink as T

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
