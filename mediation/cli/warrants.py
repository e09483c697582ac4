"""`mediate init|add|list|show|modify|remove`: the carrier's warrant commands.

``register`` also registers ``mediate agency``, ``mediate tap`` and
``mediate audit`` (in ``agency.py``, ``tap.py`` and ``audit.py``), so the
registry's whole command set hangs off this one module. Handlers import
the registry (and ``cryptography``) only when they run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mediation.cli.common import add_data_dir, data_dir

if TYPE_CHECKING:
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.keys import KdfParams, RegistryKey
    from mediation.warrants.model import Source, Target
    from mediation.warrants.registry import WarrantRegistry

DEFAULT_DAYS = 30  # Title III orders run 30 days (18 U.S.C. 2518(5)); extensions are new ends


# Shared by every registry command -------------------------------------------


def add_key_options(parser: argparse.ArgumentParser) -> None:
    """``--key-file FILE`` and ``--passphrase-env VAR``: where the registry key is."""
    parser.add_argument(
        "--key-file",
        metavar="FILE",
        help="the registry key file (default: $MEDIATION_KEY_FILE, else "
        "~/.config/mediation/registry.key)",
    )
    parser.add_argument(
        "--passphrase-env",
        metavar="VAR",
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


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [list(headers)] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


# mediate init ---------------------------------------------------------------


def _init_key(args: argparse.Namespace) -> tuple[RegistryKey, KdfParams | None, Path | None, str]:
    """The new registry's key: (key, scrypt parameters, key file, a line for people)."""
    from mediation.errors import UsageError
    from mediation.warrants.access import KeyOptions, key_file_path
    from mediation.warrants.keys import KdfParams, RegistryKey, read_key_file, read_passphrase

    if args.key_file and args.passphrase_env:
        raise UsageError("--passphrase-env", "give --key-file or --passphrase-env, not both")
    if args.passphrase_env:
        var = args.passphrase_env
        passphrase = read_passphrase(var)
        if passphrase is None:
            raise UsageError("--passphrase-env", f"set {var} to the new registry passphrase")
        kdf = KdfParams.fresh()
        note = f"registry key: derived from the passphrase in ${var} (scrypt)"
        return RegistryKey.from_passphrase(passphrase, kdf), kdf, None, note
    path, _ = key_file_path(KeyOptions(args.key_file))
    if path.exists():  # one key may serve several data directories
        return read_key_file(path), None, path, f"registry key: {path} (existing; mode 0600)"
    return RegistryKey.generate(), None, path, f"registry key: {path} (new; mode 0600)"


def cmd_init(args: argparse.Namespace) -> int:
    from mediation.errors import UsageError
    from mediation.warrants.audit import AuditEvent
    from mediation.warrants.authority import ServerAuthority, TapAuthority
    from mediation.warrants.keys import write_key_file
    from mediation.warrants.model import utc_now
    from mediation.warrants.registry import REGISTRY_DB, WarrantRegistry

    data, now = data_dir(args), utc_now()
    if (data / REGISTRY_DB).exists():
        raise UsageError("--data-dir", f"{data} already holds a registry")
    key, kdf, key_path, key_note = _init_key(args)
    if key_path is not None and not key_path.exists():
        write_key_file(key_path, key)
    with WarrantRegistry.initialise(data, key, kdf, now) as registry:
        TapAuthority.create(data / "ca", key, now)
        ServerAuthority.create(data / "ca", key, now)
        registry.record(AuditEvent("init", None, detail={"key": registry.key_mode}))
    print(f"initialised {data}")
    print(key_note)
    if key_path is not None and data.resolve() in key_path.resolve().parents:
        print("warning: the key file is inside the data directory; copies of it carry the key")
    print("keep the key apart from the data directory and its backups: without it nothing opens")
    print(f"tap CA: {data / 'ca' / 'ca.pem'} (signs taps only)")
    print(f"server CA: {data / 'ca' / 'server-ca.pem'} (give it to agencies: mediate server-ca)")
    print(f"audit trail: {data / 'audit' / 'audit.log'}")
    return 0


# mediate add ------------------------------------------------------------------


def _sources(taps: list[str] | None, sources: list[str] | None) -> tuple[Source, ...]:
    from mediation.warrants.model import Source
    from mediation.warrants.validate import parse_source, parse_tap_name

    out = [
        Source("tap", parse_tap_name(name, f"--tap #{i + 1}")) for i, name in enumerate(taps or [])
    ]
    out += [parse_source(text, i) for i, text in enumerate(sources or [])]
    return tuple(dict.fromkeys(out))


def cmd_add(args: argparse.Namespace) -> int:
    from mediation.warrants import validate as v
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.model import CaseDetails, Stream, format_time, utc_now
    from mediation.warrants.operations import add_warrant

    now = utc_now()
    details = CaseDetails(
        case_id=v.parse_case_id(args.case_id),
        targets=v.parse_targets(args.target),
        sources=_sources(args.tap, args.source),
        iap=v.parse_iap(args.iap),
        court_ref=v.parse_free_text(args.court_ref, "--court-ref"),
        notes=v.parse_free_text(args.note, "--note", v.NOTE_MAX),
    )
    content = v.parse_content(args.content)
    start = v.parse_time(args.start, "--start", now) if args.start else now
    end = (
        v.parse_time(args.end, "--end", now)
        if args.end
        else start + dt.timedelta(days=DEFAULT_DAYS)
    )
    with registry_for(args, KeyNeed.REQUIRED) as registry:
        warrant = add_warrant(registry, args.agency, details, content, start, end, now)
        agency = registry.agency(warrant.agency)
    print(warrant.handle)
    if args.quiet:
        return 0
    print(f"state: {warrant.state(now).value}, from {format_time(start)} to {format_time(end)}")
    if args.end is None:
        print(
            f"end: not given, so {DEFAULT_DAYS} days after the start; "
            "set the order's end with --end"
        )
    endpoints = agency.details.endpoints if agency and agency.details else ()
    if Stream.CMCC in content.streams and not any(Stream.CMCC in e.streams for e in endpoints):
        print(
            "note: the agency has no endpoint for CmCC; "
            "content is stored and can be retrieved later"
        )
    print(report_to_server(args, warrant.handle))
    return 0


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


