"""`mediate agency add|list|show|remove`: where an agency receives its streams.

Registered by :func:`mediation.cli.warrants.register`.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from mediation.cli.warrants import print_table, registry_for, subcommand

if TYPE_CHECKING:
    from mediation.warrants.model import Endpoint


def _endpoint(args: argparse.Namespace) -> tuple[Endpoint, str]:
    """The one endpoint described by --udp or --tls (with --ca or --fingerprint), and its field."""
    from mediation.errors import UsageError
    from mediation.warrants.model import Endpoint
    from mediation.warrants.validate import (
        parse_fingerprint,
        parse_host_port,
        parse_streams,
        read_ca_file,
    )

    if bool(args.udp) == bool(args.tls):
        raise UsageError(
            "--udp/--tls", "give exactly one endpoint: --udp HOST:PORT or --tls HOST:PORT"
        )
    streams = parse_streams(args.streams)
    if args.udp:
        if args.ca or args.fingerprint:
            raise UsageError("--ca" if args.ca else "--fingerprint", "only for --tls endpoints")
        host, port = parse_host_port(args.udp, "--udp")
        return Endpoint("udp", host, port, streams), "--udp"
    host, port = parse_host_port(args.tls, "--tls")
    if bool(args.ca) == bool(args.fingerprint):
        raise UsageError(
            "--tls", "needs the agency's CA (--ca FILE) or its certificate's --fingerprint SHA256"
        )
    if args.ca:
        return Endpoint("tls", host, port, streams, ca_pem=read_ca_file(args.ca)), "--tls"
    return Endpoint(
        "tls", host, port, streams, fingerprint=parse_fingerprint(args.fingerprint)
    ), "--tls"


def cmd_agency_add(args: argparse.Namespace) -> int:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.model import utc_now
    from mediation.warrants.operations import add_agency_endpoint
    from mediation.warrants.validate import parse_agency_name

    now, name = utc_now(), parse_agency_name(args.name)
    endpoint, field = _endpoint(args)
    with registry_for(args, KeyNeed.REQUIRED) as registry:
        agency, created = add_agency_endpoint(registry, name, endpoint, field, now)
    assert agency.details is not None
    count = len(agency.details.endpoints)
    print(
        f"{agency.handle} {'added' if created else 'updated'}: "
        f"endpoint {count}: {endpoint.describe()}"
    )
    return 0


def cmd_agency_list(args: argparse.Namespace) -> int:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.audit import AuditEvent
    from mediation.warrants.model import utc_now

    now = utc_now()
    with registry_for(args, KeyNeed.OPTIONAL) as registry:
        agencies = registry.agencies()
        warrants = registry.warrants(include_removed=False)
        if registry.key is not None:
            registry.record(AuditEvent("agency list", None, detail={"agencies": len(agencies)}))
    rows = []
    for agency in agencies:
        live = sum(
            1 for w in warrants if w.agency == agency.handle and w.state(now).value != "expired"
        )
        row = [agency.handle, live]
        if agency.details is not None:
            row += [agency.details.name, "; ".join(e.describe() for e in agency.details.endpoints)]
        rows.append(row)
    headers = ["HANDLE", "WARRANTS"] + (["NAME", "ENDPOINTS"] if registry.key is not None else [])
    print_table(headers, rows)
    return 0


def cmd_agency_show(args: argparse.Namespace) -> int:
    from mediation.errors import UsageError
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.audit import AuditEvent
    from mediation.warrants.model import format_time

    with registry_for(args, KeyNeed.REQUIRED) as registry:
        agency = registry.find_agency(args.name)
        if agency is None or agency.details is None:
            raise UsageError("NAME", "no such agency; see `mediate agency list`")
        handles = [
            w.handle for w in registry.warrants(include_removed=False) if w.agency == agency.handle
        ]
        registry.record(AuditEvent("agency show", agency.handle))
    data = {
        "handle": agency.handle,
        "name": agency.details.name,
        "created": format_time(agency.created),
        "endpoints": [e.describe() for e in agency.details.endpoints],
        "warrants": handles,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for key in ("handle", "name", "created"):
        print(f"{key + ':':10} {data[key]}")
    for index, text in enumerate(data["endpoints"], start=1):
        print(f"endpoint {index}: {text}")
    print(f"warrants:  {', '.join(handles) or '-'}")
    return 0


def cmd_agency_remove(args: argparse.Namespace) -> int:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.model import utc_now
    from mediation.warrants.operations import remove_agency
    from mediation.warrants.validate import parse_host_port

    now = utc_now()
    endpoint = parse_host_port(args.endpoint, "--endpoint") if args.endpoint else None
    with registry_for(args, KeyNeed.REQUIRED) as registry:
        agency = remove_agency(registry, args.name, endpoint, now)
    if endpoint is None:
        print(f"{agency.handle} removed; its record is kept")
    else:
        assert agency.details is not None
        print(f"{agency.handle}: endpoint removed; {len(agency.details.endpoints)} left")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("agency", help="agencies and their delivery endpoints")
    sub = parser.add_subparsers(dest="agency_command", metavar="ACTION", required=True)
    p = subcommand(
        sub, "add", "add an agency, or one more endpoint to an existing one", cmd_agency_add
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--udp", metavar="HOST:PORT", help="deliver over UDP (T1.IAS real time)")
    p.add_argument("--tls", metavar="HOST:PORT", help="deliver over TLS with acknowledgements")
    p.add_argument("--ca", metavar="FILE", help="the agency's CA certificate (PEM), for --tls")
    p.add_argument(
        "--fingerprint", metavar="SHA256", help="or the agency certificate's pinned SHA-256"
    )
    p.add_argument("--streams", metavar="LIST", help="cmii, cmcc or cmii,cmcc (default: both)")
    p = subcommand(sub, "list", "list agencies (handles only without the key)", cmd_agency_list)
    p = subcommand(sub, "show", "show one agency (needs the key)", cmd_agency_show)
    p.add_argument("name", metavar="NAME|HANDLE")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p = subcommand(sub, "remove", "remove an agency, or one of its endpoints", cmd_agency_remove)
    p.add_argument("name", metavar="NAME|HANDLE")
    p.add_argument("--endpoint", metavar="HOST:PORT", help="remove only this endpoint")
