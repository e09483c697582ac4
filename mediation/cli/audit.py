"""`mediate audit show|verify`: read and check the audit trail.

Neither needs the registry key to run; ``verify`` also authenticates the
registry's anchor when the key is at hand. Registered by ``main.py``.
"""

from __future__ import annotations

import argparse
import json

from mediation.cli.common import data_dir, fail, print_table
from mediation.cli.registry import registry_for, subcommand


def cmd_audit_show(args: argparse.Namespace) -> int:
    from mediation.errors import UsageError
    from mediation.warrants.audit import AuditTrail
    from mediation.warrants.registry import AUDIT_LOG

    path = data_dir(args) / AUDIT_LOG
    if not path.exists():
        raise UsageError("--data-dir", f"no audit trail at {path}")
    entries = AuditTrail(path).entries()
    if args.handle:
        entries = [e for e in entries if e.get("handle") == args.handle]
    if args.last is not None:
        if args.last < 1:
            raise UsageError("--last", "must be 1 or more")
        entries = entries[-args.last :]
    if args.json:
        for entry in entries:
            print(json.dumps(entry, sort_keys=True))
        return 0
    rows = [
        [
            e.get("seq"),
            e.get("time"),
            _who(e),
            e.get("command"),
            e.get("handle"),
            e.get("outcome"),
            _detail(e),
        ]
        for e in entries
    ]
    print_table(["SEQ", "TIME", "USER", "COMMAND", "HANDLE", "OUTCOME", "DETAIL"], rows)
    return 0


def _who(entry: dict) -> str:
    who = f"{entry.get('user')}({entry.get('uid')})"
    return f"{who} via sudo from {entry['sudo_user']}" if entry.get("sudo_user") else who


def _detail(entry: dict) -> str:
    detail = entry.get("detail") or {}
    return " ".join(
        f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in sorted(detail.items())
    )


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from mediation.warrants.access import KeyNeed

    with registry_for(args, KeyNeed.OPTIONAL, lock=True) as registry:
        result = registry.audit.verify(registry.anchor())
        authentic = registry.anchor_authentic()
    if result.problem is not None:
        return fail(f"audit: {result.problem}", 1)
    if authentic is False:
        return fail(
            "audit: the registry's anchor is not authentic "
            "(the registry was edited without the key)",
            1,
        )
    how = (
        "authenticated with the registry key" if authentic else "not authenticated: no registry key"
    )
    print(
        f"audit trail intact: {result.entries} entries; chain verified; "
        f"anchor matches the registry ({how})"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("audit", help="the audit trail: show, verify")
    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = subcommand(
        sub, "show", "print audit entries (handles only, never case data)", cmd_audit_show
    )
    p.add_argument("--handle", metavar="HANDLE", help="only entries for this handle")
    p.add_argument("--last", metavar="N", type=int, help="only the last N entries")
    p.add_argument("--json", action="store_true", help="the entries as JSON lines")
    subcommand(
        sub,
        "verify",
        "check the hash chain and the registry's anchor; exit 1 if broken",
        cmd_audit_verify,
    )
