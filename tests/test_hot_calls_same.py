"""Fewer Python calls a tap batch, the same answers (hotcalls, session 10).

Each cut of the server's per-PDU path is checked here against the code it
replaced, kept verbatim as the reference: ``check_visible``'s test of the
characters, ``first_headers``'s walk (the gate's one-walk reading) and the
tap journal's line (written by hand, not by ``json.dumps``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_tap_frames as F
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from log_support import KEY
from mutation_support import altered
from test_tap_gate_fast import encoded, tap_pdus

from mediation.log import ContentKind, EvidenceLog, LogConfig
from mediation.pdu import PDUError, StreamId, StreamKind
from mediation.pdu import taplink as T
from mediation.pdu.convert import check_visible
from mediation.pdu.fast_envelope import FIRST_TAGS
from mediation.pdu.fast_identity import _CASE, _CONTEXT_0, _OID, _SEQUENCE, first_headers, span
from mediation.server.ingest import well_formed_fast, well_formed_of
from mediation.server.tap_journal import JournalEntry, Span, TapJournal, newest_slot, state_line

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


def _line_before(last: int, entries: dict[int, JournalEntry]) -> bytes:
    """``TapJournal._set``'s line before hotcalls, verbatim."""
    data = {
        "last": last,
        "entries": [
            {
                "batch": e.batch,
                "spans": {str(sid): [x.start, x.count, x.already] for sid, x in e.spans.items()},
            }
            for e in entries.values()
        ],
    }
    return json.dumps(data).encode() + b"\n"


HANDLES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=32)
SEQ = st.one_of(st.integers(0, 2**63), st.sampled_from([0, 1, 9, 10, 2**32, 2**63 - 1]))
SPANS = st.dictionaries(
    st.builds(StreamId, HANDLES, st.sampled_from(StreamKind)),
    st.builds(Span, SEQ, st.integers(0, 10_000), st.integers(0, 10_000)),
    max_size=6,
)
ENTRIES = st.lists(st.builds(JournalEntry, SEQ, SPANS), max_size=4).map(
    lambda found: {e.batch: e for e in found}
)


@settings(max_examples=600, deadline=None)
@given(SEQ, ENTRIES)
def test_the_journal_line_is_json_dumps_octet_for_octet(
    last: int, entries: dict[int, JournalEntry]
) -> None:
    line = state_line(last, entries.values())
    assert line == _line_before(last, entries)
    assert json.loads(line)["last"] == last


def test_a_handle_json_escapes_keeps_the_encoder_s_escape() -> None:
    spans = {StreamId('w-"q"\\0001', StreamKind.CMCC): Span(5, 2, 1)}
    entries = {7: JournalEntry(7, spans)}
    assert state_line(7, entries.values()) == _line_before(7, entries)
    assert b'"w-\\"q\\"\\\\0001/cmCC": [5, 2, 1]' in state_line(7, entries.values())


def test_the_journal_file_holds_the_hand_written_line(tmp_path: Path) -> None:
    journal = TapJournal(tmp_path)
    sid = StreamId("w-0a0001", StreamKind.CMII)
    journal.begin("edge-1", JournalEntry(3, {sid: Span(10, 4)}), [])()
    _version, line = newest_slot((tmp_path / "taps" / "edge-1.journal").read_bytes())
    assert (
        line == b'{"last": 3, "entries": [{"batch": 3, "spans": {"w-0a0001/cmII": [10, 4, 0]}}]}\n'
    )
    last, entries = TapJournal(tmp_path).state("edge-1")
    assert last == 3 and entries[3].spans == {sid: Span(10, 4, 0)}


def test_tap_pdus_read_inline_are_the_general_path_s() -> None:
    pdus = [("cmII", F.T0, bytes(range(40))), ("cmCC", F.T0, bytes(300))]
    data = T.encode(T.PduBatch(9, tuple(T.TapPdu(k, t, d) for k, t, d in pdus)))
    batch = T.decode(data)
    assert [(p.kind, p.captured, p.der) for p in batch.pdus] == pdus
    assert all(type(p) is T.TapPdu for p in batch.pdus)


