"""``mediate confirm HANDLE``: whom the intercept followed, read back from the evidence log."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mediation.cli.common import data_dir, fail
from mediation.cli.registry import registry_for, subcommand
from mediation.errors import UsageError

CONFIRM_HELP = """\
Print the warrant's confirmation record: the targets it named (when it
became active, and each change by `mediate modify`), every DHCP lease and
RADIUS session the taps followed (address, MAC or user, session id, start
and end), the frame that showed each (SHA-256, capture time, and the frame
itself for a full-content warrant), and the completeness notices; then the
addresses held, period by period. Everything comes from the warrant's CmII
stream of the evidence log (signed and hash-chained: `mediate log verify`),
read as files: no server is needed, and a running one is not disturbed.
Needs the registry key. Exit status: 0 printed, 1 the log is damaged, 2 a
usage error.
"""
EXIT_DAMAGED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mediate confirm``."""
    parser = subcommand(
        subparsers, "confirm", "print whom a warrant's intercept followed, from the log", run
    )
    parser.description = CONFIRM_HELP
    parser.add_argument("handle", metavar="HANDLE", help="the warrant (w-3f9a1c)")
    parser.add_argument("--json", action="store_true", help="one JSON object, for machines")


def run(args: argparse.Namespace) -> int:
    """Print the record; see :data:`CONFIRM_HELP` for the exit status.

    Raises:
        UsageError: a bad handle, an unknown warrant, or no usable key.
    """
    from mediation.evidence.confirmation import address_periods, confirmation_records
    from mediation.log import LogCorrupted
    from mediation.log.crypto import LOG_KEY_PURPOSE, LogKey, WrongLogKey
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.audit import AuditEvent
    from mediation.warrants.validate import parse_handle

    handle = parse_handle(args.handle)
    with registry_for(args, KeyNeed.REQUIRED) as registry:
        if registry.warrant(handle) is None:
            raise UsageError("HANDLE", f"no warrant {handle} in this registry (see `mediate list`)")
        assert registry.key is not None
        key = LogKey(registry.key.derive(LOG_KEY_PURPOSE))
        registry.record(AuditEvent("confirm", handle))
    try:
        records = confirmation_records(data_dir(args), key, handle)
    except WrongLogKey as exc:
        raise UsageError("--key-file", str(exc)) from None
    except (LogCorrupted, OSError) as exc:
        return fail(f"{handle}: the CmII log cannot be read whole: {exc}", EXIT_DAMAGED)
    periods = address_periods(records)
    if args.json:
        print(json.dumps({"handle": handle, "records": records, "periods": periods}, indent=2))
        return 0
    _print_timeline(handle, records, periods)
    return 0


def _print_timeline(handle: str, records: list[dict[str, Any]], periods: list[dict]) -> None:
    if not records:
        print(f"{handle}: no CmII records here (the warrant was never active on this server)")
        return
    print(f"{handle}: how the target was identified (CmII sequence numbers in brackets)")
    print()
    for i, entry in enumerate(records):
        print(f"{entry['time']}  [{entry['seq']}]  {_describe(entry)}")
        frames = entry.get("frames", ())
        if i + 1 < len(records) and records[i + 1].get("frames") == frames:
            continue  # one frame, several events: named once, after the last
        for frame in frames:
            kept = ", frame kept" if "octets" in frame else ""
            print(
                f"{'':30}shown by {frame['proto']} {frame['what']} captured {frame['captured']}"
                f" ({frame['length']} octets{kept}) sha256 {frame['sha256']}"
            )
    print()
    if not periods:
        print("Addresses held: none followed")
        return
    print("Addresses held:")
    for p in periods:
        end = p["end"] or "(not ended in the record)"
        reason = f" ({p['end_reason']})" if p["end_reason"] else ""
        held = "held before " if p["already_held"] else ""
        session = f" session {p['session']}" if p["session"] else ""
        print(
            f"  {p['address']}  {p['source']} {p['subscriber']}{session}:"
            f" {held}{p['start']} [{p['start_seq']}] .. {end}{reason}"
        )


def _describe(entry: dict[str, Any]) -> str:
    """One line for one entry."""
    event = entry["event"]
    if event == "targets":
        return f"targets ({entry['reason']}): {', '.join(entry['targets']) or 'none'}"
    if entry["source"] == "notice":
        parts = [f"notice {event}"]
        parts += [f"{k}={entry[k]}" for k in ("from", "lost_count") if k in entry]
        if "detail" in entry:
            parts.append(f"({entry['detail']})")
        return " ".join(parts)
    parts = [entry["source"].upper(), event]
    if entry.get("address"):
        prefix = entry.get("prefix_len")
        parts.append(entry["address"] + (f"/{prefix}" if prefix is not None else ""))
    if entry.get("subscriber"):
        parts.append(entry["subscriber"])
    for name in ("session", "access_session", "nas", "reason"):
        if entry.get(name):
            parts.append(f"{name.replace('_', '-')}={entry[name]}")
    if entry.get("detail"):
        parts.append(f"({entry['detail']})")
    return " ".join(parts)
