"""What every subcommand shares: the data-directory option and error output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mediation.datadir import ENV_VAR, resolve_data_dir


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
