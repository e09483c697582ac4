"""pdu/taplink.py: items in the tap's layout are read inline, as the general path reads them.

``read_batch`` reads a run of items with ``_common_items`` and falls back to
its general path (one ``expect`` per field) for an item it leaves. On batches of every PDU size
across the length forms, and on altered encodings of them, a decode with
the inline reader and one without it give the same batch, or the same
refusal (message and offset).
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutation_support import altered

from mediation.pdu import taplink as T
from mediation.pdu.errors import PDUError

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIMES = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 1, 1)).map(
    lambda d: d.replace(tzinfo=dt.UTC)
)
SIZES = st.one_of(st.integers(0, 140), st.sampled_from([200, 255, 256, 1500, 65000, 70000]))
PDUS = st.lists(
    st.tuples(st.sampled_from(T.KINDS), TIMES, SIZES.map(lambda n: b"\x30" * n)), max_size=4
)


def _outcome(data: bytes) -> object:
    """What decode answers: the batch's items as octets, or the refusal."""
    try:
        batch = T.decode(data)
    except PDUError as exc:
        return ("refused", exc.message, exc.offset)
    if not isinstance(batch, T.PduBatch):  # altered into another message
        return batch
    return batch.batch_id, [(p.kind, p._stamp, p.der) for p in batch.pdus]


def _same(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _outcome(data)
    with monkeypatch.context() as patch:
        patch.setattr(T, "_common_items", lambda data, pos, end, out: pos)
        assert _outcome(data) == fast


@FUZZ
@given(st.integers(0, 2**64 - 1), PDUS, st.data())
def test_altered_batches_are_read_as_the_general_path_reads_them(
    batch_id: int, pdus: list, data: st.DataObject
) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        message = T.batch_message(batch_id, T.encode_pdus(pdus))
        _same(message, monkeypatch)
        for variant in altered(message, data):
            _same(variant, monkeypatch)


@FUZZ
@given(st.sampled_from(T.KINDS), TIMES, SIZES, st.data())
def test_an_item_s_header_altered_is_read_as_the_general_path_reads_it(
    kind: str, when: dt.datetime, size: int, data: st.DataObject
) -> None:
    """Every octet before the PDU's contents (where the inline reader decides) changed."""
    item = T.encode_pdu(kind, when, b"\x30" * size)
    message = T.batch_message(1, item + item)
    first = len(message) - 2 * len(item)
    head = len(item) - size  # the item's octets before the PDU's contents
    at = first + data.draw(st.integers(0, head - 1))
    octet = data.draw(st.integers(0, 255))
    with pytest.MonkeyPatch.context() as monkeypatch:
        _same(message[:at] + bytes((octet,)) + message[at + 1 :], monkeypatch)


def _length(size: int, form: int) -> bytes:
    """``size`` in the short form (0) or with ``form`` length octets, minimal or not."""
    if form == 0:
        return bytes((size % 128,))
    return bytes((0x80 | form,)) + (size % 256**form).to_bytes(form, "big")


@FUZZ
@given(
    st.integers(0, 3), st.integers(13, 24), st.integers(0, 3), SIZES, st.integers(0, 3),
    st.booleans(),
)  # fmt: skip
def test_items_built_field_by_field_are_read_as_the_general_path_reads_them(
    kind: int, stamp: int, pdu_form: int, size: int, item_form: int, extension: bool
) -> None:
    """Every kind, time size and length form, the lengths consistent: non-minimal ones too."""
    der = b"\x30" * (size % 128 if pdu_form == 0 else size % 256**pdu_form)
    body = b"\x80\x01" + bytes((kind,)) + b"\x81" + bytes((stamp,)) + b"2" * stamp
    body += b"\x82" + _length(len(der), pdu_form) + der + (b"\x83\x00" if extension else b"")
    if item_form == 0 and len(body) > 127:
        item_form = 1 if len(body) < 256 else 2
    item = b"\x30" + _length(len(body), item_form) + body
    with pytest.MonkeyPatch.context() as monkeypatch:
        _same(T.batch_message(3, item), monkeypatch)


def test_the_tap_s_items_are_read_inline() -> None:
    pdus = [
        ("cmII", dt.datetime(2026, 11, 23, tzinfo=dt.UTC), b"\x30" * n)
        for n in (0, 127, 128, 300, 65000)
    ]
    contents = T.encode_pdus(pdus)
    found: list[T.TapPdu] = []
    assert T._common_items(contents, 0, len(contents), found) == len(contents)
    assert [p.der for p in found] == [der for _k, _t, der in pdus]
