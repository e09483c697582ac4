"""Records and codec of the tap link (``Mediation-TapLink``, docs/tap-link.md).

Control messages (hellos, the warrant set, acknowledgements, keepalives,
close) are few and go through the reference codec (asn1tools ``der``).
The batch, which carries every PDU, has a hand-written encoder and reader
on the hot path; tests/test_taplink_codec.py proves both write and read
the same octets as the reference codec.

A batch's PDUs are encoded once, when the tap seals the batch into its
spool (:func:`encode_pdus`); the batch id is put around them when it is
sent (:func:`batch_message`), so a resent batch is the same octets.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from typing import Any

import asn1tools

from mediation.pdu.convert import check_visible
from mediation.pdu.delivery import check_range
from mediation.pdu.errors import PDUError
from mediation.pdu.fast_der import expect, generalized_time, length, read_integer, read_time
from mediation.pdu.schema import compile_modules
from mediation.pdu.tlv import read_header

VERSION = 1
MAX_BATCH_ID = 2**64 - 1
KINDS = ("cmII", "cmCC")  # ENUMERATED order
_KIND_OCTET = {kind: bytes((0x80, 0x01, n)) for n, kind in enumerate(KINDS)}
_BATCH = 0xA3  # [3] constructed: pduBatch
_ACK = 0xA4  # [4] constructed: batchAck
_STAMP_MIN, _STAMP_MAX = 15, 22  # YYYYMMDDHHMMSSZ to YYYYMMDDHHMMSS.ffffffZ (fast_der.read_time)


@functools.cache
def spec() -> asn1tools.compiler.Specification:
    """The tap-link module compiled alone (its type names are its own)."""
    return compile_modules(("Mediation-TapLink.asn",))


@dataclasses.dataclass(frozen=True)
class Overflow:
    """Batches the tap's spool refused (full), and the capture times they spanned."""

    count: int
    first: dt.datetime
    last: dt.datetime

    def __post_init__(self) -> None:
        check_range("count", self.count, 2**32 - 1)


@dataclasses.dataclass(frozen=True)
class TapHello:
    name: str
    next_batch: int
    pending: int
    overflow: Overflow | None = None
    version: int = VERSION

    def __post_init__(self) -> None:
        check_visible("tapName", self.name, 1, 64)
        check_range("nextBatch", self.next_batch, MAX_BATCH_ID)
        check_range("pending", self.pending, 2**32 - 1)


@dataclasses.dataclass(frozen=True)
class ServerHello:
    last_stored: int
    keepalive: int
    version: int = VERSION


@dataclasses.dataclass(frozen=True)
class TapWarrant:
    """One warrant as the tap needs it: held in the tap's memory only."""

    handle: str
    case_id: str
    iap: str | None
    content: str  # "headers" or "full"
    start: dt.datetime
    end: dt.datetime
    targets: tuple[str, ...]

    def __post_init__(self) -> None:
        check_visible("handle", self.handle, 1, 32)
        check_visible("caseId", self.case_id, 1, 25)
        if self.iap is not None:
            check_visible("iapId", self.iap, 1, 15)
        if self.content not in ("headers", "full"):
            raise PDUError(f"content: must be headers or full, got {self.content!r}")
        if not all(0 < len(t) <= 255 for t in self.targets):
            raise PDUError("targets: each is 1 to 255 characters")


@dataclasses.dataclass(frozen=True)
class WarrantSet:
    generation: int
    warrants: tuple[TapWarrant, ...]


class TapPdu:
    """One PDU of a batch: its kind (``"cmII"`` or ``"cmCC"``), capture time and DER.

    A PDU read off the wire (:func:`read_batch`) keeps its time's octets and
    reads them when ``captured`` is first asked for: the server asks only
    for a datagram's first and last, and reading every one was a third of
    reading a batch. Equal when kind, time and DER are.

    Args:
        kind: ``"cmII"`` or ``"cmCC"``.
        captured: when the tap captured it (aware UTC).
        der: the PDU.
    """

    __slots__ = ("_captured", "_stamp", "der", "kind")

    def __init__(self, kind: str, captured: dt.datetime, der: bytes) -> None:
        self.kind = kind
        self.der = der
        self._captured: dt.datetime | None = captured
        self._stamp = b""

    @classmethod
    def read(cls, kind: str, stamp: bytes, der: bytes) -> TapPdu:
        """A PDU whose time is the GeneralizedTime contents ``stamp``, read when asked for."""
        pdu = _new(cls)
        pdu.kind, pdu.der, pdu._captured, pdu._stamp = kind, der, None, stamp
        return pdu

    @property
    def captured(self) -> dt.datetime:
        """When the tap captured the PDU.

        Raises:
            PDUError: its octets are not a DER GeneralizedTime (a PDU read off the wire).
        """
        if self._captured is None:
            self._captured = read_time(self._stamp, 0, len(self._stamp), "captured")
        return self._captured

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TapPdu):
            return NotImplemented
        return (self.kind, self.der, self.captured) == (other.kind, other.der, other.captured)

    def __hash__(self) -> int:
        return hash((self.kind, self.der, self.captured))

    def __repr__(self) -> str:
        when = self._captured if self._captured is not None else self._stamp
        return f"TapPdu({self.kind!r}, {when!r}, <{len(self.der)} octets>)"


