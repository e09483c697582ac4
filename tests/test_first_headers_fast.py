"""``first_headers``'s straight path (one struct read) answers as its loop, in every form.

The loop (``_first_headers_loop``) is the reference the straight path must
equal: tests/test_hot_calls_same.py proves the loop equal to the walk before
it. Here PDUs are built in each length form the straight path reads (the
outer SEQUENCE short, one- and two-octet long; a CmII message alternative
short and one-octet long) and in forms it leaves to the loop, then altered.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from mutation_support import altered

from mediation.pdu.fast_der import length
from mediation.pdu.fast_identity import _first_headers_loop, first_headers


def _tlv(tag: int, body: bytes, long: bool = False) -> bytes:
    """A TLV; ``long``: its length in the one-octet long form even when short (not DER)."""
    head = bytes((0x81, len(body))) if long and len(body) < 0x100 else length(len(body))
    return bytes((tag,)) + head + body


def _cmii(case: bytes, alternative: int, rest: int, long: bool) -> bytes:
    oid = _tlv(0x06, bytes.fromhex("2a864886f849020101"))
    body = _tlv(0x80, case) + _tlv(0x81, bytes(rest))
    return _tlv(0x30, oid + _tlv(alternative, body, long))


def _cmcc(case: bytes, packet: int) -> bytes:
    info = _tlv(0xA0, _tlv(0x80, case) + _tlv(0x81, b"IAP-TEST"))
    header = _tlv(0xA0, info + _tlv(0xA2, bytes(12)))
    return _tlv(0x30, header + _tlv(0x81, bytes(packet)))


def _same(der: bytes) -> None:
    for kind in ("cmII", "cmCC", "cmXX"):
        assert first_headers(kind, der) == _first_headers_loop(kind, der)


_CASES = st.binary(min_size=0, max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    _CASES,
    st.sampled_from([0xA1, 0xAA, 0xA5, 0x8A, 0xBF]),
    st.sampled_from([0, 5, 100, 130, 300, 70_000]),
    st.booleans(),
    st.data(),
)
def test_cmii_in_every_form_is_the_loops(
    case: bytes, alternative: int, rest: int, long: bool, data: st.DataObject
) -> None:
    der = _cmii(case, alternative, rest, long)
    _same(der)
    if alternative != 0xBF and not long and rest < 0x70:  # the straight path's own forms
        assert first_headers("cmII", der) == (case, alternative, *_alternative(der))
    for variant in altered(der, data):
        _same(variant)


def _alternative(der: bytes) -> tuple[int, int]:
    """Where the message alternative's contents lie (the loop's answer)."""
    found = _first_headers_loop("cmII", der)
    assert found is not None
    return found[2], found[3]


@settings(max_examples=300, deadline=None)
@given(_CASES, st.sampled_from([0, 20, 120, 200, 1500, 70_000]), st.data())
def test_cmcc_in_every_form_is_the_loops(case: bytes, packet: int, data: st.DataObject) -> None:
    der = _cmcc(case, packet)
    _same(der)
    if packet < 0x10000:  # a longer PDU's length takes three octets: not a common form
        assert first_headers("cmCC", der) is not None
    for variant in altered(der, data):
        _same(variant)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_octets_after_a_sequence_are_the_loops(tail: bytes) -> None:
    for head in (b"\x30", b"\x30\x81", b"\x30\x82\x01", b"\x30\x0a\xa0\x08\xa0\x06\x80"):
        _same(head + tail)
