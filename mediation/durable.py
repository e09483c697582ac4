"""Durable file writes: the one way this project puts a file on disk.

Two shapes, both durable when they return (the data and the directory
entry are fsynced, so a power cut after the call keeps the file):

* :func:`write_atomic` replaces a file: a reader sees the old content or the
  new, never half, and a crash leaves at worst a stray ``.NAME.*.tmp`` that
  the next write ignores.
* :func:`write_new` creates a file that must not exist yet (keys,
  certificates, credentials): it refuses to overwrite, and the file appears
  whole or not at all, so nothing is ever half-written or half-read.
* :func:`create_open` starts a file that is then appended to (log and
  spool segments): created exclusively, its header durable with its
  directory entry, the descriptor left open for the writer.
* :func:`replacing` is :func:`write_atomic` for output too large to hold
  in memory: the caller streams it into a temporary file, which replaces
  the target only if the whole block succeeds.
* :func:`write_synced` appends to a file opened so (a log segment, the tap
  journal): every byte written and durable on return, in one system call
  where the kernel can (``pwritev2`` with ``RWF_DSYNC``).

The mode is set with ``fchmod`` before any byte is written, so a secret is
never readable by others, not even for an instant, whatever the umask.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
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


# pwritev2's per-write O_DSYNC (Linux 4.7+): the write and its fdatasync in one
# system call. A writer thread re-takes the GIL after every call, and at light
# load each of those is a wake-up and a hand-over with the event loop
# (docs/architecture.md); 0: not offered here, write then fdatasync.
_DSYNC = getattr(os, "RWF_DSYNC", 0)


def write_synced(fd: int, views: list[memoryview], offset: int) -> None:
    """Write every byte of ``views`` at ``offset`` and make them durable (fdatasync's promise).

    Args:
        fd: a file open for writing.
        views: the bytes, in order (the list is consumed).
        offset: where in the file; -1: at the file's position (its end for
            ``O_APPEND``).

    Raises:
        OSError: the write or the sync failed (ENOSPC, EIO, ...); some bytes may
            be written, none promised durable.
    """
    write_views(fd, views, offset, synced=True)


def write_views(fd: int, views: list[memoryview], offset: int, *, synced: bool = False) -> None:
    """Write every byte of ``views`` at ``offset`` (-1: the file's position), a short
    write continued; with ``synced``, as :func:`write_synced` (the list is consumed).

    Without ``synced`` the bytes are in the page cache only (the tap's spool
    syncs them later, several records at once: mediation/tap/spool.py).
    """
    global _DSYNC
    flags = _DSYNC if synced else 0
    while views:
        try:
            n = os.pwritev(fd, views, offset, flags) if flags else os.pwritev(fd, views, offset)
        except OSError as exc:
            if flags and exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                _DSYNC = flags = 0  # the file system lacks it: the two-call way
                continue
            raise
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if offset >= 0:
            offset += n
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if n:
            views[0] = views[0][n:]
    if synced and not flags:
        os.fdatasync(fd)


def truncate_synced(path: Path, size: int, fd: int | None = None) -> None:
    """Cut ``path`` to ``size`` octets, durably (fdatasync: the size is data's metadata).

    Args:
        fd: the file already open for writing (kept open), or None: opened and closed here.
    """
    own = fd is None
    if own:
        fd = os.open(path, os.O_WRONLY)
    assert fd is not None
    try:
        os.ftruncate(fd, size)
        os.fdatasync(fd)
    finally:
        if own:
            os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, data: bytes | bytearray | memoryview, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory.

    Raises:
        OSError: the write failed; ``path`` is unchanged and no temp file is left.
    """
    with replacing(path, mode) as temp:
        fd = os.open(temp, os.O_WRONLY | os.O_CLOEXEC)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)


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


def create_open(path: Path, header: bytes, mode: int = 0o600, *, append: bool = False) -> int:
    """Create ``path`` holding ``header``, durable, and return it open for writing.

    Args:
        path: the new file; it must not exist.
        header: its first bytes, written and fsynced with the directory entry.
        mode: the file's permissions (set before any byte is written).
        append: open with ``O_APPEND`` (never with positioned writes).

    Returns:
        The open descriptor, positioned after the header; the caller closes it.

    Raises:
        FileExistsError: ``path`` exists (it is left as it was).
        OSError: the write failed; nothing is left behind.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | (os.O_APPEND if append else 0)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)
        _write_all(fd, header)
        os.fsync(fd)
        fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return fd


@contextlib.contextmanager
def replacing(path: Path, mode: int = 0o600) -> Iterator[Path]:
    """Replace ``path`` with what the caller writes to the yielded temporary file.

    The temporary file (``.NAME.PID.tmp`` next to ``path``) exists, empty and
    with ``mode``, when the block starts; the caller writes it any way it
    likes and closes it. When the block ends normally, the file is fsynced,
    renamed over ``path``, and the directory fsynced.

    Args:
        path: the file to replace (or create).
        mode: its permission bits, set before any byte is written.

    Yields:
        The temporary file's path.

    Raises:
        OSError: creating, syncing or renaming failed. On any exception,
            the block's own included, ``path`` is left as it was and the
            temporary file is removed.
    """
    path = Path(path)
    temp = _temp_name(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)  # a stray of an earlier process that had this pid
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    try:
        yield temp
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)