_new = object.__new__


@dataclasses.dataclass(frozen=True)
class PduBatch:
    batch_id: int
    pdus: tuple[TapPdu, ...]


@dataclasses.dataclass(frozen=True)
class BatchAck:
    batch_id: int
    accepted: int
    refused: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        check_range("batchId", self.batch_id, MAX_BATCH_ID)
        check_range("accepted", self.accepted, 2**32 - 1)
        for reason, count in self.refused:
            check_visible("reason", reason, 1, 64)
            check_range("count", count, 2**32 - 1)


@dataclasses.dataclass(frozen=True)
class Keepalive:
    id: int


@dataclasses.dataclass(frozen=True)
class KeepaliveAnswer:
    id: int


@dataclasses.dataclass(frozen=True)
class Close:
    reason: str


Message = (
    TapHello | ServerHello | WarrantSet | PduBatch | BatchAck | Keepalive | KeepaliveAnswer | Close
)


# -- the hot path: batches ----------------------------------------------------


# The last capture time encoded and its two heads (kind, time, the pdu's tag) by
# kind: a frame's PDUs, and a replay step's or a capture block's frames, share
# one datetime object. One tuple, so a thread switch can only cause a miss.
_LAST_HEADS: tuple[object, dict[str, bytes]] = (None, {})


def pdu_head(kind: str, captured: dt.datetime) -> bytes:
    """A ``TapPdu``'s contents before the length of its ``pdu``: kind, time, the pdu's tag.

    For a builder that writes the ``pdu`` itself (the tap's CC records:
    mediation/tap/header_report.py); :func:`encode_pdu` is the general form.
    """
    global _LAST_HEADS
    last = _LAST_HEADS
    if captured is not last[0]:
        time = generalized_time(captured)
        stamp = b"\x81" + length(len(time)) + time + b"\x82"
        last = _LAST_HEADS = (captured, {k: octet + stamp for k, octet in _KIND_OCTET.items()})
    return last[1][kind]


def encode_pdu(kind: str, captured: dt.datetime, der: bytes) -> bytes:
    """One ``TapPdu`` TLV."""
    head = pdu_head(kind, captured)
    n = len(der)
    size = length(n)
    return b"".join((b"\x30", length(len(head) + len(size) + n), head, size, der))


def encode_pdus(pdus: list[tuple[str, dt.datetime, bytes]]) -> bytes:
    """The contents of a batch's ``pdus`` (what the spool keeps), from (kind, time, der)."""
    return b"".join(encode_pdu(kind, when, der) for kind, when, der in pdus)


def batch_message(batch_id: int, pdus: bytes) -> bytes:
    """A whole ``TapLinkMessage`` (pduBatch) around contents from :func:`encode_pdus`."""
    if not 0 <= batch_id <= MAX_BATCH_ID:
        raise ValueError(f"batch id {batch_id} out of range")
    head = b"\x80" + _integer_contents(batch_id) + b"\xa1" + length(len(pdus))
    return b"".join((bytes((_BATCH,)), length(len(head) + len(pdus)), head, pdus))  # one copy


def ack_message(ack: BatchAck) -> bytes:
    """A whole ``TapLinkMessage`` (batchAck), by hand: the server sends one per batch.

    The same octets as the module's DER encoder (a hypothesis test proves
    it), without its ~30 calls a message (the ack is part of every tap
    batch's fixed cost at light load). ``ack`` was range-checked when made.
    """
    body = b"\x80" + _integer_contents(ack.batch_id) + b"\x81" + _integer_contents(ack.accepted)
    if ack.refused:
        items = []
        for reason, count in ack.refused:
            text = reason.encode("ascii")
            item = b"\x80" + length(len(text)) + text + b"\x81" + _integer_contents(count)
            items.append(b"\x30" + length(len(item)) + item)
        seq = b"".join(items)
        body += b"\xa2" + length(len(seq)) + seq
    return b"\xa4" + length(len(body)) + body


