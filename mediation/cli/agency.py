"""`mediate agency add|list|show|remove|udp-key`: where an agency receives its streams.

A UDP endpoint gets its sealing key when it is added; ``udp-key`` writes
that key's file for the agency again (or a new key with ``--new``).

Registered by ``main.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mediation.cli.casedata import CaseInput, Field, add_from_option, gather, relative_to_file
from mediation.cli.common import Once, print_table
from mediation.cli.registry import registry_for, subcommand

if TYPE_CHECKING:
    from mediation.warrants.model import Agency, Endpoint, Stream

# The agency's name and addresses say who is intercepting: they are sealed
# in the registry and kept off the command line like a case identity.
AGENCY_FIELDS = (
    Field("name", "NAME", prompt="agency name"),
    Field("udp", "--udp"),
    Field("tls", "--tls"),
    # A directory is visible to anyone who can list its parent: not case data.
    Field("files", "--files", sensitive=False),
    Field("ca", "--ca", sensitive=False),
    Field("fingerprint", "--fingerprint"),
    Field("streams", "--streams", sensitive=False),
    Field("format", "--format", sensitive=False),
)
BY_HANDLE = (
    "name the agency by its handle (a-…, see `mediate agency list`) "
    "and an endpoint by its number (see `mediate agency show`) instead"
)


def _endpoint(given: CaseInput) -> tuple[Endpoint, str]:
    """The one endpoint described by udp or tls (with ca or fingerprint), and its field."""
    from mediation.errors import UsageError
    from mediation.warrants.model import Endpoint
    from mediation.warrants.validate import (
        parse_files_dir,
        parse_fingerprint,
        parse_host_port,
        parse_streams,
        read_ca_file,
    )

    keys = ("udp", "tls", "files", "ca", "fingerprint")
    udp, tls, files, ca, fingerprint = (given.get(k) for k in keys)
    name = {k: given.name(k) for k in keys}
    if sum(map(bool, (udp, tls, files))) != 1:
        raise UsageError(
            "--udp/--tls/--files",
            "give exactly one endpoint: --udp HOST:PORT, --tls HOST:PORT or --files DIR",
        )
    streams = parse_streams(given.get("streams"), given.name("streams"))
    if given.get("format") and not udp:
        raise UsageError(given.name("format"), "only for --udp endpoints")
    if files:
        if ca or fingerprint:
            raise UsageError(name["ca"] if ca else name["fingerprint"], "only for --tls endpoints")
        return Endpoint("files", parse_files_dir(files, name["files"]), 0, streams), name["files"]
    if udp:
        if ca or fingerprint:
            raise UsageError(name["ca"] if ca else name["fingerprint"], "only for --tls endpoints")
        host, port = parse_host_port(udp, name["udp"])
        udp_format = _udp_format(given, streams)
        return Endpoint("udp", host, port, streams, udp_format=udp_format), name["udp"]
    host, port = parse_host_port(tls, name["tls"])
    if bool(ca) == bool(fingerprint):
        raise UsageError(
            name["tls"],
            "needs the agency's CA (--ca FILE) or its certificate's --fingerprint SHA256",
        )
    if ca:
        pem = read_ca_file(relative_to_file(given, "ca"), name["ca"])
        return Endpoint("tls", host, port, streams, ca_pem=pem), name["tls"]
    return Endpoint(
        "tls", host, port, streams, fingerprint=parse_fingerprint(fingerprint, name["fingerprint"])
    ), name["tls"]


def cmd_agency_add(args: argparse.Namespace) -> int:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.model import utc_now
    from mediation.warrants.operations import add_agency_endpoint
    from mediation.warrants.validate import parse_agency_name

    now, given = utc_now(), gather(args, AGENCY_FIELDS)
    with given.naming():
        name = parse_agency_name(given.get("name"), given.name("name", "NAME"))
        endpoint, field = _endpoint(given)
        key_out = _udp_key_out(args, endpoint)
        with registry_for(args, KeyNeed.REQUIRED) as registry:
            _refuse_shared_dir(registry, name, endpoint, field)
            agency, created = add_agency_endpoint(registry, name, endpoint, field, now)
    assert agency.details is not None
    count = len(agency.details.endpoints)
    endpoint = agency.details.endpoints[-1]
    print(
        f"{agency.handle} {'added' if created else 'updated'}: "
        f"endpoint {count}: {endpoint.describe()}"
    )
    if endpoint.transport == "udp":
        _write_udp_key(agency.handle, endpoint, key_out, "--udp-key-out")
    given.warn()
    return 0


def _udp_format(given: CaseInput, streams: tuple[Stream, ...]) -> str | None:
    """``--format``: None (envelopes, the default) or "scte" (CC only)."""
    from mediation.errors import UsageError
    from mediation.warrants.model import Stream

    value, field = given.get("format"), given.name("format")
    if value in (None, "envelope"):
        return None
    if value != "scte":
        raise UsageError(field, "must be envelope (the default) or scte")
    if streams != (Stream.CMCC,):
        raise UsageError(field, "scte carries CC only: add --streams cmcc")
    return "scte"


def _refuse_shared_dir(registry: Any, name: str, endpoint: Endpoint, field: str) -> None:
    """One files directory per agency: two agencies' files must never mix."""
    from mediation.errors import UsageError

    if endpoint.transport != "files":
        return
    for agency in registry.agencies():
        if agency.removed is not None or agency.details is None or agency.details.name == name:
            continue
        endpoints = agency.details.endpoints
        if any(e.transport == "files" and e.host == endpoint.host for e in endpoints):
            raise UsageError(field, f"agency {agency.handle} writes there already; give another")


