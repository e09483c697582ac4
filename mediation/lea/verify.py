"""The agency's check of what it received against the server's signed checkpoints.

The mediation server chains every record of a warrant stream into its
evidence log (``C(s) = SHA-256(C(s-1) || body(s))``, docs/evidence-log.md)
and sends, beside the envelopes, checkpoints: the chain value after a
sequence number, signed with its Ed25519 key. An envelope carries
everything ``body(s)`` is made of (sequence number, receive time to the
microsecond, content kind, clock status and the content's DER), so the
agency can rebuild the chain from its own ``<kind>.raw`` files and compare:
a match proves that every record it holds up to that checkpoint is exactly
what the server stored, with nothing left out, added or reordered.

A signed checkpoint is also a trusted starting point: after records the
agency never got (a gap it did not fetch), checking resumes at the next
checkpoint, and the records in between are reported as not checkable.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mediation import pdu
from mediation.lea import rawfile
from mediation.lea.outputs import CHECKPOINT_FILE, SCTE_FILE, raw_name, safe_handle
from mediation.lea.verify_scte import ScteCheck, check_scte
from mediation.log import format as F
from mediation.log.keys import key_id, verify_signature
from mediation.pdu import PDUError, StreamId, StreamKind, fast
from mediation.protocol.envelope import content_kind

Range = tuple[int, int]


class VerifyError(Exception):
    """The files cannot be read as a receiver's output (names the file)."""


@dataclasses.dataclass
class StreamCheck:
    """What the check found for one warrant stream."""

    stream: StreamId
    records: int = 0  # distinct sequence numbers held
    first: int | None = None
    last: int | None = None
    checkpoints: int = 0  # distinct, validly signed checkpoints of this stream
    verified: int = 0  # records proven by a checkpoint
    uncheckable: list[Range] = dataclasses.field(default_factory=list)  # spans with records missing
    after_last: int = 0  # records after the last checkpoint (not yet signed)
    fault: str | None = None  # the first thing that is wrong; None: nothing

    @property
    def ok(self) -> bool:
        return self.fault is None

    def line(self) -> str:
        """One line for people: ``w-3f9a1c/cmcc: ... ok`` (handles only)."""
        held = f"{self.records} records"
        if self.records:
            held += f" {self.first}..{self.last}"
        parts = [held, f"{self.checkpoints} checkpoints", f"{self.verified} verified"]
        if self.uncheckable:
            spans = ", ".join(f"{a}..{b}" for a, b in self.uncheckable[:3])
            more = f" and {len(self.uncheckable) - 3} more" if len(self.uncheckable) > 3 else ""
            parts.append(f"not checkable (records missing in {spans}{more})")
        if self.after_last:
            parts.append(f"{self.after_last} after the last checkpoint")
        if self.fault is not None:
            verdict = f"FAULT: {self.fault}"
        elif self.records == 0:
            verdict = "nothing held"
        elif self.verified == 0:
            verdict = "not verified (no checkpoint covers these records)"
        elif self.uncheckable:
            verdict = "ok where checkable"
        elif self.after_last:
            verdict = "ok up to the last checkpoint"
        else:
            verdict = "ok: all verified"
        label = f"{self.stream.warrant_handle}/{self.stream.kind.value.lower()}"
        return f"{label}: {', '.join(parts)}, {verdict}"


def body_of(data: bytes) -> tuple[StreamId, int, bytes]:
    """The log record body an envelope was made from: ``(stream, seq, body)``.

    Raises:
        PDUError: not an envelope, or one without the clock status a log
            record always has.
    """
    split = fast.split_envelope(data)
    if split.clock_status is None:
        raise PDUError("clockStatus: missing, so the log record cannot be rebuilt")
    record = F.LogRecord(
        split.sequence_number,
        F.to_us(split.mediation_time),
        F.ContentKind[content_kind(split.content_kind).name],
        split.clock_status,
        split.content_der,
    )
    return split.stream, split.sequence_number, F.data_body(record)


def _held(path: Path, stream: StreamId, check: StreamCheck) -> dict[int, rawfile.RawMessage]:
    """Each sequence number's first envelope in ``path``; a conflicting copy is a fault."""
    try:
        messages, _torn = rawfile.scan(path)
    except rawfile.RawFileError as exc:
        raise VerifyError(str(exc)) from None
    envelopes = [m for m in messages if m.sequence is not None]
    held: dict[int, rawfile.RawMessage] = {}
    digests: dict[int, bytes] = {}
    for message, data in zip(envelopes, rawfile.read_in_order(path, envelopes), strict=True):
        try:
            their_stream, seq, body = body_of(data)
        except PDUError as exc:
            raise VerifyError(f"{path}: byte {message.offset}: {exc}") from None
        if their_stream != stream:
            raise VerifyError(f"{path}: byte {message.offset}: an envelope of another stream")
        digest = hashlib.sha256(body).digest()  # duplicates must agree
        if seq in held:
            if digests[seq] != digest and check.fault is None:
                check.fault = f"sequence {seq} was received twice with different content"
            continue
        held[seq] = message
        digests[seq] = digest
    return held


