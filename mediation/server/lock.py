"""One server per data directory: an ``flock`` held for the server's life.

``DATA_DIR/server.lock`` (mode 0600) is locked ``LOCK_EX | LOCK_NB`` before
the server touches anything else and holds the running server's pid, so a
second ``mediate serve`` on the same directory is refused by name and pid,
whether or not the first one's control socket file still exists. The
kernel drops the lock when the process dies, however it dies (SIGKILL
too), so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mediation.datadir import unwritable
from mediation.errors import UsageError

LOCK_FILE = "server.lock"


class ServerLock:
    """The held lock of one data directory; :meth:`release` (or exit) lets go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> ServerLock:
        """Lock ``data_dir`` for this process and write our pid into the lock file.

        Raises:
            UsageError: another server holds the lock (the message names the
                directory and its pid), or the directory is missing or not
                writable (the message names it and the fix).
        """
        path = data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise UsageError("--data-dir", unwritable(data_dir, exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise UsageError(
                "serve",
                f"another server is running on {data_dir} (pid {pid}); stop it first",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk, say
            os.close(fd)
            raise UsageError("--data-dir", unwritable(data_dir, exc)) from None
        return cls(path, fd)

    def release(self) -> None:
        """Let go of the lock (the file stays: removing it would race a new server)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ServerLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"