def _read_plain_ack(data: bytes, at: int) -> BatchAck | None:
    """A batchAck of ``80 L id 81 L accepted`` from ``at`` (its contents) to the end,
    each INTEGER minimal and in range; None for anything else: the reference decides
    (tests/test_taplink_ack_fast.py proves the two agree)."""
    values = []
    for tag in (0x80, 0x81):
        if at + 2 > len(data) or data[at] != tag or not 1 <= data[at + 1] <= 9:
            return None
        size, at = data[at + 1], at + 2
        raw = data[at : at + size]
        if len(raw) < size or raw[0] >= 0x80 or (size > 1 and raw[0] == 0 and raw[1] < 0x80):
            return None
        values.append(int.from_bytes(raw, "big"))
        at += size
    batch_id, accepted = values
    if at != len(data) or batch_id > MAX_BATCH_ID or accepted > 2**32 - 1:
        return None
    return BatchAck(batch_id, accepted)


def _integer_contents(n: int) -> bytes:
    raw = n.to_bytes(n.bit_length() // 8 + 1, "big")
    return length(len(raw)) + raw


def read_batch(data: bytes, start: int, end: int) -> PduBatch:
    """The ``PduBatch`` whose contents are ``data[start:end]``.

    Every header, size and count is checked here; each PDU's time only for
    its size: its value is read when asked for (:attr:`TapPdu.captured`).

    Raises:
        PDUError: anything not strict DER of the type; the offset says where.
    """
    pos, stop = expect(data, start, end, 0x80, "batchId")
    batch_id = read_integer(data, pos, stop, "batchId")
    if not 0 <= batch_id <= MAX_BATCH_ID:
        raise PDUError("batchId: out of range", pos)
    pos, seq_end = expect(data, stop, end, 0xA1, "pdus")
    out: list[TapPdu] = []
    kinds, read, common = KINDS, TapPdu.read, _common_items
    while pos < seq_end:
        pos = common(data, pos, seq_end, out)  # the items in the tap's layout: a run a call
        if pos >= seq_end:
            break
        item, item_end = expect(data, pos, seq_end, 0x30, "TapPdu")  # one item, the long way
        k, k_end = expect(data, item, item_end, 0x80, "kind")
        kind = data[k] if k_end - k == 1 else -1  # 0 or 1, one octet in DER
        if not 0 <= kind < 2:
            raise PDUError(f"kind: unknown value {read_integer(data, k, k_end, 'kind')}", k)
        t, t_end = expect(data, k_end, item_end, 0x81, "captured")
        if not _STAMP_MIN <= t_end - t <= _STAMP_MAX:  # the time itself is read when asked for
            raise PDUError("captured: not a DER GeneralizedTime", t)
        p, p_end = expect(data, t_end, item_end, 0x82, "pdu")
        out.append(read(kinds[kind], data[t:t_end], data[p:p_end]))
        pos = item_end  # extensions after pdu are skipped
    return PduBatch(batch_id, tuple(out))


def _common_items(data: bytes, pos: int, end: int, out: list[TapPdu]) -> int:
    """Append to ``out`` the ``TapPdu`` items from ``pos`` on that are in the tap's own layout;
    the offset of the first that is not (``end``: none).

    ``30 L  80 01 kind  81 l time  82 L pdu``: lengths in the short or the
    minimal one- or two-octet long form, a known kind, a time of a
    GeneralizedTime's size, the PDU ending the item. Read inline, a run of
    items in one call (:func:`read_batch`'s general path makes four a PDU);
    anything else, valid or not, stops the run and the general path decides
    that item, so the answer is always its (tests/test_taplink_batch_fast.py
    proves it on altered encodings).
    """
    append, new, kinds = out.append, _new, KINDS
    while pos + 3 <= end and data[pos] == 0x30:
        size = data[pos + 1]
        if size == 0x82:
            if pos + 4 > end or not data[pos + 2]:
                return pos
            item = pos + 4
            item_end = item + (data[pos + 2] << 8 | data[pos + 3])
        elif size == 0x81 and data[pos + 2] >= 0x80:
            item = pos + 3
            item_end = item + data[pos + 2]
        elif size < 0x80:
            item = pos + 2
            item_end = item + size
        else:
            return pos
        if item_end > end or item + 7 > item_end or data[item] != 0x80 or data[item + 1] != 1:
            return pos
        kind, stamp = data[item + 2], data[item + 4]
        if kind > 1 or data[item + 3] != 0x81 or not _STAMP_MIN <= stamp <= _STAMP_MAX:
            return pos
        t = item + 5
        at = t + stamp  # the pdu's tag
        if at + 2 > item_end or data[at] != 0x82:
            return pos
        size = data[at + 1]
        if size < 0x80:
            p = at + 2
            p_end = p + size
        elif size == 0x81 and at + 3 <= item_end and data[at + 2] >= 0x80:
            p = at + 3
            p_end = p + data[at + 2]
        elif size == 0x82 and at + 4 <= item_end and data[at + 2]:
            p = at + 4
            p_end = p + (data[at + 2] << 8 | data[at + 3])
        else:
            return pos
        if p_end != item_end:
            return pos
        pdu = new(TapPdu)  # TapPdu.read, inline: one call fewer a PDU
        pdu.kind, pdu.der, pdu._captured, pdu._stamp = kinds[kind], data[p:p_end], None, data[t:at]
        append(pdu)
        pos = item_end
    return pos


# -- every message --------------------------------------------------------------


def encode(message: Message) -> bytes:
    """The DER of one ``TapLinkMessage``.

    Raises:
        PDUError: a value the type does not allow.
    """
    if isinstance(message, PduBatch):
        pdus = encode_pdus([(p.kind, p.captured, p.der) for p in message.pdus])
        return batch_message(message.batch_id, pdus)
    if isinstance(message, BatchAck):
        return ack_message(message)
    try:
        return spec().encode("TapLinkMessage", _to_asn1(message))
    except (asn1tools.Error, ValueError, TypeError) as exc:
        raise PDUError(f"{type(message).__name__}: {exc}") from None


def decode(data: bytes) -> Message:
    """One whole ``TapLinkMessage``.

    Raises:
        PDUError: not one strict-DER message of the module (an unknown
        alternative included: this side knows no newer version yet).
    """
    tag, start, size = read_header(data, 0)
    if start + size != len(data):
        raise PDUError("trailing octets after the message", start + size)
    if tag == _BATCH:
        return read_batch(data, start, start + size)
    if tag == _ACK:  # the tap reads one a batch: by hand when plain (no refusals)
        ack = _read_plain_ack(data, start)
        if ack is not None:
            return ack
    try:
        name, value = spec().decode("TapLinkMessage", data)
        return _from_asn1(name, value)
    except (asn1tools.Error, ValueError, TypeError, KeyError) as exc:
        raise PDUError(f"TapLinkMessage: {exc}") from None


def _to_asn1(message: Message) -> tuple[str, dict[str, Any]]:
    if isinstance(message, TapHello):
        value: dict[str, Any] = {
            "version": message.version,
            "tapName": message.name,
            "nextBatch": message.next_batch,
            "pending": message.pending,
        }
        if message.overflow is not None:
            o = message.overflow
            value["overflow"] = {"count": o.count, "firstCaptured": o.first, "lastCaptured": o.last}
        return "tapHello", value
    if isinstance(message, ServerHello):
        return "serverHello", {
            "version": message.version,
            "lastStored": message.last_stored,
            "keepalive": message.keepalive,
        }
    if isinstance(message, WarrantSet):
        return "warrantSet", {
            "generation": message.generation,
            "warrants": [_warrant_to_asn1(w) for w in message.warrants],
        }
    if isinstance(message, BatchAck):
        value = {"batchId": message.batch_id, "accepted": message.accepted}
        if message.refused:
            value["refused"] = [{"reason": r, "count": c} for r, c in message.refused]
        return "batchAck", value
    if isinstance(message, KeepaliveAnswer):
        return "keepaliveAnswer", {"id": message.id}
    if isinstance(message, Keepalive):
        return "keepalive", {"id": message.id}
    if isinstance(message, Close):
        return "close", {"reason": message.reason}
    raise TypeError(f"not a tap-link message: {type(message).__name__}")


def _warrant_to_asn1(w: TapWarrant) -> dict[str, Any]:
    value: dict[str, Any] = {
        "handle": w.handle,
        "caseId": w.case_id,
        "content": w.content,
        "start": w.start,
        "end": w.end,
        "targets": list(w.targets),
    }
    if w.iap is not None:
        value["iapId"] = w.iap
    return value


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _from_asn1(name: str, v: dict[str, Any]) -> Message:
    if name == "tapHello":
        o = v.get("overflow")
        overflow = (
            Overflow(o["count"], _utc(o["firstCaptured"]), _utc(o["lastCaptured"])) if o else None
        )
        return TapHello(v["tapName"], v["nextBatch"], v["pending"], overflow, v["version"])
    if name == "serverHello":
        return ServerHello(v["lastStored"], v["keepalive"], v["version"])
    if name == "warrantSet":
        return WarrantSet(
            v["generation"],
            tuple(
                TapWarrant(
                    w["handle"],
                    w["caseId"],
                    w.get("iapId"),
                    w["content"],
                    _utc(w["start"]),
                    _utc(w["end"]),
                    tuple(w["targets"]),
                )
                for w in v["warrants"]
            ),
        )
    if name == "batchAck":
        refused = tuple((r["reason"], r["count"]) for r in v.get("refused", ()))
        return BatchAck(v["batchId"], v["accepted"], refused)
    if name == "keepalive":
        return Keepalive(v["id"])
    if name == "keepaliveAnswer":
        return KeepaliveAnswer(v["id"])
    if name == "close":
        return Close(v["reason"])
    raise PDUError(f"TapLinkMessage: unexpected alternative {name}")