def _udp_key_out(args: argparse.Namespace, endpoint: Endpoint) -> Path | None:
    """``--udp-key-out``, checked before anything is registered."""
    from mediation.errors import UsageError
    from mediation.warrants.udpkey import check_new_file

    if not args.udp_key_out:
        return None
    if endpoint.transport != "udp":
        raise UsageError("--udp-key-out", "only with --udp")
    path = Path(args.udp_key_out)
    check_new_file(path, "--udp-key-out")
    return path


def _write_udp_key(handle: str, endpoint: Endpoint, out: Path | None, field: str) -> None:
    """Write the endpoint's key file for the agency (default name: by handle and key id)."""
    from mediation.errors import UsageError
    from mediation.warrants.udpkey import write_key_file

    assert endpoint.udp_key is not None and endpoint.udp_key_id is not None
    path = out or Path(f"udp-key-{handle}-{endpoint.udp_key_id:08x}.toml")
    try:
        write_key_file(path, handle, endpoint.udp_key_id, endpoint.udp_key, field)
    except UsageError as exc:
        raise UsageError(
            field,
            f"{exc.problem}; the key is registered: write it with "
            f"`mediate agency udp-key {handle} --out FILE`",
        ) from None
    print(f"udp key: {path} (mode 0600); hand it to the agency for `mediate receive --udp-key`")


def cmd_agency_udp_key(args: argparse.Namespace) -> int:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.operations import udp_key_for
    from mediation.warrants.udpkey import check_new_file
    from mediation.warrants.validate import parse_host_port

    address = parse_host_port(args.endpoint, "--endpoint") if args.endpoint else None
    out = Path(args.out)
    check_new_file(out, "--out")
    with registry_for(args, KeyNeed.REQUIRED) as registry:
        agency, endpoint, made = udp_key_for(registry, args.name, address, args.new)
    if made:
        print(f"{agency.handle}: new UDP key {endpoint.udp_key_id:08x} for {endpoint.address}")
        print("a running server seals with it within seconds (it rereads the registry)")
    _write_udp_key(agency.handle, endpoint, out, "--out")
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

    given = gather(args, (Field("name", "NAME"),))
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
        given.warn(BY_HANDLE)
        return 0
    for key in ("handle", "name", "created"):
        print(f"{key + ':':10} {data[key]}")
    for index, text in enumerate(data["endpoints"], start=1):
        print(f"endpoint {index}: {text}")
    print(f"warrants:  {', '.join(handles) or '-'}")
    given.warn(BY_HANDLE)
    return 0


def _endpoint_to_remove(agency: Agency | None, text: str | None) -> tuple[str, int] | None:
    """``--endpoint``: HOST:PORT, or the endpoint's number as `agency show` prints it."""
    from mediation.errors import UsageError
    from mediation.warrants.validate import parse_host_port

    if text is None:
        return None
    if not text.isdigit():
        return parse_host_port(text, "--endpoint")
    endpoints = agency.details.endpoints if agency is not None and agency.details else ()
    if not 1 <= int(text) <= len(endpoints):
        raise UsageError(
            "--endpoint", f"no endpoint {text}; the agency has {len(endpoints)} (`agency show`)"
        )
    chosen = endpoints[int(text) - 1]
    return chosen.host, chosen.port


