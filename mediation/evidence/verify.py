"""``mediate verify``: check an export bundle with nothing but its public key.

What is checked, and how a change shows:

- every file against ``SHA256SUMS`` (altered, missing, added), and
  ``SHA256SUMS.sig`` against the key: a list rebuilt after an edit fails;
- the key against ``--key`` (the agency's own trusted copy), if given;
- the records (``HANDLE/cmii.raw``, ``cmcc.raw``) against the signed
  checkpoints, by ``mediation.lea.verify`` (the agency's own check): an
  edited record breaks the chain to the next checkpoint; their order
  (strictly rising sequence numbers) and their coverage (what
  ``bundle.json`` says was exported, every record proven);
- the derived files (pcap, JSON lines, notices, checkpoints.txt, the
  ``.sha256`` lines) by rebuilding them from the verified records;
- each audit entry's own hash; each capture-file manifest line's
  signature, link and file (``files/``).

The verdict: complete (exit 0), gaps (3: sequence ranges not held, and
why), tampered (1: naming the file and the record). As ``mediate log
verify``: 1 is a fault, 3 sound but not everything there, 2 usage.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mediation import pdu
from mediation.evidence import export as X
from mediation.evidence.derived import compare_derived
from mediation.evidence.manifest import MANIFEST, verify_manifest
from mediation.lea import rawfile
from mediation.lea.files import sha256_of
from mediation.lea.outputs import raw_name
from mediation.lea.outputs import safe_handle as _safe
from mediation.lea.verify import VerifyError, check_case, check_output
from mediation.log import format as F
from mediation.log.errors import LogError
from mediation.log.keys import load_public_key, raw_public, verify_signature
from mediation.log.verify import verify_stream
from mediation.pdu import StreamId
from mediation.warrants.audit import entry_hash

EXIT_COMPLETE, EXIT_TAMPERED, EXIT_GAPS = 0, 1, 3
# Bundle metadata (bundle.json, SHA256SUMS, audit.jsonl, *.sha256, the key) is read
# whole; an export writes far less. A larger one is refused, not loaded.
MAX_META = 64 << 20


class TooLarge(ValueError):
    """A metadata file of the bundle is larger than an export writes."""


def _meta(path: Path) -> bytes:
    """A bundle metadata file's bytes, if it is of a size an export writes.

    Raises:
        OSError: it cannot be read. TooLarge: over ``MAX_META``.
    """
    if path.stat().st_size > MAX_META:
        raise TooLarge(f"larger than {MAX_META >> 20} MiB: not what an export writes")
    return path.read_bytes()


@dataclasses.dataclass
class BundleReport:
    """Verdicts per file and stream, the faults and the gaps."""

    files: dict[str, str | None] = dataclasses.field(default_factory=dict)  # None: ok
    streams: list[str] = dataclasses.field(default_factory=list)
    faults: list[str] = dataclasses.field(default_factory=list)
    gaps: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def fault(self, name: str, problem: str) -> None:
        """``name`` (a file of the bundle) is not what was exported: ``problem`` says how."""
        if self.files.get(name) is None:
            self.files[name] = problem
        self.faults.append(f"{name}: {problem}")

    @property
    def status(self) -> int:
        if self.faults:
            return EXIT_TAMPERED
        return EXIT_GAPS if self.gaps else EXIT_COMPLETE

    def lines(self) -> list[str]:
        """What ``mediate verify`` prints: files, streams, notes, then the summary."""
        out = [f"{'ok' if why is None else 'TAMPERED'}  {name}" for name, why in self.files.items()]
        out += self.streams + self.notes
        if self.faults:
            out += [f"TAMPERED: {f}" for f in self.faults]
        elif self.gaps:
            out += [f"GAPS: {g}" for g in self.gaps]
        else:
            out.append("COMPLETE: every file, signature and chain link checked; no gaps")
        return out


def verify_bundle(root: Path, trusted: Ed25519PublicKey | None) -> BundleReport:
    """Check the bundle at ``root``; with ``trusted``, against that key only.

    A bundle.json that does not parse is a fault like any other edit: the
    hashes and signature are still checked and reported.
    """
    report = BundleReport()
    links = sorted(p for p in root.rglob("*") if p.is_symlink())
    for link in links:
        report.fault(link.relative_to(root).as_posix(), "a symbolic link (an export holds none)")
    if links:
        return report  # a link may point anywhere (a device that never ends): read nothing
    public = _key(root, trusted, report)
    _sums(root, public, report)
    parsed = _summary(root, report)
    if parsed is None:
        return report
    handle, spans = parsed
    if public is not None:
        _records(root, handle, spans, public, report)
        _segments(root, handle, spans, public, report)
        _captures(root, public, report)
    _derived(root / handle, handle, report)
    _audit(root, handle, report)
    for name, span in sorted(spans.items()):
        for gap in span["gaps"]:
            report.gaps.append(f"{handle}/{name} {gap['first']}..{gap['last']}: {gap['why']}")
    return report


def _summary(root: Path, report: BundleReport) -> tuple[str, dict[str, dict]] | None:
    """The handle and per-stream spans of bundle.json; None (and a fault) if malformed."""
    try:
        summary = json.loads(_meta(root / X.BUNDLE_FILE))
        handle, spans = summary["handle"], summary["streams"]
        if not isinstance(handle, str) or not _safe(handle):
            raise ValueError("handle")
        for name, span in spans.items():
            first, last = span["first"], span["last"]
            if name not in F.DIR_KINDS or (first is None) != (last is None):
                raise ValueError(name)
            if first is not None and not (type(first) is int and type(last) is int):
                raise ValueError(name)
            for gap in span["gaps"]:
                if not isinstance(gap, dict) or not {"first", "last", "why"} <= gap.keys():
                    raise ValueError(name)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        report.fault(X.BUNDLE_FILE, "not a valid summary (edited or damaged)")
        return None
    return handle, spans


def _key(
    root: Path, trusted: Ed25519PublicKey | None, report: BundleReport
) -> Ed25519PublicKey | None:
    try:
        if (root / X.KEY_FILE).stat().st_size > 4096:  # a PEM public key is ~113 octets
            raise LogError(f"{X.KEY_FILE}: too large for a public key")
        ours = load_public_key(root / X.KEY_FILE)
    except (LogError, OSError) as exc:
        report.fault(X.KEY_FILE, str(exc) if isinstance(exc, LogError) else "missing")
        return trusted
    if trusted is None:
        report.notes.append(
            f"note: the key is the bundle's own ({X.KEY_FILE}); compare it with your trusted "
            "copy, or give that copy with --key"
        )
        return ours
    if raw_public(ours) != raw_public(trusted):
        report.fault(X.KEY_FILE, "not the trusted key given with --key (replaced)")
    return trusted


def _sums(root: Path, public: Ed25519PublicKey | None, report: BundleReport) -> None:
    """Every file against SHA256SUMS, and its signature."""
    try:
        data = _meta(root / X.SUMS_FILE)
    except (OSError, TooLarge) as exc:
        report.fault(X.SUMS_FILE, str(exc) if isinstance(exc, TooLarge) else "missing")
        data = b""
    listed: dict[str, str] = {}
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            report.fault(X.SUMS_FILE, f"line {n} is not a sha256sum line")
            continue
        listed[name] = digest
    files = (p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    present = {p.relative_to(root).as_posix() for p in files} - {X.SUMS_FILE, X.SIG_FILE}
    for name in sorted(present | set(listed)):
        if name not in listed:
            report.fault(name, "not listed in SHA256SUMS (added)")
        elif name not in present:
            report.fault(name, "missing (listed in SHA256SUMS)")
        elif sha256_of(root / name) != listed[name]:
            report.fault(name, "SHA-256 differs from SHA256SUMS (altered)")
        else:
            report.files.setdefault(name, None)
    try:
        signature = _meta(root / X.SIG_FILE)
    except (OSError, TooLarge):
        report.fault(X.SIG_FILE, "missing")
        return
    if public is not None and data and not verify_signature(public, signature, data):
        report.fault(X.SIG_FILE, "does not verify: SHA256SUMS altered, or signed by another key")
    else:
        report.files.setdefault(X.SIG_FILE, None)


def _records(
    root: Path, handle: str, spans: dict, public: Ed25519PublicKey, report: BundleReport
) -> None:
    """The raw records: chain against the checkpoints, order, coverage."""
    case = root / handle
    try:
        checks = check_case(case, public) if case.is_dir() else []
    except VerifyError as exc:
        report.fault(f"{handle}", str(exc))
        return
    found = {F.STREAM_DIRS[c.stream.kind]: c for c in checks}
    for name, span in sorted(spans.items()):
        raw = f"{handle}/{raw_name(F.DIR_KINDS[name])}"
        check = found.get(name)
        if span.get("first") is None:
            continue
        if check is None:
            report.fault(raw, "missing: no records of this stream")
            continue
        report.streams.append(check.line())
        if check.fault is not None:
            report.fault(raw, check.fault)
            continue
        _order(root / raw, raw, report)
        first, last = span["first"], span["last"]
        if (check.first, check.last, check.records) != (first, last, last - first + 1):
            held = f"{check.first}..{check.last} ({check.records} records)"
            report.fault(raw, f"holds {held}, bundle.json says {first}..{last}: records missing")
        elif any(end >= first for _start, end in check.uncheckable) or check.after_last:
            report.fault(raw, "not every record is proven by a signed checkpoint")


def _segments(
    root: Path, handle: str, spans: dict, public: Ed25519PublicKey, report: BundleReport
) -> None:
    """The decrypted log segments: the log's own check (frames, chain, signatures), anchored."""
    for name, span in sorted(spans.items()):
        if span["first"] is None:
            continue
        where = f"{X.LOG_DIR}/{handle}/{name}"
        directory = root / where
        if not directory.is_dir():
            report.fault(where, "missing: no log segment of this stream")
            continue
        try:
            result = verify_stream(
                directory, public, StreamId(handle, F.DIR_KINDS[name]), None, True
            )
        except (ValueError, OSError) as exc:
            report.fault(where, str(exc))
            continue
        if result.fault is not None:
            segment = f"{where}/{result.fault.segment}" if result.fault.segment else where
            report.fault(segment, str(result.fault))
        elif (result.first_seq, result.last_seq, result.unsigned) != (
            span["first"],
            span["last"],
            0,
        ):
            held = f"{result.first_seq}..{result.last_seq}, {result.unsigned} unsigned"
            report.fault(where, f"holds {held}; bundle.json says {span['first']}..{span['last']}")