@pytest.mark.parametrize("checkpoints", [False, True])
async def test_caught_up_is_true_exactly_when_a_read_finds_nothing(
    tmp_path: Path, mock_clock: trio.testing.MockClock, checkpoints: bool
) -> None:
    """A delivery round that sent sleeps when every cursor is caught up: never while a
    record or a checkpoint is waiting to be read."""
    config = LogConfig(commit_records=100, commit_interval=0.002, checkpoint_records=3)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        stream = await log.stream("w-3f9a1c", StreamKind.CMII)
        cursor = stream.cursor(stream.next_seq, checkpoints=checkpoints)
        kinds = set()
        for n in range(8):
            appended = [stream.append_nowait(b"x%d" % i, ContentKind.CMII) for i in range(n % 3)]
            assert cursor.caught_up == (cursor.read_nowait(1024) == [])
            mock_clock.jump(0.002)
            for record in appended:
                await record.durable()
            await trio.testing.wait_all_tasks_blocked()
            for limit in (1, 1024):  # a part read, then the rest
                was = cursor.caught_up
                items = cursor.read_nowait(limit)
                assert was == (items == []), (n, limit, items)
                kinds.update(type(item).__name__ for item in items)
            assert cursor.caught_up
        assert kinds == ({"LogRecord", "Checkpoint"} if checkpoints else {"LogRecord"})


async def test_a_checkpoint_alone_is_not_caught_up(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """The interval's checkpoint, committed after its records were read, is still to read."""
    config = LogConfig(commit_records=100, commit_interval=0.002, checkpoint_interval=0.5)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        stream = await log.stream("w-3f9a1c", StreamKind.CMII)
        cursor = stream.cursor(stream.next_seq, checkpoints=True)
        plain = stream.cursor(stream.next_seq)
        record = stream.append_nowait(b"one", ContentKind.CMII)
        mock_clock.jump(0.002)
        await record.durable()
        assert [type(i).__name__ for i in cursor.read_nowait()] == ["LogRecord"]
        assert len(plain.read_nowait()) == 1
        assert cursor.caught_up and plain.caught_up
        published = trio.Event()
        stream.listen(published.set)
        for step in (0.5, 0.002):  # the checkpoint is due, then its commit
            mock_clock.jump(step)
            await trio.testing.wait_all_tasks_blocked()
        await published.wait()
        assert stream.latest_checkpoint is not None
        assert not cursor.caught_up and plain.caught_up  # only the checkpoint's reader has more
        assert [type(i).__name__ for i in cursor.read_nowait()] == ["Checkpoint"]
        assert cursor.caught_up and plain.read_nowait() == []


SIZES = st.sampled_from([0, 3, 64, 1500, 2**20])
FIRSTS = st.sampled_from(list(FIRST_TAGS.values()))


@FUZZ
@given(
    st.lists(st.one_of(tap_pdus().map(lambda pdus: pdus[-1][1]), encoded().map(lambda p: p[1]))),
    st.lists(st.binary(max_size=8).map(lambda tail: b"\x30" + tail), max_size=4),
    FIRSTS,
    SIZES,
    st.data(),
)
def test_a_share_s_framing_is_checked_as_each_pdu_s(
    ders: list[bytes],
    short: list[bytes],
    first: tuple[int, ...],
    size: int,
    data: st.DataObject,
) -> None:
    """``well_formed_of`` keeps exactly the PDUs ``well_formed_fast`` passes, in order."""
    mixed = ders + short + [v for der in ders[:2] for v in altered(der, data)]
    mixed = data.draw(st.permutations(mixed))
    expected = [der for der in mixed if len(der) <= size and well_formed_fast(der, first)]
    assert well_formed_of(mixed, first, size) == expected
    long_form = [b"\x30\x83\x00\x00\x03\x06\x01\x00", b"\x30\x84\x00\x00\x00\x03\x06\x01\x00"]
    assert well_formed_of(long_form, (0x06,), 64) == [
        der for der in long_form if well_formed_fast(der, (0x06,))
    ]
