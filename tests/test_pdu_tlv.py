"""The one DER header reader (mediation.pdu.tlv), and every place that reads headers.

The reader is checked against an independent reference written here: a
header is DER exactly when re-encoding what it says (class, constructed
bit, tag number, length) in the canonical form gives back the same octets.
The hot path's inline reads (fast_der.expect) must agree with the reader
on every input, valid, non-minimal or truncated; and a non-minimal length
is refused by every decoder, the TLS stream framing and ingest.
"""

from __future__ import annotations

import pytest
import strategies as S
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation import pdu as P
from mediation.pdu import codec, fast
from mediation.pdu.fast_der import expect, skip
from mediation.pdu.tlv import (
    MAX_PDU_LENGTH,
    Truncated,
    check_framing,
    read_header,
    tlv_end,
)

# The reference ----------------------------------------------------------------


def canonical_header(first: int, number: int, length: int) -> bytes:
    """DER identifier and length octets: ``first`` gives class and constructed bit."""
    if number < 31:
        ident = bytes(((first & 0xE0) | number,))
    else:
        groups = []
        while True:
            groups.append(number & 0x7F)
            number >>= 7
            if not number:
                break
        groups.reverse()
        ident = bytes(((first & 0xE0) | 0x1F,)) + bytes(
            g | 0x80 if i < len(groups) - 1 else g for i, g in enumerate(groups)
        )
    if length < 0x80:
        return ident + bytes((length,))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return ident + bytes((0x80 | len(octets),)) + octets


def lenient_header(data: bytes) -> tuple[int, int, int, int] | None:
    """Parse a header as lenient BER would: ``(first, number, length, header_size)``.

    None when the octets end inside the header or the length is indefinite.
    Any number of tag and length octets, leading zeros, long form for
    small lengths: all taken, so the canonical comparison decides.
    """
    if not data:
        return None
    first = data[0]
    pos = 1
    number = first & 0x1F
    if number == 0x1F:
        number = 0
        while True:
            if pos >= len(data):
                return None
            number = number << 7 | (data[pos] & 0x7F)
            pos += 1
            if not data[pos - 1] & 0x80:
                break
    if pos >= len(data) or data[pos] == 0x80:
        return None
    if data[pos] < 0x80:
        return first, number, data[pos], pos + 1
    count = data[pos] & 0x7F
    if pos + 1 + count > len(data):
        return None
    length = int.from_bytes(data[pos + 1 : pos + 1 + count], "big")
    return first, number, length, pos + 1 + count


def reference_valid(data: bytes) -> tuple[int, int, int] | None:
    """``(tag, content_offset, length)`` when the TLV at 0 is DER and whole, else None."""
    parsed = lenient_header(data)
    if parsed is None:
        return None
    first, number, length, size = parsed
    if data[:size] != canonical_header(first, number, length):
        return None
    if number >= 2**28:
        return None  # the documented bound (4 octets after the first)
    if size + length > len(data) or size + length > MAX_PDU_LENGTH:
        return None
    return first, size, length


# Inputs: random octets, biased towards headers worth reading --------------------

_TAGS = st.one_of(
    st.integers(0, 255).map(lambda t: bytes((t,))),
    st.tuples(st.sampled_from((0x1F, 0x3F, 0x9F, 0xBF)), st.binary(max_size=6)).map(
        lambda t: bytes((t[0],)) + t[1]
    ),
)
_LENGTHS = st.one_of(
    st.integers(0, 0x7F).map(lambda n: bytes((n,))),
    st.just(b"\x80"),
    st.integers(0, 0xFF).map(lambda n: b"\x81" + bytes((n,))),
    st.integers(0, 0xFFFF).map(lambda n: b"\x82" + n.to_bytes(2, "big")),
    st.integers(0, 0xFFFFFF).map(lambda n: b"\x83" + n.to_bytes(3, "big")),
    st.binary(min_size=4, max_size=4).map(lambda b: b"\x84" + b),
    st.tuples(st.integers(0x85, 0xFF), st.binary(max_size=9)).map(lambda t: bytes((t[0],)) + t[1]),
)
HEADERS = st.tuples(_TAGS, _LENGTHS).map(lambda t: t[0] + t[1])
INPUTS = st.one_of(
    st.binary(max_size=24),
    st.tuples(HEADERS, st.integers(0, 300)).map(lambda t: t[0] + bytes(t[1])),
    st.tuples(HEADERS, st.binary(max_size=8)).map(lambda t: t[0] + t[1]),
)


def outcome(function, *args):
    """``("ok", value)``, ``("truncated", offset)`` or ``("refused", offset)``."""
    try:
        return "ok", function(*args)
    except Truncated as exc:
        return "truncated", exc.offset
    except P.PDUError as exc:
        return "refused", exc.offset