def _order(path: Path, name: str, report: BundleReport) -> None:
    messages, torn = rawfile.scan(path)
    if torn:
        report.fault(name, f"ends in a cut-off record ({torn} octets: truncated)")
    seqs = [m.sequence for m in messages if m.sequence is not None]
    for before, after in itertools.pairwise(seqs):
        if after <= before:
            report.fault(name, f"record {after} comes after {before} (reordered or duplicated)")
            return


def _derived(case: Path, handle: str, report: BundleReport) -> None:
    """The views (pcap, JSON lines, notices, checkpoints.txt) and the .sha256 lines."""
    if not case.is_dir():
        return
    try:
        for name, problem in compare_derived(case, handle):
            report.fault(f"{handle}/{name}", problem)
    except (rawfile.RawFileError, pdu.PDUError, ValueError) as exc:
        report.notes.append(f"note: derived files not rebuilt: {exc}")
    for sums in sorted(case.glob("*.sha256")):
        try:
            digest, _sep, name = _meta(sums).decode("utf-8", "replace").strip().partition("  ")
        except TooLarge as exc:
            report.fault(f"{handle}/{sums.name}", str(exc))
            continue
        target = case / name
        if target.is_file() and sha256_of(target) != digest:
            report.fault(f"{handle}/{sums.name}", f"does not match {name}")


