"""Acknowledgements and receiver reports by hand (pdu.fast_control) against the reference.

Every valid one decodes to the reference's record; anything the hand
reader takes from broken or unusual input, the reference takes too, with
an equal record (the rest it leaves to the reference: None).
"""

from __future__ import annotations

import datetime as dt

import strategies as S
from hypothesis import HealthCheck, given, settings
from test_pdu_fast import MUTATIONS, Mutation

from mediation import pdu as P
from mediation.pdu import codec
from mediation.pdu.fast_control import decode_control, encode_acknowledgement, encode_checkpoint
from mediation.protocol.envelope import decode_message, encode_message

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONTROL = (S.CONTROL_STRATEGIES[P.Acknowledgement], S.CONTROL_STRATEGIES[P.ReceiverReport])
ACK_OR_REPORT = CONTROL[0] | CONTROL[1]


@PROPERTY
@given(ACK_OR_REPORT)
def test_every_ack_and_report_decodes_as_the_reference_decodes_it(message: object) -> None:
    data = P.encode(message)
    decoded = decode_control(data)
    assert decoded is not None, "the hand reader left a valid message to the reference"
    assert decoded == codec.decode_delivery(data) == message
    assert decode_message(data) == message


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ACK_OR_REPORT, MUTATIONS)
def test_what_the_hand_reader_takes_from_broken_input_the_reference_takes_alike(
    message: object, mutate: Mutation
) -> None:
    mutated = mutate(P.encode(message))
    decoded = decode_control(mutated)  # never raises: None hands it to the reference
    if decoded is not None:
        assert codec.decode_delivery(mutated) == decoded


def test_an_extension_field_is_left_to_the_reference() -> None:
    ack = P.encode(P.Acknowledgement(P.StreamId("w-3f9a1c", P.StreamKind.CMCC), 5))
    extended = bytes((ack[0], ack[1] + 3)) + ack[2:] + b"\x82\x01\x07"  # a later field [2]
    assert decode_control(extended) is None
    assert decode_message(extended) == codec.decode_delivery(extended)


def test_other_messages_are_not_its_business() -> None:
    keepalive = P.encode(P.Keepalive(1, dt.datetime(2026, 11, 23, tzinfo=dt.UTC)))
    assert decode_control(keepalive) is None
    assert decode_control(b"\xa3") is None


@PROPERTY
@given(CONTROL[0])
def test_every_ack_is_written_as_the_reference_writes_it(ack: P.Acknowledgement) -> None:
    assert encode_acknowledgement(ack) == codec.encode(ack)
    assert encode_message(ack) == codec.encode(ack)


@PROPERTY
@given(S.CONTROL_STRATEGIES[P.ChainCheckpoint])
def test_every_checkpoint_is_written_as_the_reference_writes_it(cp: P.ChainCheckpoint) -> None:
    assert encode_checkpoint(cp) == codec.encode(cp)
    assert encode_message(cp) == codec.encode(cp)