def _checkpoints(path: Path, public: Ed25519PublicKey) -> tuple[dict, str | None]:
    """The validly signed checkpoints in ``path`` per stream, and the first bad one."""
    found: dict[StreamId, dict[int, pdu.ChainCheckpoint]] = {}
    fault = None
    if not path.is_file():
        return found, fault
    try:
        messages, _torn = rawfile.scan(path)
    except rawfile.RawFileError as exc:
        raise VerifyError(str(exc)) from None
    ours = key_id(public)
    for message, data in zip(messages, rawfile.read_in_order(path, messages), strict=True):
        try:
            cp = pdu.decode(data)
        except PDUError as exc:
            raise VerifyError(f"{path}: byte {message.offset}: {exc}") from None
        if not isinstance(cp, pdu.ChainCheckpoint):
            continue  # a later version's message
        where = f"checkpoint at {cp.stream.warrant_handle}/{cp.stream.kind.value.lower()} " + str(
            cp.last_sequence
        )
        signed = F.checkpoint_message(
            cp.stream, cp.last_sequence, F.to_us(cp.checkpoint_time), cp.chain_hash
        )
        if cp.key_id != ours:
            fault = fault or f"{where} is signed by another key (not the one given)"
            continue
        if not verify_signature(public, cp.signature, signed):
            fault = fault or f"{where} has a bad signature"
            continue
        seen = found.setdefault(cp.stream, {})
        earlier = seen.get(cp.last_sequence)
        if earlier is not None and earlier.chain_hash != cp.chain_hash:
            fault = fault or f"two signed checkpoints at {cp.last_sequence} disagree"
        seen.setdefault(cp.last_sequence, cp)
    return found, fault


def _walk(
    path: Path,
    stream: StreamId,
    held: dict[int, rawfile.RawMessage],
    checkpoints: list[pdu.ChainCheckpoint],
    check: StreamCheck,
) -> None:
    """Rebuild the chain through each checkpoint in turn, from the last one that held."""
    anchor, chain = -1, F.genesis(stream)
    for cp in checkpoints:
        span = range(anchor + 1, cp.last_sequence + 1)
        if all(seq in held for seq in span):
            wanted = [held[seq] for seq in span]
            value = chain
            for data in rawfile.read_in_order(path, wanted):
                value = F.chain_next(value, body_of(data)[2])
            if value != cp.chain_hash:
                check.fault = (
                    f"records {span.start}..{span.stop - 1} do not match the server's "
                    f"signed checkpoint at {cp.last_sequence}"
                )
                return
            check.verified += len(span)
        else:
            check.uncheckable.append((span.start, span.stop - 1))
        # A signed value is a trusted point to go on from, whether or not we could check it.
        anchor, chain = cp.last_sequence, cp.chain_hash
    check.after_last = sum(1 for seq in held if seq > anchor)


def check_case(case_dir: Path, public: Ed25519PublicKey) -> list[StreamCheck]:
    """Check both streams of one warrant's output directory (``OUT/<handle>``).

    Raises:
        VerifyError: a file that is not a receiver's output.
    """
    handle = case_dir.name
    cps, cp_fault = _checkpoints(case_dir / CHECKPOINT_FILE, public)
    out = []
    for kind in (StreamKind.CMII, StreamKind.CMCC):
        stream = StreamId(handle, kind)
        path = case_dir / raw_name(kind)
        if not path.is_file() and stream not in cps:
            continue
        check = StreamCheck(stream)
        held = _held(path, stream, check) if path.is_file() else {}
        if held:
            check.records, check.first, check.last = len(held), min(held), max(held)
        ordered = [cps[stream][n] for n in sorted(cps.get(stream, {}))]
        check.checkpoints = len(ordered)
        if check.fault is None:
            _walk(path, stream, held, ordered, check)
        out.append(check)
    if cp_fault is not None:
        target = out[0] if out else StreamCheck(StreamId(handle, StreamKind.CMII))
        if not out:
            out.append(target)
        target.fault = target.fault or cp_fault
    return out


def check_output(
    out_dir: Path, public: Ed25519PublicKey, udp_keys: Sequence[bytes] = ()
) -> list[StreamCheck | ScteCheck]:
    """Check every warrant under a receiver's ``--out`` directory (or one warrant's own).

    Args:
        out_dir: the receiver's ``--out``, or one warrant's directory in it.
        public: the server's log-signing key (checkpoints).
        udp_keys: endpoint UDP keys, to check the tags of SCTE datagrams kept.

    Raises:
        VerifyError: nothing to check there, or a file that is not a receiver's output.
    """
    if (out_dir / CHECKPOINT_FILE).is_file() or any(
        (out_dir / name).is_file() for name in (*map(raw_name, StreamKind), SCTE_FILE)
    ):
        cases = [out_dir]
    else:
        cases = sorted(p for p in out_dir.iterdir() if p.is_dir() and safe_handle(p.name))
    results: list[StreamCheck | ScteCheck] = []
    for case in cases:
        results.extend(check_case(case, public))
        scte = check_scte(case, list(udp_keys))
        if scte is not None:
            results.append(scte)
    if not results:
        raise VerifyError(f"{out_dir}: no received streams here (cmii.raw, cmcc.raw, cmcc.scte)")
    return results