def _audit(root: Path, handle: str, report: BundleReport) -> None:
    path = root / X.AUDIT_FILE
    if not path.is_file():
        return
    try:
        data = _meta(path)
    except TooLarge as exc:
        report.fault(X.AUDIT_FILE, str(exc))
        return
    for n, line in enumerate(data.splitlines(), start=1):
        try:
            entry = json.loads(line)
            ok = entry_hash(entry) == entry["hash"] and entry.get("handle") == handle
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            report.fault(X.AUDIT_FILE, f"entry on line {n} does not match its hash (edited)")
            return


def _captures(root: Path, public: Ed25519PublicKey, report: BundleReport) -> None:
    files = root / X.FILES_DIR
    if not files.is_dir():
        return
    for directory in sorted(p for p in files.iterdir() if p.is_dir()):
        for name, problem in check_manifest(directory, public):
            report.fault(f"{X.FILES_DIR}/{directory.name}/{name}", problem)


def check_manifest(directory: Path, public: Ed25519PublicKey) -> list[tuple[str, str]]:
    """A files endpoint's directory: every manifest line, and each file it names.

    Returns:
        ``(file name, problem)`` for everything wrong; empty: all sound.
    """
    path = directory / MANIFEST
    if not path.is_file():
        return [(MANIFEST, "missing")]
    try:
        manifest = verify_manifest(_meta(path), public)
    except TooLarge as exc:
        return [(MANIFEST, str(exc))]
    out = [(MANIFEST, str(fault)) for fault in manifest.faults]
    named = manifest.by_file()
    for name, entry in sorted(named.items()):
        target = directory / name
        if not target.is_file():
            out.append((name, "missing (named in the manifest)"))
            continue
        if target.stat().st_size != entry["size"] or sha256_of(target) != entry["sha256"]:
            out.append((name, "size or SHA-256 differs from its signed manifest line (altered)"))
    for other in sorted(p.name for p in directory.iterdir() if p.is_file()):
        if other.startswith(".") and other.endswith(".part"):
            continue  # being written by the server: it gets its line when it is closed
        if other != MANIFEST and not other.endswith(".sha256") and other not in named:
            out.append((other, "not in the manifest (added, or still being written)"))
    return out


def verify_path(path: Path, trusted: Ed25519PublicKey | None) -> tuple[list[str], int]:
    """Check a bundle, a receiver's output directory or a files endpoint's directory.

    Returns:
        The lines to print and the exit status.

    Raises:
        VerifyError: nothing checkable there, or a directory that needs
            ``trusted`` (it holds no key of its own) without it.
    """
    if (path / X.BUNDLE_FILE).is_file():
        report = verify_bundle(path, trusted)
        return report.lines(), report.status
    if trusted is None:
        raise VerifyError(f"{path}: not a bundle, so it holds no key: give --key PEM")
    if (path / "manifest.jsonl").is_file():
        report = BundleReport()
        for name, problem in check_manifest(path, trusted):
            report.fault(name, problem)
        return report.lines(), report.status
    checks = check_output(path, trusted)
    lines = [c.line() for c in checks]
    if not all(c.ok for c in checks):
        return lines, EXIT_TAMPERED
    partial = any(c.uncheckable or c.after_last for c in checks)
    return lines, EXIT_GAPS if partial else EXIT_COMPLETE
