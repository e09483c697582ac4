"""``mediate records`` and ``mediate purge``: what the log keeps per warrant, and retention.

``records`` reads the data directory only (no server needed, no log key:
segment file names, their frames' sequence numbers and sizes are in
clear), plus the registry for each warrant's end. ``purge HANDLE`` asks
a running server to purge (control op ``purge``); with none running it
purges itself while holding ``server.lock``, so no server starts meanwhile.
Each warrant's retention period is its own (``mediate add --retention``,
sealed in the registry: without the key ``records`` shows no dates for
ended warrants), else ``[retention] years`` of the configuration
(``--config FILE`` or ``$MEDIATION_CONFIG``, as ``mediate serve``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mediation.cli.common import Once, data_dir, fail, print_table
from mediation.cli.registry import registry_for, subcommand

if TYPE_CHECKING:
    from mediation.server.config import ServerConfig
    from mediation.warrants.keys import RegistryKey


def _config(args: argparse.Namespace) -> ServerConfig:
    import os

    from mediation.cli.serve import CONFIG_ENV
    from mediation.server.config_file import load_config

    path = args.config or os.environ.get(CONFIG_ENV)
    return load_config(Path(path) if path else None)


def default_retention(args: argparse.Namespace) -> int:
    """The server's ``[retention] years`` (``--config`` or ``$MEDIATION_CONFIG``; else 5)."""
    return _config(args).retention.years


def stream_records(directory: Path) -> dict[str, Any] | None:
    """One stream directory: records kept and what retention removed (None: no stream).

    Reads file names, frame headers and the retention journal: no key needed.
    """
    from mediation.log.journal import RETENTION, read_entries
    from mediation.log.segments import list_segments, scan_segment

    if not directory.is_dir():
        return None
    segments = list_segments(directory)
    out: dict[str, Any] = {"first": None, "last": None, "segments": len(segments), "bytes": 0}
    if segments:
        last = scan_segment(segments[-1][1], 1 << 30, chain=False).next_seq - 1
        out.update(first=segments[0][0], last=last if last >= segments[-1][0] else None)
        if out["last"] is None and len(segments) > 1:
            out["last"] = segments[-1][0] - 1
        out["bytes"] = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    try:
        entries = read_entries(directory / RETENTION)
    except ValueError:
        entries = []
    if entries:
        out["purged"] = {
            "first": entries[0].get("first"),
            "last": entries[-1].get("last"),
            "segments": len(entries),
            "time": entries[-1].get("time"),
        }
    return out


def _rows(args: argparse.Namespace) -> tuple[list[dict[str, Any]], bool]:
    from mediation.log.evidence_log import stream_dir
    from mediation.pdu import StreamKind
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.audit import AuditEvent
    from mediation.warrants.model import format_time, utc_now
    from mediation.warrants.retention import kept_until, period

    years, now, root = _config(args).retention.years, utc_now(), data_dir(args)
    with registry_for(args, KeyNeed.OPTIONAL) as registry:
        warrants = registry.warrants(include_removed=True)
        keyed = registry.key is not None
        if keyed:
            registry.record(AuditEvent("records", None, detail={"warrants": len(warrants)}))
    out = []
    for w in warrants:
        until = kept_until(w, now, years)
        row: dict[str, Any] = {"handle": w.handle, "state": w.state(now).value}
        if w.details is not None:
            row["case_id"] = w.details.case_id
        # Its own period, else the server's; None without the key (it is sealed).
        row["retention_years"] = period(w, years)
        row["retention_default"] = None if w.details is None else w.details.retention is None
        row["retention_until"] = format_time(until) if until else None
        row["streams"] = {}
        for kind in StreamKind:
            stream = stream_records(stream_dir(root, w.handle, kind))
            if stream is not None:
                row["streams"][kind.name.lower()] = stream
        out.append(row)
    return out, keyed


