"""Durable file writes: the one way this project puts a file on disk.

Two shapes, both durable when they return (the data and the directory
entry are fsynced, so a power cut after the call keeps the file):

* :func:`write_atomic` replaces a file: a reader sees the old content or the
  new, never half, and a crash leaves at worst a stray ``.NAME.*.tmp`` that
  the next write ignores.
* :func:`write_new` creates a file that must not exist yet (keys,
  certificates, credentials): it refuses to overwrite, and the file appears
  whole or not at all, so nothing is ever half-written or half-read.

The mode is set with ``fchmod`` before any byte is written, so a secret is
never readable by others, not even for an instant, whatever the umask.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (new, renamed or removed files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_atomic(path: Path, data: bytes | bytearray | memoryview, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory.

    Raises:
        OSError: the write failed; ``path`` is unchanged and no temp file is left.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.close(fd)
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def write_new(path: Path, data: bytes | bytearray | memoryview, mode: int = 0o600) -> None:
    """Create ``path`` holding ``data``; never overwrites an existing file.

    The file appears whole or not at all: it is written and fsynced under a
    temporary name, then hard-linked to ``path`` (which fails if ``path``
    exists), so a process racing to create the same file never reads half
    of it.

    Raises:
        FileExistsError: ``path`` exists (it is left as it was).
        OSError: the write failed; nothing is left behind.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    fsync_dir(path.parent)
