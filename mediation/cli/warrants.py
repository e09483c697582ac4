"""`mediate add|list|show|modify|remove`: the carrier's warrant commands.

``add`` and ``modify`` take their case data from options, from a case file
(``--from FILE``, ``-`` for stdin) or, for ``add`` on a terminal, from
prompts (see ``casedata.py``). Handlers import the registry (and
``cryptography``) only when they run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from mediation.cli.casedata import CaseInput, Field, add_from_option, gather
from mediation.cli.common import Once, print_table
from mediation.cli.registry import registry_for, report_to_server, server_request, subcommand

if TYPE_CHECKING:
    from mediation.warrants.model import Agency, Source, Target, Warrant

DEFAULT_DAYS = 30  # Title III orders run 30 days (18 U.S.C. 2518(5)); extensions are new ends

# What identifies a case, a target or an agency is `sensitive`: warned about
# on the command line. The content level and the window are stored in clear
# in the registry anyway.
_DETAIL_FIELDS = (
    Field("iap", "--iap"),
    Field("tap", "--tap", many=True),
    Field("source", "--source", many=True),
    Field("court_ref", "--court-ref"),
    Field("note", "--note"),
    Field("retention", "--retention", sensitive=False, number=True),
)
ADD_FIELDS = (
    Field("case_id", "--case-id", prompt="case id"),
    Field("agency", "--agency", prompt="agency (name or a- handle)"),
    Field("target", "--target", many=True, prompt="targets"),
    Field("content", "--content", sensitive=False, prompt="content (headers or full)"),
    Field("start", "--start", sensitive=False),
    Field("end", "--end", sensitive=False),
    *_DETAIL_FIELDS,
)
MODIFY_FIELDS = (
    Field("case_id", "--case-id"),
    Field("target", "--target", many=True),
    Field("add_target", "--add-target", many=True),
    Field("remove_target", "--remove-target", many=True),
    Field("content", "--content", sensitive=False),
    Field("start", "--start", sensitive=False),
    Field("end", "--end", sensitive=False),
    *_DETAIL_FIELDS,
)


# mediate add ------------------------------------------------------------------


def _sources(given: CaseInput) -> tuple[Source, ...]:
    from mediation.warrants.model import Source
    from mediation.warrants.validate import parse_source, parse_tap_name

    taps, sources = given.get("tap") or [], given.get("source") or []
    tap_field, source_field = given.name("tap"), given.name("source")
    out = [
        Source("tap", parse_tap_name(name, f"{tap_field} #{i + 1}")) for i, name in enumerate(taps)
    ]
    out += [parse_source(text, i, source_field) for i, text in enumerate(sources)]
    return tuple(dict.fromkeys(out))


def _details(given: CaseInput) -> dict[str, Any]:
    """iap, court_ref, notes and retention, parsed; each None when not given."""
    from mediation.warrants import validate as v

    return {
        "iap": v.parse_iap(given.get("iap"), given.name("iap")),
        "court_ref": v.parse_free_text(given.get("court_ref"), given.name("court_ref")),
        "notes": v.parse_free_text(given.get("note"), given.name("note"), v.NOTE_MAX),
        "retention": v.parse_retention(given.get("retention"), given.name("retention")),
    }


def _time(given: CaseInput, key: str, now: dt.datetime) -> dt.datetime | None:
    from mediation.warrants.validate import parse_time

    text = given.get(key)
    return None if text is None else parse_time(text, given.name(key), now)


def cmd_add(args: argparse.Namespace) -> int:
    from mediation.warrants import validate as v
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.model import CaseDetails, utc_now
    from mediation.warrants.operations import add_warrant
    from mediation.warrants.target_text import parse_targets

    now, given = utc_now(), gather(args, ADD_FIELDS)
    with given.naming():
        details = CaseDetails(
            case_id=v.parse_case_id(given.get("case_id"), given.name("case_id")),
            targets=parse_targets(given.get("target"), given.name("target")),
            sources=_sources(given),
            **_details(given),
        )
        content = v.parse_content(given.get("content"), given.name("content"))
        start = _time(given, "start", now) or now
        end = _time(given, "end", now) or start + dt.timedelta(days=DEFAULT_DAYS)
        with registry_for(args, KeyNeed.REQUIRED) as registry:
            warrant = add_warrant(registry, given.get("agency"), details, content, start, end, now)
            agency = registry.agency(warrant.agency)
    print(warrant.handle)
    if not args.quiet:
        _describe_added(args, given, warrant, agency, now)
    given.warn()
    return 0


def _describe_added(
    args: argparse.Namespace,
    given: CaseInput,
    warrant: Warrant,
    agency: Agency | None,
    now: dt.datetime,
) -> None:
    """The lines after the handle: state, window, missing CmCC endpoint, the server."""
    from mediation.warrants.model import Stream, format_time

    print(
        f"state: {warrant.state(now).value}, "
        f"from {format_time(warrant.start)} to {format_time(warrant.end)}"
    )
    if given.get("end") is None:
        print(
            f"end: not given, so {DEFAULT_DAYS} days after the start; "
            "set the order's end with --end"
        )
    if warrant.details is not None and warrant.details.retention is not None:
        print(f"retention: {warrant.details.retention} years after it ends")
    endpoints = agency.details.endpoints if agency and agency.details else ()
    if Stream.CMCC in warrant.content.streams and not any(
        Stream.CMCC in e.streams for e in endpoints
    ):
        print(
            "note: the agency has no endpoint for CmCC; "
            "content is stored and can be retrieved later"
        )
    print(report_to_server(args, warrant.handle))


# mediate list / show ----------------------------------------------------------


def _counters(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    response, _ = server_request(args, "status")
    if response is None:
        return {}
    return {h: s.get("counters", {}) for h, s in response.get("warrants", {}).items()}


def cmd_list(args: argparse.Namespace) -> int:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.audit import AuditEvent
    from mediation.warrants.model import format_time, utc_now

    now = utc_now()
    with registry_for(args, KeyNeed.OPTIONAL) as registry:
        warrants = registry.warrants(include_removed=args.all)
        names = {a.handle: a.details.name for a in registry.agencies(True) if a.details}
        if registry.key is not None:
            registry.record(AuditEvent("list", None, detail={"warrants": len(warrants)}))
    counters = _counters(args)
    if args.json:
        print(
            json.dumps(
                [{**w.to_json(now), "counters": counters.get(w.handle)} for w in warrants], indent=2
            )
        )
        return 0
    rows = []
    for w in warrants:
        count = counters.get(w.handle, {})
        row: list[Any] = [w.handle, w.state(now).value, count.get("cmii"), count.get("cmcc")]
        if w.details is not None:
            targets = ",".join(str(t) for t in w.details.targets)
            row += [w.details.case_id, names.get(w.agency, w.agency), w.content.value]
            row += [format_time(w.start), format_time(w.end), targets]
        rows.append(row)
    headers = ["HANDLE", "STATE", "CMII", "CMCC"]
    if registry.key is not None:
        headers += ["CASE-ID", "AGENCY", "CONTENT", "START", "END", "TARGETS"]
    print_table(headers, rows)
    if registry.key is None:
        print("(no registry key: handles, states and counters only)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.audit import AuditEvent
    from mediation.warrants.model import utc_now
    from mediation.warrants.operations import existing_warrant
    from mediation.warrants.validate import parse_handle

    now, handle = utc_now(), parse_handle(args.handle)
    with registry_for(args, KeyNeed.REQUIRED) as registry:
        warrant = existing_warrant(registry, handle)
        agency = registry.agency(warrant.agency)
        registry.record(AuditEvent("show", handle))
    data = {**warrant.to_json(now), "counters": _counters(args).get(handle)}
    if data.get("retention_years") is None and not args.json:
        data["retention_years"] = "the server's [retention] years"
    if agency is not None and agency.details is not None:
        data["agency"] = f"{agency.details.name} ({agency.handle})"
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for name, value in data.items():
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={n}" for k, n in value.items())
        print(f"{name.replace('_', ' ') + ':':11} {'-' if value is None else value}")
    return 0


# mediate modify / remove -------------------------------------------------------


def _new_targets(given: CaseInput, stored: tuple[Target, ...]) -> tuple[Target, ...] | None:
    """Targets after target (replace), add-target, remove-target; None if untouched."""
    from mediation.errors import UsageError
    from mediation.warrants.target_text import parse_target, parse_targets

    replace, add, drop = (given.get(k) for k in ("target", "add_target", "remove_target"))
    if not (replace or add or drop):
        return None
    targets = list(parse_targets(replace, given.name("target")) if replace else stored)
    add_field = given.name("add_target")
    for i, text in enumerate(add or []):
        target = parse_target(text, i, add_field)
        if target not in targets:
            targets.append(target)
    drop_field = given.name("remove_target")
    for i, text in enumerate(drop or []):
        target = parse_target(text, i, drop_field)
        if target not in targets:
            raise UsageError(f"{drop_field} #{i + 1}", "is not a target of this warrant")
        targets.remove(target)
    if not targets:
        raise UsageError(
            drop_field, "would leave no target; use `mediate remove` to stop the warrant"
        )
    return tuple(targets)


def cmd_modify(args: argparse.Namespace) -> int:
    from mediation.cli.records import default_retention
    from mediation.warrants import validate as v
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.model import format_time, utc_now
    from mediation.warrants.operations import WarrantChanges, existing_warrant, modify_warrant

    now, handle = utc_now(), v.parse_handle(args.handle)
    given = gather(args, MODIFY_FIELDS)
    case_id, content = given.get("case_id"), given.get("content")
    with given.naming():
        changes = WarrantChanges(
            case_id=None if case_id is None else v.parse_case_id(case_id, given.name("case_id")),
            content=None if content is None else v.parse_content(content, given.name("content")),
            start=_time(given, "start", now),
            end=_time(given, "end", now),
            sources=_sources(given) if (given.get("tap") or given.get("source")) else None,
            **_details(given),
        )
        default = default_retention(args)  # the period of a warrant without its own
        with registry_for(args, KeyNeed.REQUIRED) as registry:
            stored = existing_warrant(registry, handle)
            if stored.details is not None:
                targets = _new_targets(given, stored.details.targets)
                if targets is not None:
                    changes = dataclasses.replace(changes, targets=targets)
            warrant, changed = modify_warrant(registry, handle, changes, now, default)
    print(f"{handle} modified: {', '.join(changed)}")
    print(
        f"state: {warrant.state(now).value}, "
        f"from {format_time(warrant.start)} to {format_time(warrant.end)}"
    )
    if "retention" in changed:
        print(f"retention: {changes.retention} years after it ends (see `mediate records`)")
    print(report_to_server(args, handle))
    given.warn()
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.model import utc_now
    from mediation.warrants.operations import remove_warrant
    from mediation.warrants.validate import parse_handle

    now, handle = utc_now(), parse_handle(args.handle)
    with registry_for(args, KeyNeed.REQUIRED) as registry:
        remove_warrant(registry, handle, now)
    print(f"{handle} removed; its record is kept (recordkeeping)")
    print(report_to_server(args, handle))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register add, list, show, modify and remove."""
    p = subcommand(subparsers, "add", "register a warrant; prints its handle", cmd_add)
    add_warrant_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print the handle only")
    p = subcommand(
        subparsers, "list", "list warrants (handles and states only without the key)", cmd_list
    )
    p.add_argument("--all", action="store_true", help="include removed warrants")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p = subcommand(subparsers, "show", "show one warrant's details (needs the key)", cmd_show)
    p.add_argument("handle", metavar="HANDLE")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p = subcommand(subparsers, "modify", "change a warrant; give only what changes", cmd_modify)
    p.add_argument("handle", metavar="HANDLE")
    add_modify_options(p)
    p.add_argument(
        "--config",
        metavar="FILE",
        action=Once,
        help="the server's TOML configuration, for [retention] years: the period of a warrant "
        "without its own (default: $MEDIATION_CONFIG, else five years)",
    )
    p = subcommand(subparsers, "remove", "stop a warrant now; its record is kept", cmd_remove)
    p.add_argument("handle", metavar="HANDLE")