def cmd_records(args: argparse.Namespace) -> int:
    rows, keyed = _rows(args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = []
    for row in rows:
        kept_until = row["retention_until"] or _not_dated(row)
        years = row["retention_years"]
        retain = "?" if years is None else f"{years}y" + (" (default)" * row["retention_default"])
        streams = row["streams"] or {"-": {}}
        for kind, s in streams.items():
            kept = f"{s['first']}..{s['last']}" if s.get("first") is not None else "none"
            purged = s.get("purged")
            gone = f"{purged['first']}..{purged['last']} at {purged['time']}" if purged else None
            line = [row["handle"], row["state"], kind, kept, s.get("bytes"), retain, kept_until]
            table.append(line + [gone] + ([row.get("case_id")] if keyed else []))
    headers = ["HANDLE", "STATE", "STREAM", "KEPT", "BYTES", "RETAIN", "RETENTION-UNTIL", "PURGED"]
    print_table(headers + (["CASE-ID"] if keyed else []), table)
    if not keyed:
        print("(no registry key: each warrant's retention period is sealed; dates need the key)")
    return 0


def _not_dated(row: dict[str, Any]) -> str:
    """What RETENTION-UNTIL says when there is no date."""
    if row["state"] in ("pending", "active"):
        return f"({row['state']}: kept)"
    return "(needs the key)"


def cmd_purge(args: argparse.Namespace) -> int:
    from mediation.server.control import request, socket_path
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.validate import parse_handle

    handle = parse_handle(args.handle)
    with registry_for(args, KeyNeed.REQUIRED, lock=False) as registry:
        key = registry.key
    assert key is not None
    message = {"op": "purge", "handle": handle, "dry_run": bool(args.dry_run)}
    response = request(socket_path(data_dir(args)), message, timeout=600.0)
    if response is None:
        report = _purge_here(args, key, message)
    elif not response.get("ok"):
        return fail(str(response.get("error")))
    else:
        report = response["purge"]
    return _print_report(args, report)


def _purge_here(
    args: argparse.Namespace, key: RegistryKey, message: dict[str, Any]
) -> dict[str, Any]:
    """No server runs: purge ourselves, holding its lock so none starts meanwhile."""
    import trio

    from mediation.log import LOG_KEY_PURPOSE, EvidenceLog, LogKey
    from mediation.server.lock import ServerLock
    from mediation.server.retention import check_due, find_warrant, purge_request
    from mediation.warrants.model import utc_now

    config, root = _config(args), data_dir(args)
    # Refused inside retention before anything is opened or locked: nothing changes.
    check_due(find_warrant(root, key, message["handle"]), utc_now(), config.retention.years)

    async def run() -> dict[str, Any]:
        log_key = LogKey(key.derive(LOG_KEY_PURPOSE))
        async with EvidenceLog.open(root, config.log, key=log_key) as evidence:
            report = await purge_request(evidence, key, message, utc_now(), config.retention.years)
            return report.to_json()

    with ServerLock.acquire(root):
        return trio.run(run)


def _print_report(args: argparse.Namespace, report: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    verb = "would purge" if args.dry_run else "purged"
    parts = [
        f"{kind} {s['first']}..{s['last']} ({s['segments']} segments, {s['bytes']} bytes)"
        for kind, s in report["streams"].items()
    ]
    what = ", ".join(parts) or "nothing (no records left)"
    print(f"{report['handle']}: {verb} {what}; retention ended {report['retention_until']}")
    return 0


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        action=Once,
        help="the server's TOML configuration, for [retention] years "
        "(default: $MEDIATION_CONFIG, else five years)",
    )
    p.add_argument("--json", action="store_true", help="JSON instead of text")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register records and purge."""
    p = subcommand(
        subparsers,
        "records",
        "what the evidence log keeps per warrant, and until when",
        cmd_records,
    )
    _add_config(p)
    p = subcommand(
        subparsers,
        "purge",
        "remove a warrant's records now if past retention (audited)",
        cmd_purge,
    )
    p.add_argument("handle", metavar="HANDLE")
    p.add_argument(
        "--dry-run", action="store_true", help="say what would be removed; remove nothing"
    )
    _add_config(p)
