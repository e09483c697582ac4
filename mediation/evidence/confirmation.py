"""The confirmation record of a warrant, read back from its CmII stream.

Whom did the intercept follow, and how do we know? Everything needed is in
the warrant's CmII stream of the evidence log (hash-chained, signed,
encrypted at rest; docs/carrier.md, "Proving later whom the intercept
followed"):

- the targets the warrant named, each time it became active or
  ``mediate modify`` changed them (the server's targets reports);
- every DHCP lease and RADIUS session the taps followed: Session-Start,
  Session-Already-Established and Session-End with address, MAC or user and
  session id; Access-Accepted and Access-Session-End for RADIUS;
- for each, the frame that showed it (the report right after the events,
  same time): SHA-256, capture time, length, and the frame itself for a
  full-content warrant; a DHCP ACK that only renewed a lease appears as
  ``lease-renewed``;
- the completeness notices (warrant active and inactive, tap lost, gaps,
  storage, clock), which say when the record may be incomplete.

Reading needs the log key and never the server: segments are read as files,
a torn tail at the end (a running server's, or a crash's) ends the read.
No trio; :func:`confirmation_records` is what ``mediate confirm`` and the
export bundle use.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mediation.evidence.records import stream_items
from mediation.log import ContentKind, LogRecord
from mediation.log.crypto import LogKey
from mediation.log.evidence_log import stream_dir
from mediation.pdu import (
    AccessAccepted,
    AccessSessionEnd,
    AccessSignalingMessageReport,
    CmIIMessage,
    PDUError,
    SessionAlreadyEstablished,
    SessionEnd,
    SessionStart,
    StreamKind,
    Value,
    decode_cmii,
    decode_notice,
)
from mediation.pdu.confirmation import (
    FrameEvidence,
    cmii_message_tag,
    parse_frame_message,
    parse_targets_report,
)

# IasProtocol message tags worth decoding: access-Accepted, access-Session-End,
# access-Signaling-Message-Report, session-Start, session-End,
# session-Already-Established. Header reports (10), one per packet, are skipped
# by their tag alone.
_WANTED_TAGS = frozenset((1, 3, 5, 6, 8, 9))
_EVENTS: dict[type, str] = {
    AccessAccepted: "access-accepted",
    AccessSessionEnd: "access-ended",
    SessionAlreadyEstablished: "session-already-established",
    SessionStart: "session-start",
    SessionEnd: "session-end",
}


def read_stream(directory: Path, key: LogKey | None) -> Iterator[LogRecord]:
    """Every data record of one stream directory, in order, decrypted
    (:func:`mediation.evidence.records.stream_items`, checkpoints left out).

    Raises:
        LogCorrupted, WrongLogKey, LogKeyRequired: as ``stream_items``.
    """
    yield from stream_items(directory, key)  # type: ignore[misc]  (no stream: records only)


def confirmation_records(data_dir: Path, key: LogKey, handle: str) -> list[dict[str, Any]]:
    """The warrant's confirmation record: one dict per event, in log order.

    Args:
        data_dir: the server's data directory.
        key: the log key (``LogKey(registry_key.derive(LOG_KEY_PURPOSE))``).
        handle: the warrant's handle.

    Returns:
        Dicts with ``seq`` (CmII sequence number), ``received`` (when the
        server stored it), ``time`` (the event's own time: capture time for
        tap events), ``source`` (``warrant``, ``dhcp``, ``radius`` or
        ``notice``), ``event``, and as the event has them ``subscriber``,
        ``address``, ``prefix_len``, ``session``, ``access_session``, ``nas``, ``reason``,
        ``detail``, ``targets``, ``from`` and ``lost_count`` (notices), and
        ``frames`` (list of
        :meth:`FrameEvidence.to_json`). Empty when the warrant has no CmII
        stream here.

    Raises:
        LogCorrupted, WrongLogKey, LogKeyRequired: see :func:`read_stream`.
        ValueError: ``handle`` is not a handle.
    """
    directory = stream_dir(data_dir, handle, StreamKind.CMII)
    if not directory.is_dir():
        return []
    out: list[dict[str, Any]] = []
    for record in read_stream(directory, key):
        entry = _entry(record)
        if entry is None:
            continue
        frames = entry.pop("shown", None)
        if frames is None or not _attach(out, frames, entry):
            out.append(entry)
    return out


def _entry(record: LogRecord) -> dict[str, Any] | None:
    """One record as a confirmation entry; a frame report carries ``shown``; None: not one."""
    base: dict[str, Any] = {"seq": record.seq, "received": _stamp(record.received)}
    if record.kind is ContentKind.NOTICE:
        try:
            notice = decode_notice(record.payload)
        except PDUError:
            return None
        base |= {"time": _stamp(notice.event_time), "source": "notice"}
        base["event"] = notice.event.value
        if notice.detail is not None:
            base["detail"] = notice.detail
        if notice.source is not None:
            base["from"] = notice.source  # a tap's name
        if notice.lost_count is not None:
            base["lost_count"] = notice.lost_count
        return base
    if record.kind is not ContentKind.CMII or cmii_message_tag(record.payload) not in _WANTED_TAGS:
        return None
    try:
        message = decode_cmii(record.payload)
    except PDUError:
        return None
    base["time"] = _stamp(message.timestamp)
    if isinstance(message, AccessSignalingMessageReport):
        return _report_entry(message, base)
    return base | _event_fields(message)


def _report_entry(message: AccessSignalingMessageReport, base: dict) -> dict[str, Any] | None:
    targets = parse_targets_report(message)
    if targets is not None:
        reason, listed = targets
        return base | {"source": "warrant", "event": "targets", "reason": reason, "targets": listed}
    shown = [e for e in map(parse_frame_message, message.signaling_msg) if e is not None]
    if not shown:
        return None  # a link-layer frame's report: traffic, not identification
    evidence = shown[0]
    event = "lease-renewed" if evidence.proto == "dhcp" else "accounting-seen"
    return base | {"source": evidence.proto, "event": event, "shown": shown}


def _attach(out: list[dict[str, Any]], frames: list[FrameEvidence], report: dict) -> bool:
    """Give the frames to the events just before the report with its time; False if none."""
    attached = False
    for entry in reversed(out):
        if entry["source"] != report["source"] or entry["time"] != report["time"]:
            break
        if "frames" in entry:
            break
        entry["frames"] = [f.to_json() for f in frames]
        attached = True
    if not attached:
        report["frames"] = [f.to_json() for f in frames]
    return attached


def _event_fields(message: CmIIMessage) -> dict[str, Any]:
    event = _EVENTS[type(message)]
    access_session = getattr(message, "access_session_id", None)
    radius = isinstance(message, (AccessAccepted, AccessSessionEnd)) or access_session is not None
    fields: dict[str, Any] = {"source": "radius" if radius else "dhcp", "event": event}
    fields["subscriber"] = _text(getattr(message, "subscriber_identity", None))
    address = getattr(message, "ip_address", None)
    if address is not None:
        fields["address"] = str(address.address)
        if address.prefix_len is not None:  # a DHCP subnet mask, or a delegated IPv6 prefix
            fields["prefix_len"] = address.prefix_len
    session = getattr(message, "packet_data_session_id", None)
    if session is not None:
        fields["session"] = _text(session)
    if access_session is not None:
        fields["access_session"] = _text(access_session)
    nas = getattr(message, "network_access_node_identity", None)
    if nas is not None:
        fields["nas"] = _text(nas)
    reason = getattr(message, "reason_for_termination", None)
    if reason is not None:
        fields["reason"] = _text(reason)
    detail = getattr(message, "access_session_characteristics", None)
    if detail is not None:
        fields["detail"] = _text(detail)
    return fields


def address_periods(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Who held which address when: each session's start joined to its end.

    A start is joined to the next end of the same source, subscriber,
    address and session number; one never ended in the record has
    ``end`` None (still held, or the warrant ended first).
    """
    periods: list[dict[str, Any]] = []
    open_: dict[tuple, dict[str, Any]] = {}
    for entry in records:
        if entry["event"] not in ("session-start", "session-already-established", "session-end"):
            continue
        key = (entry["source"], entry["subscriber"], entry["address"], entry.get("session"))
        if entry["event"] == "session-end":
            period = open_.pop(key, None)
            if period is not None:
                period.update(
                    end=entry["time"], end_seq=entry["seq"], end_reason=entry.get("reason")
                )
            continue
        period = {
            "source": entry["source"],
            "subscriber": entry["subscriber"],
            "address": entry["address"],
            "prefix_len": entry.get("prefix_len"),
            "session": entry.get("session"),
            "access_session": entry.get("access_session"),
            "start": entry["time"],
            "start_seq": entry["seq"],
            "already_held": entry["event"] == "session-already-established",
            "end": None,
            "end_seq": None,
            "end_reason": None,
        }
        open_[key] = period
        periods.append(period)
    return periods


def _text(value: Value | None) -> str | None:
    if value is None:
        return None
    inner = value.value
    return inner.hex() if isinstance(inner, bytes) else str(inner)


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
