"""What every subcommand shares: the data-directory option and error output."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from mediation.datadir import ENV_VAR, resolve_data_dir, unwritable

# Errors of the file system a person can fix (permissions, a read-only or
# full disk): one line naming the path, not a traceback.
FILE_SYSTEM_ERRNOS = frozenset(
    {
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ENOENT,
        errno.ENOTDIR,
    }
)


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """Give a subcommand the ``--data-dir DIR`` option (or ``MEDIATION_DATA_DIR``)."""
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help=f"where stored state lives (default: ${ENV_VAR}, else a per-user default)",
    )


def data_dir(args: argparse.Namespace) -> Path:
    return resolve_data_dir(getattr(args, "data_dir", None))


def fail(message: str, code: int = 2) -> int:
    """Print one error line to stderr and return the exit code."""
    print(f"mediate: error: {message}", file=sys.stderr)
    return code


def describe_os_error(exc: OSError, args: argparse.Namespace) -> str | None:
    """One line for a file-system error a person can fix, or None (a bug: let it show).

    A path inside the command's data directory is reported as the data
    directory being unwritable, with the fix; another path by itself.
    """
    if exc.errno not in FILE_SYSTEM_ERRNOS or exc.filename is None:
        return None
    path = Path(exc.filename)
    directory = data_dir(args) if hasattr(args, "data_dir") else None
    if directory is not None and (path == directory or directory in path.parents):
        if exc.errno == errno.ENOENT and path != directory and directory.is_dir():
            return None  # something inside went missing: not the operator's to fix
        return f"--data-dir: {unwritable(directory, exc)}"
    if exc.errno == errno.ENOENT:
        return None
    return f"{path}: {exc.strerror}"
