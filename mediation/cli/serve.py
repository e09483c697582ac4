"""`mediate serve`: run the mediation server in the foreground.

It keeps the warrant table current, stores every PDU in the evidence log,
delivers each warrant's streams to its agency's endpoints (UDP and TLS),
answers retrieval and the control socket (``DATA_DIR/run/control.sock``).
Configuration: ``--config FILE`` (TOML, every key optional; see
``mediation/server/config.py`` and docs/operator.md), else
``$MEDIATION_CONFIG``, else the defaults. Logs go to stderr and name
warrants by handle only; on a terminal a status line is redrawn each second.

One server per data directory (``DATA_DIR/server.lock``). SIGTERM or
SIGINT stops it cleanly (final checkpoint, socket removed); SIGHUP reloads
the registry and the configuration's reloadable keys.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mediation.cli.registry import registry_for, subcommand

if TYPE_CHECKING:
    from mediation.server.status import StatusReporter

CONFIG_ENV = "MEDIATION_CONFIG"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _config_path(args: argparse.Namespace) -> Path | None:
    if args.config:
        return Path(args.config)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else None


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from mediation.cli.common import data_dir
    from mediation.datadir import ENV_VAR
    from mediation.errors import UsageError
    from mediation.server.app import MediationServer
    from mediation.server.config_file import load_config
    from mediation.server.control import ControlError
    from mediation.warrants.access import KeyNeed

    path = _config_path(args)
    config = load_config(path)
    if config.data_dir is not None and not args.data_dir and not os.environ.get(ENV_VAR):
        args.data_dir = str(config.data_dir)  # the flag and the environment win over the file
    tty = sys.stderr.isatty()
    holder: list[MediationServer] = []
    _configure_logging(args.verbose, tty, lambda: holder[0].reporter if holder else None)
    with registry_for(args, KeyNeed.REQUIRED, lock=False) as registry:
        key = registry.key
    assert key is not None
    loader = functools.partial(load_config, path)  # SIGHUP re-reads the same file
    server = MediationServer(
        data_dir(args), key, config=config, tty=tty, config_loader=loader, settle_heap=True
    )
    holder.append(server)
    # Until the server's own handler is in place (and after it is gone), a
    # SIGHUP must not kill the process: its default action would.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        trio.run(server.run)
    except ControlError as exc:
        raise UsageError("serve", str(exc)) from None
    finally:
        signal.signal(signal.SIGHUP, previous)
    return 0


def _configure_logging(
    verbose: bool, tty: bool, reporter: Callable[[], StatusReporter | None]
) -> None:
    """Plain lines on stderr; on a terminal, lines that do not collide with the status line."""
    from mediation.server.status import StatusLineHandler

    handler: logging.Handler = (
        StatusLineHandler(reporter, sys.stderr) if tty else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subcommand(
        subparsers,
        "serve",
        "run the mediation server (foreground; SIGTERM stops it, SIGHUP reloads)",
        cmd_serve,
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration (default: ${CONFIG_ENV}, else built-in defaults)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
