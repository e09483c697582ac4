"""``mediate export``: one warrant's evidence as a bundle a court checks without our keys.

The bundle (file names carry the opaque handle only; the content is case
data and must be handled as evidence)::

    README.txt            how to check it, in plain words, with standard tools
    bundle.json           what was asked and what is held: per stream the
                          sequence range, the anchor checkpoint, the gaps
    log-signing.pub.pem   the server's Ed25519 public key (SubjectPublicKeyInfo)
    audit.jsonl           the audit trail's entries for this handle
    HANDLE/               the layout of an agency's receiver (`mediate receive`):
      cmii.raw, cmcc.raw    each log record as the PDUEnvelope delivery sends,
                            decrypted, in sequence order: the raw PDUs
      checkpoints.raw       the signed checkpoints (ChainCheckpoint messages)
      checkpoints.txt       the same, one a line, for openssl
      cmcc.pcap             the CC packets (raw IP, capture times)
      cmii.jsonl            the CmII PDUs and completeness notices as JSON
      notices.jsonl         the completeness notices alone
      *.sha256              a sha256sum line per file
    log/HANDLE/cmii/, log/HANDLE/cmcc/
                          the same records and checkpoints as an unencrypted
                          (version 1) log segment, from the anchor checkpoint
    files/N/              a files endpoint's capture files and manifest, if any
    confirmation.json     the warrant's confirmation record, if there is one
    SHA256SUMS            sha256sum lines for every file above
    SHA256SUMS.sig        Ed25519 signature of SHA256SUMS by the server's log key

Written into a temporary directory beside ``--out`` and renamed at the end,
so a failure leaves nothing half-written.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives import serialization

from mediation import __version__
from mediation.durable import fsync_dir, write_new
from mediation.evidence.manifest import MANIFEST
from mediation.evidence.readme import readme_text
from mediation.evidence.records import ExportError, Span, choose_span, span_items, start_chain
from mediation.lea.files import sha256_of
from mediation.lea.outputs import JSONL_FILE, CaseOutputs
from mediation.log import format as F
from mediation.log.crypto import LogKey
from mediation.log.evidence_log import stream_dir
from mediation.log.keys import LogSigner
from mediation.pdu import StreamId, StreamKind, fast
from mediation.pdu.jsonview import iso_time
from mediation.protocol.envelope import encode_message, record_envelope

BUNDLE_FILE = "bundle.json"
KEY_FILE = "log-signing.pub.pem"
AUDIT_FILE = "audit.jsonl"
README_FILE = "README.txt"
SUMS_FILE = "SHA256SUMS"
SIG_FILE = "SHA256SUMS.sig"
CHECKPOINTS_TXT = "checkpoints.txt"
NOTICES_FILE = "notices.jsonl"
FILES_DIR = "files"
LOG_DIR = "log"
CONFIRMATION_FILE = "confirmation.json"
FORMAT = "mediation-export-v1"


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """What to export: a warrant's streams from a data directory, for a time window."""

    data_dir: Path
    handle: str
    out: Path
    since: dt.datetime | None = None
    until: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Attachments:
    """What the exporter takes from outside the log (the CLI gathers it)."""

    audit_entries: list[dict[str, Any]]
    capture_dirs: list[Path] = dataclasses.field(default_factory=list)
    confirmation: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class ExportResult:
    out: Path
    spans: list[Span]
    files: int


