"""Fewer Python calls a tap batch, the same answers (hotcalls, session 10).

Each cut of the server's per-PDU path is checked here against the code it
replaced, kept verbatim as the reference: ``check_visible``'s test of the
characters, ``first_headers``'s walk (the gate's one-walk reading) and the
tap journal's line (written by hand, not by ``json.dumps``).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutation_support import altered
from test_tap_gate_fast import encoded, tap_pdus

from mediation.pdu import PDUError
from mediation.pdu.convert import check_visible
from mediation.pdu.fast_identity import _CASE, _CONTEXT_0, _OID, _SEQUENCE, first_headers, span

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _visible_before(text: str) -> bool:
    return not any(not (0x20 <= ord(c) <= 0x7E) for c in text)


def _visible_now(text: str) -> bool:
    try:
        check_visible("warrantHandle", text, 0, None)
    except PDUError:
        return False
    return True


def test_every_character_below_0x3000_is_visible_as_before() -> None:
    for code in range(0x3000):
        text = chr(code)
        assert _visible_now(text) == _visible_before(text), hex(code)
    assert _visible_now("") and _visible_now("w-0a0001 /~")


@given(st.text(max_size=40))
def test_any_text_is_visible_as_before(text: str) -> None:
    assert _visible_now(text) == _visible_before(text)


def _first_headers_before(kind: str, der: bytes) -> tuple[bytes, int, int, int] | None:
    """The walk before hotcalls, verbatim: four calls of span."""
    end = len(der)
    if end < 2 or der[0] != _SEQUENCE:
        return None
    outer = span(der, 0, end)
    if outer is None:
        return None
    pos, stop = outer
    if kind == "cmII":
        if pos >= stop or der[pos] != _OID:
            return None
        oid = span(der, pos, stop)
        if oid is None or oid[1] >= stop:
            return None
        tag = der[oid[1]]
        if tag & 0x1F == 0x1F:
            return None
        body = span(der, oid[1], stop)
        if body is None:
            return None
        start, body_end = body
        if start >= body_end or der[start] != _CASE:
            return None
        case = span(der, start, body_end)
        if case is None:
            return None
        return der[case[0] : case[1]], tag, start, body_end
    if kind != "cmCC" or pos >= stop or der[pos] != _CONTEXT_0:
        return None
    header = span(der, pos, stop)
    if header is None or header[0] >= header[1] or der[header[0]] != _CONTEXT_0:
        return None
    info = span(der, header[0], header[1])
    if info is None or info[0] >= info[1] or der[info[0]] != _CASE:
        return None
    case = span(der, info[0], info[1])
    if case is None:
        return None
    return der[case[0] : case[1]], _CONTEXT_0, header[1], stop


def _same_headers(der: bytes) -> None:
    for kind in ("cmII", "cmCC", "cmXX"):
        assert first_headers(kind, der) == _first_headers_before(kind, der)


@FUZZ
@given(st.one_of(tap_pdus().map(lambda pdus: pdus[-1]), encoded()), st.data())
def test_first_headers_answer_as_before_on_altered_pdus(
    pdu: tuple[str, bytes], data: st.DataObject
) -> None:
    _kind, der = pdu
    _same_headers(der)
    for variant in altered(der, data):
        _same_headers(variant)


@FUZZ
@given(st.binary(max_size=40))
def test_first_headers_answer_as_before_on_any_octets(der: bytes) -> None:
    _same_headers(der)
    _same_headers(bytes([_SEQUENCE]) + der)