def cmd_agency_remove(args: argparse.Namespace) -> int:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.model import utc_now
    from mediation.warrants.operations import remove_agency

    now = utc_now()
    given = gather(args, (Field("name", "NAME"), Field("endpoint", "--endpoint", opaque=r"\d+")))
    with registry_for(args, KeyNeed.REQUIRED) as registry:
        endpoint = _endpoint_to_remove(registry.find_agency(args.name), args.endpoint)
        agency = remove_agency(registry, args.name, endpoint, now)
    if endpoint is None:
        print(f"{agency.handle} removed; its record is kept")
    else:
        assert agency.details is not None
        print(f"{agency.handle}: endpoint removed; {len(agency.details.endpoints)} left")
    given.warn(BY_HANDLE)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("agency", help="agencies and their delivery endpoints")
    sub = parser.add_subparsers(dest="agency_command", metavar="ACTION", required=True)
    p = subcommand(
        sub, "add", "add an agency, or one more endpoint to an existing one", cmd_agency_add
    )
    add_agency_options(p)
    p = subcommand(sub, "list", "list agencies (handles only without the key)", cmd_agency_list)
    p = subcommand(sub, "show", "show one agency (needs the key)", cmd_agency_show)
    p.add_argument("name", metavar="NAME|HANDLE")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p = subcommand(sub, "remove", "remove an agency, or one of its endpoints", cmd_agency_remove)
    p.add_argument("name", metavar="NAME|HANDLE")
    p.add_argument(
        "--endpoint",
        metavar="N|HOST:PORT",
        action=Once,
        help="remove only this endpoint: its number in `agency show`, or its address",
    )

    p = subcommand(
        sub,
        "udp-key",
        "write a UDP endpoint's key file for the agency (creating the key if it has none)",
        cmd_agency_udp_key,
    )
    p.add_argument("name", metavar="NAME|HANDLE")
    p.add_argument("--out", metavar="FILE", required=True, help="the key file to create (0600)")
    p.add_argument(
        "--endpoint", metavar="HOST:PORT", action=Once, help="which UDP endpoint, if several"
    )
    p.add_argument("--new", action="store_true", help="replace the key (the old one stops working)")


def add_agency_options(p: argparse.ArgumentParser) -> None:
    """NAME and one endpoint, each also from ``--from FILE``; one endpoint per command."""
    add_from_option(p, "the agency and its endpoint")
    p.add_argument("name", metavar="NAME", nargs="?", help="the agency (or `name` in --from)")
    one = "one endpoint per command: run `mediate agency add` again for the next"
    p.add_argument(
        "--udp", metavar="HOST:PORT", action=Once, hint=one, help="deliver over UDP (T1.IAS)"
    )
    p.add_argument(
        "--tls",
        metavar="HOST:PORT",
        action=Once,
        hint=one,
        help="deliver over TLS with acknowledgements",
    )
    p.add_argument(
        "--files",
        metavar="DIR",
        action=Once,
        hint=one,
        help="capture to disk: pcap, JSON lines and BER files per warrant under DIR "
        "(absolute; made 0700), each hashed and in a signed manifest",
    )
    p.add_argument(
        "--ca", metavar="FILE", action=Once, help="the agency's CA certificate (PEM), for --tls"
    )
    p.add_argument(
        "--fingerprint",
        metavar="SHA256",
        action=Once,
        help="or the agency certificate's pinned SHA-256",
    )
    p.add_argument(
        "--streams",
        metavar="LIST",
        action=Once,
        help="cmii, cmcc or cmii,cmcc (default: both)",
    )
    p.add_argument(
        "--format",
        metavar="FORMAT",
        action=Once,
        help="with --udp: envelope (the default), or scte: CC as SCTE/PacketCable datagrams "
        "(tshark's pcli12; sequenced and authenticated, not encrypted; needs --streams cmcc)",
    )
    p.add_argument(
        "--udp-key-out",
        metavar="FILE",
        action=Once,
        help="with --udp: write the endpoint's new key here "
        "(default: udp-key-HANDLE-KEYID.toml; never overwritten)",
    )