def check_out_dir(out: Path) -> None:
    """Refuse an ``--out`` that would overwrite something.

    Raises:
        ExportError: ``out`` exists and is not an empty directory, or its
            parent does not exist.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty; give a new directory")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent} does not exist; create it first")


def export_bundle(
    request: ExportRequest,
    key: LogKey | None,
    signer: LogSigner,
    attachments: Attachments,
    now: dt.datetime,
) -> ExportResult:
    """Write the bundle of ``request.handle`` to ``request.out``, whole or not at all.

    Raises:
        ExportError: ``--out`` is taken, the log cannot be read, or the
            window holds no signed records.
        OSError: writing failed (nothing is left behind).
    """
    out = request.out
    check_out_dir(out)
    since = None if request.since is None else F.to_us(request.since)
    until = None if request.until is None else F.to_us(request.until)
    spans = []
    for kind in StreamKind:
        directory = stream_dir(request.data_dir, request.handle, kind)
        if directory.is_dir():
            span = choose_span(directory, StreamId(request.handle, kind), key, since, until)
            spans.append((directory, span))
    if not spans:
        raise ExportError(f"{request.handle}: nothing in the evidence log for this warrant")
    if all(span.stored_first is None for _d, span in spans):
        raise ExportError(f"{request.handle}: no records left in the evidence log (purged)")
    if not any(span.first is not None for _d, span in spans):
        raise ExportError(
            f"{request.handle}: no signed records in that window "
            "(a running server signs its records within a second or so: try again)"
        )
    temp = out.parent / f".{out.name}.{os.getpid()}.export"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(mode=0o700)
    try:
        _write(temp, request, key, signer, attachments, spans, now)
        with contextlib.suppress(FileNotFoundError):
            out.rmdir()  # the empty directory the user may have made
        os.rename(temp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    files = sum(1 for p in out.rglob("*") if p.is_file())
    return ExportResult(out, [span for _d, span in spans], files)


def _write(
    temp: Path,
    request: ExportRequest,
    key: LogKey | None,
    signer: LogSigner,
    attachments: Attachments,
    spans: list[tuple[Path, Span]],
    now: dt.datetime,
) -> None:
    handle = request.handle
    _write_case(temp, handle, key, spans)
    pem = signer.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_new(temp / KEY_FILE, pem, 0o644)
    entries = attachments.audit_entries
    lines = [json.dumps(e, sort_keys=True, separators=(",", ":")) for e in entries]
    write_new(temp / AUDIT_FILE, "".join(line + "\n" for line in lines).encode(), 0o600)
    captures = _copy_captures(temp, handle, attachments.capture_dirs)
    if attachments.confirmation is not None:
        data = json.dumps(attachments.confirmation, indent=2, sort_keys=True) + "\n"
        write_new(temp / CONFIRMATION_FILE, data.encode(), 0o600)
    summary = {
        "format": FORMAT,
        "handle": handle,
        "exported": iso_time(now),
        "by": f"mediate {__version__}",
        "window": {
            "from": None if request.since is None else iso_time(request.since),
            "to": None if request.until is None else iso_time(request.until),
        },
        "streams": {F.STREAM_DIRS[s.stream.kind]: s.to_json() for _d, s in spans},
        "audit_entries": len(attachments.audit_entries),
        "capture_dirs": captures,
        "confirmation": attachments.confirmation is not None,
        "key_id": signer.key_id.hex(),
    }
    write_new(temp / BUNDLE_FILE, (json.dumps(summary, indent=2) + "\n").encode(), 0o600)
    write_new(temp / README_FILE, readme_text(handle, summary).encode(), 0o644)
    sums = sums_text(temp)
    write_new(temp / SUMS_FILE, sums, 0o644)
    write_new(temp / SIG_FILE, signer.sign(sums), 0o644)
    for directory in [p for p in temp.rglob("*") if p.is_dir()] + [temp]:
        fsync_dir(directory)


def _write_case(
    temp: Path, handle: str, key: LogKey | None, spans: list[tuple[Path, Span]]
) -> None:
    """``HANDLE/``: envelopes, checkpoints, pcap and JSON, as a receiver writes them."""
    outputs = CaseOutputs(temp, handle)
    lines = []
    written: dict[StreamKind, int] = {}
    try:
        for directory, span in spans:
            segment = PlainSegment(temp / LOG_DIR / handle / F.STREAM_DIRS[span.stream.kind], span)
            for item in span_items(directory, span, key):
                segment.add(item)
                if isinstance(item, F.Checkpoint):
                    outputs.store_checkpoint(encode_message(item.to_pdu()))
                    lines.append(checkpoint_line(item))
                    continue
                written[span.stream.kind] = written.get(span.stream.kind, 0) + 1
                raw = record_envelope(span.stream, item, False)
                outputs.store(fast.decode_envelope(raw), raw, retrieved=False, at=item.received)
            segment.close()
    finally:
        outputs.close()
    for _directory, span in spans:
        expected = 0 if span.first is None or span.last is None else span.last - span.first + 1
        if written.get(span.stream.kind, 0) != expected:
            raise ExportError(
                f"{F.stream_label(span.stream)}: records {span.first}..{span.last} changed "
                "while being exported (retention ran?); nothing written, try again"
            )
    case = temp / handle
    write_new(case / CHECKPOINTS_TXT, "".join(lines).encode("ascii"), 0o644)
    write_new(case / NOTICES_FILE, notices_of(case / JSONL_FILE), 0o600)


class PlainSegment:
    """One stream's exported span as a version 1 (unencrypted) log segment.

    Its header's starting chain value is the anchor checkpoint's, and that
    checkpoint is its first frame, so ``verify_stream(..., anchored=True)``
    checks it (docs/evidence-log.md, "Segment file").
    """

    def __init__(self, directory: Path, span: Span) -> None:
        self.directory = directory
        self.span = span
        self._file: BinaryIO | None = None

    def add(self, item: F.LogRecord | F.Checkpoint) -> None:
        """Append a record or checkpoint (the first item opens the file)."""
        if self._file is None:
            assert self.span.first is not None
            self.directory.mkdir(mode=0o700, parents=True)
            path = self.directory / F.segment_name(self.span.first)
            self._file = open(path, "xb")  # noqa: SIM115 (closed by close())
            os.fchmod(self._file.fileno(), 0o600)
            header = F.encode_header(
                self.span.stream, self.span.first, start_chain(self.span, item)
            )
            self._file.write(header)
        if isinstance(item, F.Checkpoint):
            self._file.write(F.encode_checkpoint(item))
        else:
            self._file.write(F.encode_data(item))

    def close(self) -> None:
        """Sync and close the segment, if one was begun."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def checkpoint_line(cp: F.Checkpoint) -> str:
    """``cmii 99 TIME CHAIN-HEX MESSAGE-BASE64 SIGNATURE-BASE64``: one checkpoint for openssl."""
    message = base64.b64encode(cp.message()).decode("ascii")
    signature = base64.b64encode(cp.signature).decode("ascii")
    kind = F.STREAM_DIRS[cp.stream.kind]
    return f"{kind} {cp.last_seq} {iso_time(cp.time)} {cp.chain.hex()} {message} {signature}\n"


