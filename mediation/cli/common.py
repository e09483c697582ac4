"""What every subcommand shares: the data-directory option, error output, tables."""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
        action=Once,
        help=f"where stored state lives (default: ${ENV_VAR}, else a per-user default)",
    )


def data_dir(args: argparse.Namespace) -> Path:
    return resolve_data_dir(getattr(args, "data_dir", None))


def fail(message: str, code: int = 2) -> int:
    """Print one error line to stderr and return the exit code."""
    print(f"mediate: error: {message}", file=sys.stderr)
    return code


class Once(argparse.Action):
    """An option meant once: a second occurrence is refused, never silently the last.

    argparse's default ``store`` keeps the last of ``--udp A --udp B``; a
    carrier who meant both would then deliver to one agency address only.
    The refusal is the CLI's one error line, exit 2 (argparse's own errors
    print the usage first). ``hint`` says what to do instead.
    """

    def __init__(self, *args: Any, hint: str = "give it once", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hint = hint

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given = namespace.__dict__.setdefault("_given_once", set())  # defaults are not given
        if self.dest in given:
            raise SystemExit(fail(f"{option_string}: given more than once; {self.hint}"))
        given.add(self.dest)
        setattr(namespace, self.dest, values)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print ``rows`` under ``headers`` in aligned columns; None shows as ``-``."""
    cells = [list(headers)] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


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