def add_warrant_options(p: argparse.ArgumentParser) -> None:
    add_from_option(p, "the warrant")
    p.add_argument(
        "--case-id",
        metavar="ID",
        action=Once,
        help="case identity from the order: 1 to 25 visible characters",
    )
    p.add_argument(
        "--agency",
        metavar="NAME",
        action=Once,
        help="the agency (name or a- handle); see `mediate agency list`",
    )
    p.add_argument(
        "--target",
        metavar="ADDR|PREFIX|MAC",
        action="append",
        help="IPv4/IPv6 address or prefix, MAC address, iface:NAME or user:NAME (repeatable)",
    )
    p.add_argument(
        "--content",
        metavar="LEVEL",
        action=Once,
        help="headers (CmII only) or full (CmII and CmCC)",
    )
    p.add_argument(
        "--start",
        metavar="TIME",
        action=Once,
        help="ISO 8601 with Z or an offset, or a date (default: now)",
    )
    p.add_argument(
        "--end",
        metavar="TIME",
        action=Once,
        help=f"like --start (default: {DEFAULT_DAYS} days after the start)",
    )
    add_detail_options(p)


def add_modify_options(p: argparse.ArgumentParser) -> None:
    add_from_option(p, "the changes")
    p.add_argument("--case-id", metavar="ID", action=Once, help="a corrected case identity")
    p.add_argument(
        "--target", metavar="ADDR", action="append", help="replace all targets (repeatable)"
    )
    p.add_argument(
        "--add-target", metavar="ADDR", action="append", help="add a target (repeatable)"
    )
    p.add_argument(
        "--remove-target", metavar="ADDR", action="append", help="drop a target (repeatable)"
    )
    p.add_argument("--content", metavar="LEVEL", action=Once, help="headers or full")
    p.add_argument("--start", metavar="TIME", action=Once, help="a new start")
    p.add_argument(
        "--end", metavar="TIME", action=Once, help="a new end (an extension, or an earlier end)"
    )
    add_detail_options(p)


def add_detail_options(p: argparse.ArgumentParser) -> None:
    """Options ``add`` and ``modify`` share beyond identity, targets and window."""
    p.add_argument(
        "--iap",
        metavar="ID",
        action=Once,
        help="IAP system identity: 1 to 15 visible characters",
    )
    p.add_argument(
        "--tap", metavar="NAME", action="append", help="a registered tap serving it (repeatable)"
    )
    p.add_argument(
        "--source",
        metavar="tzsp:ADDR",
        action="append",
        help="a TZSP sender serving it (repeatable)",
    )
    p.add_argument("--court-ref", metavar="TEXT", action=Once, help="the court order's reference")
    p.add_argument(
        "--note", metavar="TEXT", action=Once, help="a note for the carrier's own records"
    )
    p.add_argument(
        "--retention",
        metavar="YEARS",
        action=Once,
        help="years its records are kept after it ends, 5 to 100 (default: the server's "
        "[retention] years); after the end it may only be lengthened",
    )
