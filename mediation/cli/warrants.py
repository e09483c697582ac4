"""`mediate add|list|show|modify|remove`: the carrier's warrant commands.

``add`` and ``modify`` take their case data from options, from a case file
(``--from FILE``, ``-`` for stdin) or, for ``add`` on a terminal, from
prompts (see ``casedata.py``); the options they share are
``warrant_options.py``. Handlers import the registry (and
``cryptography``) only when they run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from mediation.cli.casedata import CaseInput, gather
from mediation.cli.common import Once, print_table
from mediation.cli.registry import registry_for, report_to_server, server_request, subcommand
from mediation.cli.warrant_options import (
    ADD_FIELDS,
    DEFAULT_DAYS,
    MODIFY_FIELDS,
    add_modify_options,
    add_warrant_options,
    given_details,
    given_sources,
    given_time,
)

if TYPE_CHECKING:
    from mediation.warrants.model import Agency, Target, Warrant


# mediate add ------------------------------------------------------------------


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
            sources=given_sources(given),
            **given_details(given),
        )
        content = v.parse_content(given.get("content"), given.name("content"))
        start = given_time(given, "start", now) or now
        end = given_time(given, "end", now) or start + dt.timedelta(days=DEFAULT_DAYS)
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
            start=given_time(given, "start", now),
            end=given_time(given, "end", now),
            sources=given_sources(given) if (given.get("tap") or given.get("source")) else None,
            **given_details(given),
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
