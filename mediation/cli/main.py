"""``mediate``: the command line of the mediation server.

Each subcommand lives in its own module with a ``register(subparsers)``
function; handlers import what they need when they run, so ``mediate
--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mediation import __version__
from mediation.cli.common import describe_os_error, fail
from mediation.errors import UsageError

# One module per area; each registers its own subcommands.
COMMAND_MODULES = (
    "mediation.cli.decode",
    "mediation.cli.init",
    "mediation.cli.warrants",
    "mediation.cli.agency",
    "mediation.cli.tap",
    "mediation.cli.audit",
    "mediation.cli.log",
    "mediation.cli.serve",
    "mediation.cli.pki",
    "mediation.cli.receive",
    "mediation.cli.status",
    "mediation.cli.records",
    "mediation.cli.export",
    "mediation.cli.confirm",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediate",
        description="Lawful-intercept mediation (CALEA, ATIS T1.IAS style).",
    )
    parser.add_argument("--version", action="version", version=f"mediate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "func", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        line = _one_line(_unwrap(exc), args)
        if line is None:
            raise
        return fail(line)


def _unwrap(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups, as a trio service raises it."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _one_line(exc: BaseException, args: argparse.Namespace) -> str | None:
    """The line to print for an error a person can fix; None for a bug (a traceback)."""
    if isinstance(exc, UsageError):
        return str(exc)
    if isinstance(exc, OSError):
        return describe_os_error(exc, args)
    return None


if __name__ == "__main__":
    raise SystemExit(main())
