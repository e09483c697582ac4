"""What every registry command shares: the key options, the registry, the server.

The commands themselves live in ``init.py``, ``warrants.py``, ``agency.py``,
``tap.py``, ``audit.py`` and ``serve.py``, each registered by ``main.py``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mediation.cli.common import Once, add_data_dir, data_dir

if TYPE_CHECKING:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.registry import WarrantRegistry


def add_key_options(parser: argparse.ArgumentParser) -> None:
    """``--key-file FILE`` and ``--passphrase-env VAR``: where the registry key is."""
    parser.add_argument(
        "--key-file",
        metavar="FILE",
        action=Once,
        help="the registry key file (default: $MEDIATION_KEY_FILE, else "
        "~/.config/mediation/registry.key)",
    )
    parser.add_argument(
        "--passphrase-env",
        metavar="VAR",
        action=Once,
        help="for a passphrase registry: the environment variable holding it "
        "(default MEDIATION_PASSPHRASE)",
    )


def subcommand(
    subparsers: argparse._SubParsersAction, name: str, summary: str, func: Any
) -> argparse.ArgumentParser:
    """A subcommand with ``--data-dir`` and the key options."""
    parser = subparsers.add_parser(name, help=summary, description=summary)
    add_data_dir(parser)
    add_key_options(parser)
    parser.set_defaults(func=func)
    return parser


@contextlib.contextmanager
def registry_for(
    args: argparse.Namespace, need: KeyNeed, lock: bool = True
) -> Iterator[WarrantRegistry]:
    """The registry for this command, with the key as ``need`` says; damage is an error."""
    import sqlite3

    from mediation.errors import UsageError
    from mediation.warrants.access import KeyOptions, open_registry
    from mediation.warrants.keys import RegistryKeyError

    options = KeyOptions(args.key_file, args.passphrase_env)
    try:
        with open_registry(data_dir(args), options, need, lock=lock) as registry:
            yield registry
    except RegistryKeyError as exc:
        raise UsageError("registry", f"{exc} (the registry was tampered with or damaged)") from None
    except sqlite3.OperationalError as exc:  # e.g. locked past the timeout, disk full
        raise UsageError("registry", f"SQLite: {exc}") from None


def server_request(args: argparse.Namespace, op: str) -> tuple[dict[str, Any] | None, str | None]:
    """Ask a running server; (response, None), or (None, a line saying why not)."""
    from mediation.server.control import ask

    return ask(data_dir(args), op)


def report_to_server(args: argparse.Namespace, handle: str | None) -> str:
    """Tell a running server to reload; the line saying what it made of ``handle``."""
    from mediation.server.control import reload_report

    return reload_report(data_dir(args), handle)
