"""The signed manifest of a warrant's capture files: ``DIR/HANDLE/manifest.jsonl``.

Every capture file the server closes gets one line here, appended and
fsynced after the file itself is on disk. A line is a JSON object::

    {"complete":true,"file":"cmcc-00000000000000000000.pcap","first_seq":0,
     "first_time":"2026-11-23T00:11:00.500000Z","format":"pcap","key_id":"<hex>",
     "last_seq":4710,"last_time":"...","prev":"<hex>","sha256":"<hex>",
     "sig":"<base64>","size":123456,"stream":"cmcc","v":1}

- ``stream`` ``cmii`` or ``cmcc``; ``format`` ``pcap``, ``jsonl`` or ``ber``;
- ``first_seq``/``last_seq``: the log sequence numbers the file covers;
  ``first_time``/``last_time``: their receive (mediation) times, UTC;
- ``complete``: the file holds every record of that range (false: it was
  cut short, e.g. by a crash whose records the log no longer had);
- ``prev``: SHA-256 (hex) of the previous line's bytes, without its
  newline; ``""`` on the first line. Lines form a chain: one removed,
  reordered or inserted breaks it;
- ``key_id``: SHA-256 (hex) of the raw Ed25519 public key of the server's
  log-signing key (as checkpoints name it);
- ``sig``: base64 Ed25519 signature over the line's *canonical JSON
  without* ``sig``: ``json.dumps(fields, sort_keys=True,
  separators=(",", ":"))`` (ASCII). A line as stored is the canonical JSON
  of all its fields, ``sig`` included, then ``\\n``.

:func:`verify_manifest` checks all of it with the public key alone;
:class:`ManifestWriter` is the one way lines are appended.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mediation.durable import fsync_dir
from mediation.log.keys import key_id, verify_signature

MANIFEST = "manifest.jsonl"
VERSION = 1
STREAMS = ("cmii", "cmcc")
FORMATS = ("pcap", "jsonl", "ber")
# A manifest line is a few hundred octets; a longer one is not ours.
MAX_LINE = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# name -> type of every field of a version 1 line (bool is not an int here).
_TYPES: dict[str, type] = {
    "v": int,
    "file": str,
    "stream": str,
    "format": str,
    "size": int,
    "sha256": str,
    "first_seq": int,
    "last_seq": int,
    "first_time": str,
    "last_time": str,
    "complete": bool,
    "prev": str,
    "key_id": str,
    "sig": str,
}


class Signer(Protocol):
    """What signs lines: :class:`mediation.log.LogSigner` (``key_id`` is raw bytes)."""

    key_id: bytes

    def sign(self, message: bytes) -> bytes: ...


class ManifestError(ValueError):
    """A manifest that cannot be appended to (unreadable, or not a manifest)."""


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The bytes a line's signature covers: its fields but ``sig``, sorted, compact, ASCII."""
    unsigned = {k: v for k, v in fields.items() if k != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode("ascii")


def line_digest(line: bytes) -> str:
    """What the next line's ``prev`` holds: SHA-256 hex of ``line`` without its newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def sign_line(signer: Signer, fields: Mapping[str, Any], prev: str) -> bytes:
    """One manifest line (no newline) for ``fields``, chained to ``prev`` and signed.

    Args:
        signer: the server's log signer.
        fields: file, stream, format, size, sha256, first_seq, last_seq,
            first_time, last_time, complete (``v``, ``prev``, ``key_id`` and
            ``sig`` are added here).
        prev: :func:`line_digest` of the previous line, ``""`` for the first.

    Raises:
        ValueError: a field is missing, unknown or of the wrong type.
    """
    entry = {**fields, "v": VERSION, "prev": prev, "key_id": signer.key_id.hex()}
    problem = _shape_problem({**entry, "sig": ""})
    if problem is not None:
        raise ValueError(problem)
    entry["sig"] = base64.b64encode(signer.sign(canonical(entry))).decode("ascii")
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode("ascii")


@dataclasses.dataclass(frozen=True)
class ManifestFault:
    """One thing wrong with a manifest: its line (from 1), the file it names, what."""

    line: int
    file: str | None
    problem: str

    def __str__(self) -> str:
        named = f" ({self.file})" if self.file else ""
        return f"line {self.line}{named}: {self.problem}"


@dataclasses.dataclass(frozen=True)
class ManifestReport:
    """The entries of a manifest (in order, as parsed) and every fault found."""

    entries: tuple[dict[str, Any], ...]
    faults: tuple[ManifestFault, ...]

    @property
    def ok(self) -> bool:
        return not self.faults

    def by_file(self) -> dict[str, dict[str, Any]]:
        """File name -> its entry (the first, if a file were named twice)."""
        out: dict[str, dict[str, Any]] = {}
        for entry in self.entries:
            out.setdefault(entry["file"], entry)
        return out


def verify_manifest(data: bytes, public_key: Ed25519PublicKey) -> ManifestReport:
    """Check every line of a manifest: shape, key id, signature, chain, one entry per file.

    Args:
        data: the manifest file's bytes.
        public_key: the server's log-signing public key.

    Returns:
        The entries that parsed as JSON objects of the right shape (signed
        or not) and the faults, each naming its line and file.
    """
    expected_key = key_id(public_key).hex()
    entries: list[dict[str, Any]] = []
    faults: list[ManifestFault] = []
    seen: set[str] = set()
    prev = ""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        faults.append(ManifestFault(len(lines), None, "last line is cut short (no newline)"))
    for number, line in enumerate(lines, start=1):
        entry, problem = _parse(line)
        name = entry.get("file") if isinstance(entry, dict) else None
        shown = name if isinstance(name, str) and _FILE.fullmatch(name) else None
        if entry is None or problem is not None:
            faults.append(ManifestFault(number, shown, problem or "not a manifest line"))
            prev = line_digest(line)
            continue
        entries.append(entry)
        for fault in _check_entry(entry, line, prev, expected_key, public_key, seen):
            faults.append(ManifestFault(number, shown, fault))
        seen.add(entry["file"])
        prev = line_digest(line)
    return ManifestReport(tuple(entries), tuple(faults))


def _parse(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    if len(line) > MAX_LINE:
        return None, f"longer than {MAX_LINE} octets"
    try:
        entry = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None, "not JSON"
    if not isinstance(entry, dict):
        return None, "not a JSON object"
    return entry, _shape_problem(entry)


def _shape_problem(entry: Mapping[str, Any]) -> str | None:
    """Why ``entry`` is not a version 1 line (None: it is one, unsigned or not)."""
    missing = [k for k in _TYPES if k not in entry]
    if missing:
        return f"missing {', '.join(missing)}"
    extra = sorted(k for k in entry if k not in _TYPES)
    if extra:
        return f"unknown field {extra[0]}"
    for name, kind in _TYPES.items():
        value = entry[name]
        if type(value) is not kind:
            return f"{name}: must be {kind.__name__}"
    checks = (
        (entry["v"] == VERSION, f"v: version {entry['v']} is not known (1)"),
        (_FILE.fullmatch(entry["file"]) is not None, "file: not a plain file name"),
        (entry["stream"] in STREAMS, "stream: must be cmii or cmcc"),
        (entry["format"] in FORMATS, "format: must be pcap, jsonl or ber"),
        (entry["size"] >= 0, "size: negative"),
        (_HEX64.fullmatch(entry["sha256"]) is not None, "sha256: not 64 lower-case hex"),
        (entry["first_seq"] >= 0, "first_seq: negative"),
        (entry["first_seq"] <= entry["last_seq"], "last_seq: before first_seq"),
        (entry["prev"] == "" or _HEX64.fullmatch(entry["prev"]), "prev: not hex"),
        (_HEX64.fullmatch(entry["key_id"]) is not None, "key_id: not 64 lower-case hex"),
    )
    for good, problem in checks:
        if not good:
            return problem
    return None


def _check_entry(
    entry: dict[str, Any],
    line: bytes,
    prev: str,
    expected_key: str,
    public_key: Ed25519PublicKey,
    seen: set[str],
) -> list[str]:
    faults = []
    if line != json.dumps(entry, sort_keys=True, separators=(",", ":")).encode("ascii"):
        faults.append("not in canonical form")
    if entry["key_id"] != expected_key:
        faults.append("signed with another key (key_id)")
    else:
        try:
            signature = base64.b64decode(entry["sig"], validate=True)
        except (binascii.Error, ValueError):
            signature = b""
        if not verify_signature(public_key, signature, canonical(entry)):
            faults.append("signature does not verify")
    if entry["prev"] != prev:
        faults.append("chain broken: prev is not the previous line's SHA-256")
    if entry["file"] in seen:
        faults.append("a second entry for this file")
    return faults


class ManifestWriter:
    """Appends signed lines to one manifest; knows which files it already names.

    Blocking file I/O (small: one line and an fsync per closed file).
    """

    def __init__(self, path: Path, signer: Signer) -> None:
        """Open (or create, mode 0600) ``path``; a torn last line is cut off.

        A torn line is one a crash cut while it was written: it was never
        fsynced whole, so its file is entered again by recovery.

        Raises:
            ManifestError: a line that is not JSON with a ``file`` (the
                manifest is not ours or was altered; nothing is appended).
        """
        self.path = path
        self._signer = signer
        self.files: dict[str, dict[str, Any]] = {}
        self.prev = ""
        self.torn = 0
        self._lock = threading.Lock()
        new = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._fd = fd
        try:
            self._load()
        except BaseException:
            os.close(fd)
            raise
        if new:
            fsync_dir(path.parent)

    def _load(self) -> None:
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1
        if good < len(data):
            self.torn = len(data) - good
            os.truncate(self.path, good)
            os.fsync(self._fd)
        for number, line in enumerate(data[:good].splitlines(), start=1):
            try:
                entry = json.loads(line)
                name = entry["file"]
            except (ValueError, UnicodeDecodeError, TypeError, KeyError):
                problem = f"{self.path.name} line {number}: not a manifest line"
                raise ManifestError(problem) from None
            self.files[str(name)] = entry
            self.prev = line_digest(line)

    def append(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Sign, append and fsync one line; returns the entry as written.

        Raises:
            ManifestError: the file named has an entry already.
            OSError: the write failed (nothing half-written is left to
                chain to: the next open cuts a partial line).
        """
        # One append at a time: files of two streams may close at once,
        # one in a worker thread, and each line chains to the one before.
        with self._lock:
            name = fields["file"]
            if name in self.files:
                raise ManifestError(f"{name}: has a manifest entry already")
            line = sign_line(self._signer, fields, self.prev)
            before = os.fstat(self._fd).st_size
            try:
                if os.write(self._fd, line + b"\n") != len(line) + 1:
                    raise OSError(errno.ENOSPC, "short write")
                os.fsync(self._fd)
            except OSError:
                # No half line for the next one to chain after (a full disk).
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, before)
                raise
            entry = json.loads(line)
            self.files[name] = entry
            self.prev = line_digest(line)
            return entry

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
