"""What the confirmation record adds to CmII: the frames behind an access event, the targets.

The carrier must be able to prove later whom an intercept followed (seed
white paper, "Authentication, Validation and Confirmation"). The access and
session messages the tap already sends (Session-Start/End, Access-Accepted,
Access-Session-End) say *what* changed; two kinds of T1.IAS
``access-Signaling-Message-Report`` (the standard's message for "the
signalling seen") add the rest, in the same CmII stream, so the agency holds
exactly what the carrier's record holds:

- a **frame report**, after the events one DHCP or RADIUS frame caused (and
  for a DHCP ACK that renewed a target's lease, which changes nothing the
  session messages say): the frame's SHA-256, capture time and length, and
  the frame itself when the warrant allows full content. One
  ``InterceptedSignalingMessage`` (type ``radius`` or ``other``)::

      mediation-frame proto=dhcp what=ack captured=2026-11-23T00:11:00.500000Z
        sha256=<64 hex> length=342 layer=frame [octets=<hex>]

- a **targets report**, appended by the server when the warrant becomes
  active (or is active when the server starts) and whenever ``mediate
  modify`` changes its targets: one message ``mediation-targets
  reason=warrant-active count=2`` and one ``mediation-target <target>`` per
  static target (type ``other``; a SET OF, so in no particular order).

Values never contain spaces; a target's text is everything after the
first space. Parsing is strict: a message that does not follow the format is
not one of these (``None``), whatever else it may be.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re

from mediation.pdu.cmii import (
    AccessSignalingMessageReport,
    InterceptedSignalingMessage,
    SignalingMessageType,
)
from mediation.pdu.codec import decode_cmii
from mediation.pdu.errors import PDUError
from mediation.pdu.tlv import read_header, tlv_end

FRAME_WORD = "mediation-frame"
TARGETS_WORD = "mediation-targets"
TARGET_WORD = "mediation-target"
# The frame goes into the report whole when it is at most this long; a DHCP
# or RADIUS frame is far shorter (RADIUS: at most 4096 octets of payload),
# so only a jumbo frame of some other kind is left to its hash.
MAX_FRAME_OCTETS = 16384

_TOKEN = re.compile(r"[A-Za-z0-9._:+/-]+")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


@dataclasses.dataclass(frozen=True)
class FrameEvidence:
    """The frame that showed an access event: what the confirmation record keeps of it."""

    proto: str  # "dhcp" or "radius"
    what: str  # "ack", "release", "accounting-start", ...
    captured: dt.datetime
    sha256: str  # lower-case hex of the hashed octets
    length: int
    layer: str = "frame"  # "frame": the captured frame; "udp-payload": a listener's datagram
    octets: bytes | None = None  # the hashed octets themselves, when kept

    def to_json(self) -> dict:
        out = {
            "proto": self.proto,
            "what": self.what,
            "captured": _stamp(self.captured),
            "sha256": self.sha256,
            "length": self.length,
            "layer": self.layer,
        }
        if self.octets is not None:
            out["octets"] = self.octets.hex()
        return out


def frame_evidence(
    proto: str, what: str, data: bytes, captured: dt.datetime, *, layer: str = "frame",
    keep: bool = False,
) -> FrameEvidence:  # fmt: skip
    """Hash ``data`` (and keep it if ``keep`` and it fits) as seen at ``captured``."""
    octets = data if keep and len(data) <= MAX_FRAME_OCTETS else None
    return FrameEvidence(
        proto, what, captured, hashlib.sha256(data).hexdigest(), len(data), layer, octets
    )


def frame_message(evidence: FrameEvidence) -> InterceptedSignalingMessage:
    """The signalling message carrying ``evidence``.

    Raises:
        ValueError: a field that is not a plain token (never from this code's callers).
    """
    fields = [
        ("proto", evidence.proto),
        ("what", evidence.what),
        ("captured", _stamp(evidence.captured)),
        ("sha256", evidence.sha256),
        ("length", str(evidence.length)),
        ("layer", evidence.layer),
    ]
    if evidence.octets is not None:
        fields.append(("octets", evidence.octets.hex()))
    for name, value in fields:
        if not _TOKEN.fullmatch(value):
            raise ValueError(f"frame report: {name} {value!r} is not a plain token")
    kind = SignalingMessageType.RADIUS if evidence.proto == "radius" else SignalingMessageType.OTHER
    text = " ".join([FRAME_WORD, *(f"{k}={v}" for k, v in fields)])
    return InterceptedSignalingMessage(kind, text)


def parse_frame_message(message: InterceptedSignalingMessage) -> FrameEvidence | None:
    """The evidence a frame report carries, or None if ``message`` is not one."""
    words = message.message.split(" ")
    if words[0] != FRAME_WORD:
        return None
    fields = dict(word.partition("=")[::2] for word in words[1:])
    try:
        captured = dt.datetime.strptime(fields["captured"], "%Y-%m-%dT%H:%M:%S.%fZ")
        sha256, octets_hex = fields["sha256"], fields.get("octets")
        if len(sha256) != 64 or not _HEX.fullmatch(sha256):
            return None
        if octets_hex is not None and not _HEX.fullmatch(octets_hex):
            return None
        return FrameEvidence(
            fields["proto"],
            fields["what"],
            captured.replace(tzinfo=dt.UTC),
            sha256,
            int(fields["length"]),
            fields.get("layer", "frame"),
            None if octets_hex is None else bytes.fromhex(octets_hex),
        )
    except (KeyError, ValueError):
        return None


def targets_report(
    case_id: str, iap_system_id: str, when: dt.datetime, reason: str, targets: list[str]
) -> AccessSignalingMessageReport:
    """The report of a warrant's static targets (see the module docstring)."""
    head = f"{TARGETS_WORD} reason={reason} count={len(targets)}"
    messages = [InterceptedSignalingMessage(SignalingMessageType.OTHER, head)]
    messages += [
        InterceptedSignalingMessage(SignalingMessageType.OTHER, f"{TARGET_WORD} {target}")
        for target in targets
    ]
    return AccessSignalingMessageReport(
        case_id=case_id, iap_system_id=iap_system_id, timestamp=when, signaling_msg=tuple(messages)
    )


def parse_targets_report(report: AccessSignalingMessageReport) -> tuple[str, list[str]] | None:
    """``(reason, targets)`` of a targets report (targets sorted), or None if not one."""
    reason = None
    targets = []
    for message in report.signaling_msg:
        word, _, rest = message.message.partition(" ")
        if word == TARGETS_WORD:
            fields = dict(w.partition("=")[::2] for w in rest.split(" "))
            reason = fields.get("reason")
        elif word == TARGET_WORD:
            targets.append(rest)
    return None if reason is None else (reason, sorted(targets))


def cmii_message_tag(der: bytes | memoryview) -> int | None:
    """The context tag number of an ``IasProtocol``'s message (5: a signalling report).

    Reads two headers, decodes nothing: a reader of a long CmII stream
    skips the header reports (10) this way. None when ``der`` is not an
    ``IasProtocol``.
    """
    try:
        tag, content, length = read_header(der, 0)
        if tag != 0x30 or length == 0 or der[content] != 0x06:
            return None
        at = tlv_end(der, content, content + length)
        tag, _content, _length = read_header(der, at, content + length)
    except PDUError:
        return None
    return tag & 0x1F if tag & 0xE0 == 0xA0 else None


def is_targets_report(der: bytes) -> bool:
    """Whether a CmII PDU is the server's targets report (not something a tap sent)."""
    if cmii_message_tag(der) != 5:
        return False
    try:
        report = decode_cmii(der)
    except PDUError:
        return False
    return isinstance(report, AccessSignalingMessageReport) and (
        parse_targets_report(report) is not None
    )


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
