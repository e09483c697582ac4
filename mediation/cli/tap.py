"""`mediate tap register|list|revoke|run`: the taps (routers) allowed to feed the server.

Registered by ``main.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mediation.cli.common import print_table
from mediation.cli.registry import registry_for, report_to_server, server_request, subcommand
from mediation.cli.taprun import add_run


def cmd_tap_register(args: argparse.Namespace) -> int:
    from mediation.cli.common import data_dir
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.authority import SERVER_PLACEHOLDER, ServerAuthority, TapAuthority
    from mediation.warrants.model import utc_now
    from mediation.warrants.operations import register_tap
    from mediation.warrants.validate import parse_host_port, parse_tap_name

    now, name = utc_now(), parse_tap_name(args.name)
    server = SERVER_PLACEHOLDER
    if args.server:
        host, port = parse_host_port(args.server, "--server")
        server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    out = Path(args.out) if args.out else Path(f"{name}.tap")
    with registry_for(args, KeyNeed.REQUIRED) as registry:
        assert registry.key is not None
        authority = TapAuthority.load(data_dir(args) / "ca", registry.key)
        server_ca, _ = ServerAuthority.ensure(data_dir(args) / "ca", registry.key, now)
        credentials = register_tap(registry, authority, name, out, server, now, server_ca.ca_pem)
    print(f"tap {name} registered")
    print(
        f"credentials: {out} (mode 0600; it holds a private key: "
        "copy it to the router, then delete it here)"
    )
    print(f"certificate sha256: {credentials.fingerprint}")
    if server == SERVER_PLACEHOLDER:
        print(
            "server address: not given; edit `server` in the file, "
            "or use --server HOST:PORT next time"
        )
    return 0


def cmd_tap_list(args: argparse.Namespace) -> int:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.model import format_time

    with registry_for(args, KeyNeed.NONE, lock=False) as registry:
        taps = registry.taps()
    response, _ = server_request(args, "status")
    connected = set(response.get("taps_connected", [])) if response else None
    rows = []
    for tap in taps:
        state = "revoked" if tap.revoked else "registered"
        link = (
            "-"
            if connected is None or tap.revoked
            else ("connected" if tap.name in connected else "not connected")
        )
        rows.append([tap.name, state, link, format_time(tap.created), tap.cert_fingerprint[:16]])
    print_table(["NAME", "STATE", "LINK", "CREATED", "CERT-SHA256"], rows)
    return 0


def cmd_tap_revoke(args: argparse.Namespace) -> int:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.model import utc_now
    from mediation.warrants.operations import revoke_tap
    from mediation.warrants.validate import parse_tap_name

    now, name = utc_now(), parse_tap_name(args.name)
    with registry_for(args, KeyNeed.REQUIRED) as registry:
        revoke_tap(registry, name, now)
    print(f"tap {name} revoked: the server refuses its certificate and its UDP key")
    print(report_to_server(args, None))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from mediation.cli import tap_config

    parser = subparsers.add_parser(
        "tap", help="taps: register, list, revoke, run, edit; the seed form"
    )
    # Optional: `mediate tap -i IF -x ...` (the seed's form) has no action.
    sub = parser.add_subparsers(
        dest="tap_command", metavar="ACTION", required=False, action=tap_config.SeedOrAction
    )
    tap_config.register(parser, sub)
    add_run(sub)
    p = subcommand(
        sub, "register", "issue a tap's credentials and write them to a file", cmd_tap_register
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--out", metavar="FILE", help="where to write the credentials (default: ./NAME.tap)"
    )
    p.add_argument(
        "--server", metavar="HOST:PORT", help="the server's tap listener, written into the file"
    )
    subcommand(sub, "list", "list registered taps", cmd_tap_list)
    p = subcommand(sub, "revoke", "revoke a tap: the server refuses it from now on", cmd_tap_revoke)
    p.add_argument("name", metavar="NAME")
