"""The data directory convention.

Every command that touches stored state takes ``--data-dir DIR``; without
it, the ``MEDIATION_DATA_DIR`` environment variable; without that, the
default below. Nothing inside it is ever named after a case identity or a
target: only opaque warrant handles.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

ENV_VAR = "MEDIATION_DATA_DIR"


def default_data_dir() -> Path:
    """``/var/lib/mediation`` for root (a server), else the XDG data home."""
    if os.geteuid() == 0:
        return Path("/var/lib/mediation")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "mediation"


def resolve_data_dir(arg: str | os.PathLike[str] | None) -> Path:
    """The data directory chosen by the flag, the environment or the default."""
    if arg:
        return Path(arg)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return default_data_dir()


def unwritable(data_dir: Path, exc: OSError) -> str:
    """One line for a data directory a command cannot write: which, why, and the fix."""
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return (
            f"{data_dir} cannot be made or reached ({exc.strerror}); check the path, "
            "or choose another --data-dir"
        )
    if exc.errno == errno.EROFS:
        fix = "remount it read-write or choose another --data-dir"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        fix = "run as its owner, fix its permissions, or choose another --data-dir"
    else:
        fix = "check the disk and the directory"
    return f"{data_dir} is not writable ({exc.strerror}); {fix}"