def notices_of(jsonl: Path) -> bytes:
    """The lines of ``cmii.jsonl`` that hold completeness notices."""
    if not jsonl.is_file():
        return b""
    out = []
    for line in jsonl.read_bytes().splitlines(keepends=True):
        content = json.loads(line).get("content", {})
        if isinstance(content, dict) and content.get("type") == "CompletenessNotice":
            out.append(line)
    return b"".join(out)


def _copy_captures(temp: Path, handle: str, dirs: list[Path]) -> list[str]:
    """Copy each files endpoint's ``DIR/HANDLE/`` to ``files/N/``; the names used.

    The manifest first (without a last line still being written), then the
    files it names and their ``.sha256``: a file still being written has no
    entry yet and is left out.
    """
    names = []
    for n, source in enumerate(dirs, start=1):
        target = temp / FILES_DIR / str(n)
        target.mkdir(mode=0o700, parents=True)
        manifest = (source / MANIFEST).read_bytes() if (source / MANIFEST).is_file() else b""
        manifest = manifest[: manifest.rfind(b"\n") + 1]
        write_new(target / MANIFEST, manifest, 0o600)
        for name in sorted(_manifest_files(manifest)):
            for path in (source / name, source / f"{name}.sha256"):
                if path.is_file():
                    _copy(path, target / path.name)
        names.append(f"{FILES_DIR}/{n}")
    return names


def _manifest_files(manifest: bytes) -> set[str]:
    """The plain file names a manifest's lines give (the verifier checks the rest)."""
    found = set()
    for line in manifest.splitlines():
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            name = json.loads(line).get("file")
            if isinstance(name, str) and name == Path(name).name and not name.startswith("."):
                found.add(name)
    return found


def _copy(source: Path, target: Path) -> None:
    """Copy a capture file (possibly large) and sync it; mode 0600 before any byte."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as out, source.open("rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())


def sums_text(root: Path) -> bytes:
    """``sha256sum`` lines for every file under ``root`` but the list and its signature."""
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name in (SUMS_FILE, SIG_FILE):
            continue
        digest = sha256_of(path)
        lines.append(f"{digest}  {name}\n")
    return "".join(lines).encode("utf-8")