# The reader against the reference ----------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(INPUTS)
def test_reader_agrees_with_the_reference_on_any_octets(data: bytes) -> None:
    got = outcome(read_header, data)
    want = reference_valid(data)
    if want is not None:
        assert got == ("ok", want)
        return
    assert got[0] != "ok", data.hex()
    assert 0 <= got[1] <= len(data)
    parsed = lenient_header(data)
    if parsed is not None:
        first, number, length, size = parsed
        canonical = data[:size] == canonical_header(first, number, length)
        if canonical and number < 2**28 and size + length <= MAX_PDU_LENGTH:
            assert got[0] == "truncated", data.hex()  # a whole header, content still to come
        if not canonical:
            assert got[0] == "refused", data.hex()  # a header not DER is never waited on


@settings(max_examples=1000, deadline=None)
@given(INPUTS, st.binary(min_size=1, max_size=12))
def test_a_refusal_is_final_and_a_truncation_is_a_true_prefix(data: bytes, more: bytes) -> None:
    first = outcome(read_header, data)
    later = outcome(read_header, data + more)
    if first[0] == "refused":
        assert later == first  # more octets never rescue a refused header
    if first[0] == "ok":
        assert later == first  # nor change an accepted one


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, 255),
    st.one_of(st.integers(0, 30), st.integers(31, 2**28 - 1)),
    st.one_of(st.integers(0, 300), st.integers(0, 70000)),
)
def test_every_proper_prefix_of_a_valid_tlv_is_truncated(
    first: int, number: int, length: int
) -> None:
    header = canonical_header(first, number, length)
    whole = header + bytes(length)
    assert read_header(whole) == (header[0], len(header), length)
    for cut in {*range(len(header) + 2), len(whole) - 1}:
        if cut < len(whole):
            kind, offset = outcome(read_header, whole[:cut])
            assert kind == "truncated", cut
            assert 0 <= offset <= cut


# Each rule, by example -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem", "offset"),
    [
        # The regression: the old reader took these, though its docstring refused them.
        (b"\x04\x81\x01\x00", "shortest form", 1),
        (b"\x04\x82\x00\x01\x00", "shortest form", 1),
        (b"\x04\x82\x00", "shortest form", 1),  # refused before the rest arrives
        (b"\x04\x84\x00\x00\x00\x01\x00", "shortest form", 1),
        (b"\x30\x80\x00\x00", "indefinite", 1),
        (b"\x04\x85\x01\x00\x00\x00\x00", "length of 5 octets", 1),
        (b"\x04\xff", "length of 127 octets", 1),  # reserved
        (b"\x9f\x80\x2a\x00", "tag number is not in its shortest form", 1),
        (b"\x9f\x1e\x00", "tag number 30 must be written in one octet", 0),
        (b"\xbf\x81\x80\x80\x80\x01\x00", "tag number too large", 0),
        (b"\x04\x84\x01\x00\x00\x00", "exceeds the 16777216-octet limit", 0),
    ],
)
def test_refusals_name_the_fault_and_its_offset(data: bytes, problem: str, offset: int) -> None:
    with pytest.raises(P.PDUError, match=problem) as caught:
        read_header(data)
    assert not isinstance(caught.value, Truncated)
    assert caught.value.offset == offset


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"", 0),
        (b"\x04", 1),
        (b"\x9f", 0),
        (b"\x9f\x81", 0),
        (b"\x04\x82\x01", 1),
        (b"\x04\x05abc", 0),
    ],
)
def test_truncation_is_reported_with_its_offset(data: bytes, offset: int) -> None:
    with pytest.raises(Truncated) as caught:
        read_header(data)
    assert caught.value.offset == offset


def test_high_tag_numbers_are_read_up_to_28_bits() -> None:
    assert read_header(b"\x9f\x1f\x00") == (0x9F, 3, 0)  # [31], the smallest high number
    assert read_header(b"\xbf\xff\xff\xff\x7f\x01\x00") == (0xBF, 6, 1)  # 2**28 - 1


def test_limit_counts_the_header_and_is_checked_before_the_content_arrives() -> None:
    assert read_header(b"\x04\x03abc", limit=5) == (0x04, 2, 3)
    with pytest.raises(P.PDUError, match="exceeds the 4-octet limit"):
        read_header(b"\x04\x03abc", limit=4)
    with pytest.raises(P.PDUError, match="exceeds the 1000-octet limit") as caught:
        read_header(b"\x04\x82\x03\xe7", limit=1000)  # 1003 octets claimed, none here
    assert not isinstance(caught.value, Truncated)


def test_end_bounds_the_value_inside_its_parent() -> None:
    data = b"\x30\x03\x04\x05abcde"
    with pytest.raises(Truncated, match="runs past"):
        read_header(data, 2, 5)
    assert tlv_end(data, 2) == 9