def _new_targets(args: argparse.Namespace, stored: tuple[Target, ...]) -> tuple[Target, ...] | None:
    """Targets after --target (replace), --add-target, --remove-target; None if untouched."""
    from mediation.errors import UsageError
    from mediation.warrants.validate import parse_target, parse_targets

    if not (args.target or args.add_target or args.remove_target):
        return None
    targets = list(parse_targets(args.target) if args.target else stored)
    for i, text in enumerate(args.add_target or []):
        target = parse_target(text, i, "--add-target")
        if target not in targets:
            targets.append(target)
    for i, text in enumerate(args.remove_target or []):
        target = parse_target(text, i, "--remove-target")
        if target not in targets:
            raise UsageError(f"--remove-target #{i + 1}", "is not a target of this warrant")
        targets.remove(target)
    if not targets:
        raise UsageError(
            "--remove-target", "would leave no target; use `mediate remove` to stop the warrant"
        )
    return tuple(targets)


def cmd_modify(args: argparse.Namespace) -> int:
    from mediation.warrants import validate as v
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.model import format_time, utc_now
    from mediation.warrants.operations import WarrantChanges, existing_warrant, modify_warrant

    now, handle = utc_now(), v.parse_handle(args.handle)
    changes = WarrantChanges(
        case_id=None if args.case_id is None else v.parse_case_id(args.case_id),
        content=None if args.content is None else v.parse_content(args.content),
        start=None if args.start is None else v.parse_time(args.start, "--start", now),
        end=None if args.end is None else v.parse_time(args.end, "--end", now),
        sources=_sources(args.tap, args.source) if (args.tap or args.source) else None,
        iap=v.parse_iap(args.iap),
        court_ref=v.parse_free_text(args.court_ref, "--court-ref"),
        notes=v.parse_free_text(args.note, "--note", v.NOTE_MAX),
    )
    with registry_for(args, KeyNeed.REQUIRED) as registry:
        stored = existing_warrant(registry, handle)
        if stored.details is not None:
            targets = _new_targets(args, stored.details.targets)
            if targets is not None:
                changes = dataclasses.replace(changes, targets=targets)
        warrant, changed = modify_warrant(registry, handle, changes, now)
    print(f"{handle} modified: {', '.join(changed)}")
    print(
        f"state: {warrant.state(now).value}, "
        f"from {format_time(warrant.start)} to {format_time(warrant.end)}"
    )
    print(report_to_server(args, handle))
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
    """Register the registry's commands: these, and agency, tap and audit."""
    from mediation.cli import agency, audit, tap

    p = subcommand(subparsers, "init", "create the registry, its key and the tap CA", cmd_init)
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
    p.add_argument("--case-id", metavar="ID", help="a corrected case identity")
    p.add_argument(
        "--target", metavar="ADDR", action="append", help="replace all targets (repeatable)"
    )
    p.add_argument(
        "--add-target", metavar="ADDR", action="append", help="add a target (repeatable)"
    )
    p.add_argument(
        "--remove-target", metavar="ADDR", action="append", help="drop a target (repeatable)"
    )
    p.add_argument("--content", metavar="LEVEL", help="headers or full")
    p.add_argument("--start", metavar="TIME", help="a new start")
    p.add_argument("--end", metavar="TIME", help="a new end (an extension, or an earlier end)")
    add_detail_options(p)
    p = subcommand(subparsers, "remove", "stop a warrant now; its record is kept", cmd_remove)
    p.add_argument("handle", metavar="HANDLE")
    agency.register(subparsers)
    tap.register(subparsers)
    audit.register(subparsers)


def add_warrant_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--case-id", metavar="ID", help="case identity from the order: 1 to 25 visible characters"
    )
    p.add_argument(
        "--agency", metavar="NAME", help="the agency (name or a- handle); see `mediate agency list`"
    )
    p.add_argument(
        "--target",
        metavar="ADDR|PREFIX|MAC",
        action="append",
        help="IPv4/IPv6 address or prefix, MAC address, or iface:NAME (repeatable)",
    )
    p.add_argument("--content", metavar="LEVEL", help="headers (CmII only) or full (CmII and CmCC)")
    p.add_argument(
        "--start", metavar="TIME", help="ISO 8601 with Z or an offset, or a date (default: now)"
    )
    p.add_argument(
        "--end", metavar="TIME", help=f"like --start (default: {DEFAULT_DAYS} days after the start)"
    )
    add_detail_options(p)


def add_detail_options(p: argparse.ArgumentParser) -> None:
    """Options ``add`` and ``modify`` share beyond identity, targets and window."""
    p.add_argument("--iap", metavar="ID", help="IAP system identity: 1 to 15 visible characters")
    p.add_argument(
        "--tap", metavar="NAME", action="append", help="a registered tap serving it (repeatable)"
    )
    p.add_argument(
        "--source",
        metavar="tzsp:ADDR",
        action="append",
        help="a TZSP sender serving it (repeatable)",
    )
    p.add_argument("--court-ref", metavar="TEXT", help="the court order's reference")
    p.add_argument("--note", metavar="TEXT", help="a note for the carrier's own records")
