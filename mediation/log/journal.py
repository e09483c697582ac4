"""Small append-only JSON-lines journals beside a stream's segments.

``retention.jsonl`` records every segment retention removed (signed, so a
verifier can tell lawful removal from deletion); ``recovery.jsonl`` records
every torn tail recovery cut. Each line is written and fsynced before the
act it records.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path

RETENTION = "retention.jsonl"
RECOVERY = "recovery.jsonl"


def append_entry(path: Path, entry: dict) -> None:
    """Append one JSON line to ``path`` and make it durable.

    Raises:
        OSError: the journal cannot be written.
    """
    line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_entries(path: Path) -> list[dict]:
    """Every complete line of a journal (a last line cut by a crash is skipped).

    Raises:
        ValueError: a complete line is not a JSON object.
    """
    entries: list[dict] = []
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text("ascii")
        for number, line in enumerate(text.split("\n")[:-1], 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path.name} line {number}: not JSON") from None
            if not isinstance(entry, dict):
                raise ValueError(f"{path.name} line {number}: not an object")
            entries.append(entry)
    return entries


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