def test_check_framing_refuses_a_non_minimal_length_at_any_depth() -> None:
    assert check_framing(b"\x30\x05\x30\x03\x02\x01\x00") == 7
    with pytest.raises(P.PDUError, match="shortest form") as caught:
        check_framing(b"\x30\x06\x30\x04\x04\x81\x01\x00")
    assert caught.value.offset == 5
    with pytest.raises(Truncated):  # a child running past its parent
        check_framing(b"\x30\x03\x04\x05abcde")


def test_check_framing_is_iterative() -> None:
    data = b"\x05\x00"
    for _ in range(5000):
        data = b"\x30" + fast.length(len(data)) + data
    assert check_framing(data) == len(data)  # no RecursionError


# The hot path's inline reads agree with the reader -------------------------------


@settings(max_examples=1000, deadline=None)
@given(INPUTS.filter(lambda d: d[:1] and d[0] & 0x1F != 0x1F), st.integers(0, 12))
def test_inline_expect_agrees_with_the_reader(data: bytes, shorter: int) -> None:
    end = max(1, len(data) - shorter)
    reader = outcome(read_header, data, 0, end)
    try:
        got = expect(data, 0, end, data[0], "field")
    except P.PDUError as exc:
        assert reader[0] != "ok", data.hex()
        assert exc.offset == reader[1]
        assert exc.message.startswith("field: ")
    else:
        assert reader[0] == "ok", data.hex()
        _tag, start, length = reader[1]
        assert got == (start, start + length)
    skipped = outcome(skip, data, 0, end)
    if reader[0] == "ok":
        assert skipped == ("ok", reader[1][1] + reader[1][2])
    else:
        assert skipped == reader


def test_expect_names_a_wrong_tag() -> None:
    with pytest.raises(P.PDUError, match="field: expected tag 0x81, found 0x80") as caught:
        expect(b"\x80\x00", 0, 2, 0x81, "field")
    assert caught.value.offset == 0


# Non-minimal lengths are refused everywhere ------------------------------------


def _tree(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """Every TLV of a valid encoding: ``(start, tag, content, stop)``, depth first."""
    out = []
    while start < end:
        tag, content, length = read_header(data, start, end)
        out.append((start, tag, content, content + length))
        if tag & 0x20:
            out += _tree(data, content, content + length)
        start = content + length
    return out


def with_long_length(data: bytes, target: int, extra: int) -> bytes:
    """``data`` with the TLV at ``target`` given ``extra`` needless length octets.

    A length below 128 gets the long form with ``extra`` octets.

    Every enclosing length is fixed up (minimally), so the only fault is the
    one non-minimal length.
    """

    def rebuild(start: int, end: int) -> bytes:
        out = bytearray()
        while start < end:
            tag, content, length = read_header(data, start, end)
            stop = content + length
            inner = rebuild(content, stop) if tag & 0x20 else data[content:stop]
            if start == target:  # long form with ``extra`` octets more than needed
                n = len(inner)
                count = extra if n < 0x80 else (n.bit_length() + 7) // 8 + extra
                out += bytes((tag, 0x80 | count)) + len(inner).to_bytes(count, "big") + inner
            else:
                out += bytes((tag,)) + fast.length(len(inner)) + inner
            start = stop
        return bytes(out)

    return rebuild(0, len(data))


@settings(max_examples=150, deadline=None)
@given(st.one_of(S.envelopes(), S.cc_apdus()), st.data())
def test_a_non_minimal_length_anywhere_is_refused_by_both_decoders(
    record: object, data: st.DataObject
) -> None:
    encoded = P.encode(record)
    nodes = _tree(encoded, 0, len(encoded))
    start = data.draw(st.sampled_from(nodes))[0]
    extra = data.draw(st.integers(1, 2))
    broken = with_long_length(encoded, start, extra)
    assert broken != encoded
    for decode in (P.decode, fast.decode):
        with pytest.raises(P.PDUError, match="shortest form"):
            decode(broken)
    if isinstance(record, P.Envelope):  # split, then the content decoded alone
        with pytest.raises(P.PDUError, match="shortest form"):
            split = fast.split_envelope(broken)
            fast.decode_content(split.content_kind, split.content_der)


def test_reference_codec_refuses_a_non_minimal_inner_length() -> None:
    # Regression: asn1tools took these, so `mediate decode` did too.
    assert codec.decode(b"\x30\x03\x81\x01\x01") == P.CCApdu(b"\x01")
    for data, offset in ((b"\x30\x04\x81\x81\x01\x01", 3), (b"\x30\x05\x81\x82\x00\x01\x01", 3)):
        with pytest.raises(P.PDUError, match="IAS-CC-APDU: length is not in its shortest") as c:
            codec.decode(data)
        assert c.value.offset == offset


def test_a_later_versions_message_is_still_skipped_whole() -> None:
    later = P.decode(bytes.fromhex("af0100"))  # its contents are not ours to read
    assert isinstance(later, P.UnknownDeliveryMessage)
    with pytest.raises(P.PDUError, match="shortest form"):
        P.decode(bytes.fromhex("af810100"))  # its own header still is
