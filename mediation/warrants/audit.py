"""The audit trail: who read or changed case data, when, and which handle.

One JSON object per line in ``DATA_DIR/audit/audit.log``, opened only for
appending. Each entry carries ``seq`` (1, 2, ...), the previous entry's
hash and its own: SHA-256 over its canonical JSON (sorted keys, no spaces,
ASCII) without the ``hash`` field. Editing an entry breaks its hash;
deleting or inserting one breaks ``seq`` and ``prev``.

A chain alone cannot notice its own tail being cut off, so the registry
(a separate file) keeps an *anchor*: the entry count and the last hash,
with an HMAC under the registry key. Cutting the tail, or rewriting the
whole chain, then disagrees with the anchor; rewriting both consistently
needs the registry key. The plaintext holds handles only, never case data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import hashlib
import json
import os
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
FIELDS = (
    "seq",
    "time",
    "user",
    "uid",
    "sudo_user",
    "command",
    "handle",
    "outcome",
    "detail",
    "prev",
)


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes an entry's hash covers: its JSON without ``hash``, canonically encoded."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


@dataclasses.dataclass(frozen=True)
class Anchor:
    """What the registry remembers of the trail: how many entries, and the last hash."""

    count: int = 0
    head: str = GENESIS

    def message(self) -> bytes:
        return f"{self.count}:{self.head}".encode("ascii")


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """What a command wants recorded. ``detail`` holds counts and field names, never values."""

    command: str
    handle: str | None = None
    outcome: str = "ok"
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    entries: int
    problem: str | None = None  # None: the trail is intact
    bad_entry: int | None = None


def who() -> dict[str, Any]:
    """The person behind a command: login name and uid, and the sudo caller if any."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return {"user": user, "uid": os.getuid(), "sudo_user": os.environ.get("SUDO_USER")}


class AuditTrail:
    """The append-only audit file. Appends are serialised by the registry's lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def build(self, event: AuditEvent, anchor: Anchor, now: dt.datetime) -> dict[str, Any]:
        """The next entry after ``anchor``, hashed, not yet written."""
        entry: dict[str, Any] = {
            "seq": anchor.count + 1,
            "time": now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            **who(),
            "command": event.command,
            "handle": event.handle,
            "outcome": event.outcome,
            "detail": event.detail,
            "prev": anchor.head,
        }
        entry["hash"] = entry_hash(entry)
        return entry

    def append(self, entry: dict[str, Any]) -> Anchor:
        """Write ``entry`` durably (O_APPEND, fsync) and return the new anchor."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return Anchor(entry["seq"], entry["hash"])

    def entries(self) -> list[dict[str, Any]]:
        """Every entry that parses, in order (for ``audit show``; ``verify`` is stricter)."""
        out = []
        for line in self._lines():
            try:
                out.append(json.loads(line))
            except ValueError:
                break
        return out

    def _lines(self) -> list[bytes]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return lines

    def verify(self, anchor: Anchor | None) -> VerifyResult:
        """Check every entry's hash, sequence and link, then the tail against ``anchor``."""
        lines = self._lines()
        data_ends_cleanly = not lines or self.path.read_bytes().endswith(b"\n")
        head = GENESIS
        for index, line in enumerate(lines, start=1):
            problem = _check_entry(line, index, head)
            if problem is None and index == len(lines) and not data_ends_cleanly:
                problem = "incomplete last line (a torn write, or the file was edited)"
            if problem is not None:
                return VerifyResult(index - 1, f"entry {index}: {problem}", index)
            head = json.loads(line)["hash"]
        count = len(lines)
        if anchor is None:
            return VerifyResult(count)
        return _check_anchor(count, head, anchor)


def _check_entry(line: bytes, index: int, prev: str) -> str | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return "not valid JSON (the entry was edited or damaged)"
    if not isinstance(entry, dict) or set(entry) != {*FIELDS, "hash"}:
        return "fields are not the audit fields (the entry was edited)"
    if entry["seq"] != index:
        seq = entry["seq"]
        return f"sequence number is {seq}, expected {index} (an entry was deleted or inserted)"
    if entry["prev"] != prev:
        return "does not link to the entry before it (an entry was deleted, inserted or edited)"
    if entry_hash(entry) != entry["hash"]:
        return "hash does not match its contents (the entry was edited)"
    return None


def _check_anchor(count: int, head: str, anchor: Anchor) -> VerifyResult:
    if count < anchor.count:
        first = count + 1
        return VerifyResult(
            count,
            f"entry {first}: missing; the trail ends at entry {count} but the registry "
            f"recorded {anchor.count} (entries {first} to {anchor.count} were deleted)",
            first,
        )
    if count > anchor.count:
        first = anchor.count + 1
        return VerifyResult(
            count,
            f"entry {first}: not anchored in the registry (appended by hand, or a command "
            f"was interrupted between writing the trail and the registry)",
            first,
        )
    if head != anchor.head:
        return VerifyResult(
            count,
            f"entry {count}: differs from the registry's anchor (the trail was rewritten)",
            count,
        )
    return VerifyResult(count)
