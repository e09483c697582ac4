"""TapIngest's cheaper check of the PDUs the server built (BuiltGate) against its generic one.

The same batch, shown through a :class:`BuiltGate` and through a gate that
believes every PDU the same way but takes the generic path, gives the same
streams, the same shares in the same order, and the same refusals
(a stream that is not open, an oversized PDU, a PDU whose framing is broken).
"""

from __future__ import annotations

import datetime as dt
import types

from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.pdu import StreamId, StreamKind
from mediation.pdu import taplink as T
from mediation.server.tap_gate import BuiltGate, TapGate
from mediation.server.tap_ingest import TapIngest

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
HANDLE = "w-0a0001"
LIMIT = 64
STREAM = {"cmII": StreamKind.CMII, "cmCC": StreamKind.CMCC}
DERS = st.sampled_from(
    [
        b"\x30\x03\x06\x01\x00",  # a CmII's first tag
        b"\x30\x03\x81\x01\x00",  # a CmCC's
        b"\x30\x03\xa0\x01\x00",
        b"\x30\x04\x06\x01\x00",  # runs past its end
        b"\x31\x03\x06\x01\x00",  # not a SEQUENCE
        b"\x30\x42\x06\x40" + bytes(64),  # over the limit
    ]
)


class Believing(TapGate):
    """Every PDU is the one warrant's, as BuiltGate says, but through the generic path."""

    def __init__(self) -> None:
        super().__init__("tzsp:192.0.2.1", [])

    def warrant_for(self, kind: str, der: bytes) -> tuple[str | None, str]:
        return HANDLE, ""


class Intake:
    """What TapIngest._check asks of the server's ingest: each stream's state, the size limit."""

    def __init__(self, closed: dict[str, str]) -> None:
        self.closed = closed
        self.evidence = types.SimpleNamespace(config=types.SimpleNamespace(max_payload_bytes=LIMIT))
        self.streams = {StreamId(HANDLE, kind): object() for kind in STREAM.values()}

    def check(self, handle: str, kind: str, _sequence: bytes) -> StreamKind | str:
        return self.closed.get(kind) or STREAM[kind]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(T.KINDS), DERS), max_size=20),
    st.dictionaries(
        st.sampled_from(T.KINDS), st.sampled_from(["inactive_warrant", "wrong_content_level"])
    ),
)
def test_a_built_batch_is_checked_as_the_generic_path_checks_it(
    pdus: list[tuple[str, bytes]], closed: dict[str, str]
) -> None:
    ingest = TapIngest.__new__(TapIngest)
    ingest.intake = Intake(closed)  # type: ignore[assignment]
    ingest._sids = {}  # the StreamIds it shares (made by __init__, skipped here)
    batch = T.PduBatch(1, tuple(T.TapPdu(kind, NOW, der) for kind, der in pdus))
    built = ingest._check(BuiltGate("tzsp:192.0.2.1", HANDLE), batch)
    generic = ingest._check(Believing(), batch)
    assert built == generic
    assert sorted(built[2].items()) == sorted(generic[2].items())  # as the ack lists them


def test_a_stream_id_is_made_once_per_warrant_and_kind_then_shared() -> None:
    ingest = TapIngest.__new__(TapIngest)
    ingest.intake = Intake({})  # type: ignore[assignment]
    ingest._sids = {}
    pdus = (T.TapPdu("cmII", NOW, b"\x30\x03\x06\x01\x00"), T.TapPdu("cmCC", NOW, bytes(3)))
    first = ingest._check(Believing(), T.PduBatch(1, pdus))[0]
    again = ingest._check(Believing(), T.PduBatch(2, pdus))[0]
    assert first == [StreamId(HANDLE, StreamKind.CMII), StreamId(HANDLE, StreamKind.CMCC)]
    assert all(a is b for a, b in zip(first, again, strict=True))  # no StreamId a batch
    ingest.intake.closed = {"cmII": "inactive_warrant"}  # type: ignore[attr-defined]
    assert ingest._check(Believing(), T.PduBatch(3, pdus))[0] == first[1:]
