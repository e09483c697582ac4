"""`mediate serve`: run the mediation server in the foreground.

For now it keeps the warrant table current and answers the control socket
(``DATA_DIR/run/control.sock``); ingest and delivery options will join here.
Logs go to stderr and name warrants by handle only.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mediation.cli.warrants import registry_for, subcommand


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from mediation.cli.common import data_dir
    from mediation.errors import UsageError
    from mediation.server.app import MediationServer
    from mediation.server.control import ControlError
    from mediation.warrants.access import KeyNeed

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with registry_for(args, KeyNeed.REQUIRED, lock=False) as registry:
        key = registry.key
    assert key is not None
    server = MediationServer(data_dir(args), key)
    try:
        trio.run(server.run)
    except ControlError as exc:
        raise UsageError("serve", str(exc)) from None
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subcommand(
        subparsers, "serve", "run the mediation server (foreground; SIGTERM stops it)", cmd_serve
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
