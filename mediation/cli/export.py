"""``mediate export`` and ``mediate verify``: evidence bundles for an agency or a court.

``export HANDLE --out DIR`` needs the registry key (the log is encrypted
at rest; the bundle is not) and the server's signing key in the data
directory; it reads the log's files directly, so it works with or without
a running server. ``verify`` needs neither: only the bundle, and
preferably the agency's own copy of the server's public key (``--key``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mediation.cli.common import Once, data_dir
from mediation.cli.registry import registry_for, subcommand
from mediation.errors import UsageError

if TYPE_CHECKING:
    from mediation.evidence.export import ExportResult
    from mediation.warrants.keys import RegistryKey
    from mediation.warrants.model import Warrant
    from mediation.warrants.registry import WarrantRegistry

EXPORT_HELP = """\
Write one warrant's evidence to a new directory: its records (decrypted) and
the signed checkpoints that prove them, the pcap and JSON views, the server's
public key, the warrant's audit entries, completeness notices and gaps, any
capture files, SHA256SUMS signed by the server, and a README on checking it.
The bundle holds case data: handle it as evidence.
"""

VERIFY_HELP = """\
Check an export bundle (or an agency receiver's output, or a files endpoint's
directory) with nothing but the server's public key: every hash, signature
and chain link, and the sequence coverage. Exit status: 0 complete, 3 sound
but with gaps (listed), 1 altered (the file and record named), 2 usage.
"""



def _time(text: str | None, field: str) -> dt.datetime | None:
    from mediation.warrants.validate import parse_time

    return None if text is None else parse_time(text, field, dt.datetime.now(dt.UTC))


def cmd_export(args: argparse.Namespace) -> int:
    from mediation.evidence.export import (
        Attachments,
        ExportError,
        ExportRequest,
        check_out_dir,
        export_bundle,
    )
    from mediation.log import LOG_KEY_PURPOSE, LogKey
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.audit import AuditEvent
    from mediation.warrants.validate import parse_handle

    handle = parse_handle(args.handle)
    out = Path(args.out)
    since, until = _time(args.since, "--from"), _time(args.until, "--to")
    if since is not None and until is not None and until < since:
        raise UsageError("--to", "must not be before --from")
    try:
        check_out_dir(out)
    except ExportError as exc:
        raise UsageError("--out", str(exc)) from None
    root = data_dir(args)
    signer = _signer(root)
    with registry_for(args, KeyNeed.REQUIRED) as registry:
        warrant = registry.warrant(handle)
        if warrant is None:
            raise UsageError("HANDLE", f"no warrant {handle} (see `mediate list --all`)")
        key: RegistryKey = registry.key  # type: ignore[assignment]
        attachments = Attachments(
            [e for e in registry.audit.entries() if e.get("handle") == handle],
            _capture_dirs(registry, warrant),
            _confirmation(root, key, handle),
        )
        request = ExportRequest(root, handle, out, since, until)
        log_key = LogKey(key.derive(LOG_KEY_PURPOSE))
        try:
            result = export_bundle(request, log_key, signer, attachments, dt.datetime.now(dt.UTC))
        except ExportError as exc:
            raise UsageError("HANDLE", str(exc)) from None
        try:
            registry.record(AuditEvent("export", handle, detail=_detail(result)))
        except BaseException:
            shutil.rmtree(result.out, ignore_errors=True)  # no export without its audit entry
            raise
    _print(handle, result)
    return 0


def _signer(root: Path) -> Any:
    """The server's log-signing key; never created here (no log, nothing to sign for)."""
    from mediation.log.errors import LogError
    from mediation.log.keys import key_path, load_or_create_signer

    if not key_path(root).is_file():
        raise UsageError("--data-dir", f"no log-signing key at {key_path(root)}: no log here")
    try:
        return load_or_create_signer(root)
    except LogError as exc:
        raise UsageError("--data-dir", str(exc)) from None


def _capture_dirs(registry: WarrantRegistry, warrant: Warrant) -> list[Path]:
    """``DIR/HANDLE`` of each files endpoint of the warrant's agency that has one."""
    agency = registry.agency(warrant.agency)
    details = agency.details if agency is not None else None
    found = []
    for endpoint in details.endpoints if details is not None else ():
        if endpoint.transport != "files":
            continue
        directory = Path(endpoint.host) / warrant.handle  # a files endpoint's host: its DIR
        if directory.is_dir():
            found.append(directory)
    return found


def _confirmation(root: Path, key: RegistryKey, handle: str) -> dict[str, Any] | None:
    """The confirmation record (`mediate confirm --json`'s shape), or None if it has none."""
    from mediation.evidence.confirmation import address_periods, confirmation_records
    from mediation.log.crypto import LOG_KEY_PURPOSE, LogKey

    records = confirmation_records(root, LogKey(key.derive(LOG_KEY_PURPOSE)), handle)
    if not records:
        return None
    return {"handle": handle, "records": records, "periods": address_periods(records)}


def _detail(result: ExportResult) -> dict[str, Any]:
    """Counts for the audit entry: ranges and file count, never case data or paths."""
    streams = {
        s.stream.kind.name.lower(): [s.first, s.last] for s in result.spans if s.first is not None
    }
    return {"streams": streams, "files": result.files}


def _print(handle: str, result: ExportResult) -> None:
    parts = []
    for span in result.spans:
        name = span.stream.kind.name.lower()
        parts.append(f"{name} {span.first}..{span.last}" if span.first is not None else f"{name} -")
    print(f"{handle}: exported {', '.join(parts)} to {result.out} ({result.files} files)")
    for span in result.spans:
        for gap in span.gaps():
            name = span.stream.kind.name.lower()
            print(f"{handle}/{name}: not in the bundle: {gap['first']}..{gap['last']} {gap['why']}")


def cmd_verify(args: argparse.Namespace) -> int:
    from mediation.evidence.verify import verify_path
    from mediation.lea.verify import VerifyError
    from mediation.log.errors import LogError
    from mediation.log.keys import load_public_key

    path = Path(args.path)
    if not path.is_dir():
        raise UsageError("BUNDLE", f"{path}: not a directory")
    trusted = None
    if args.key is not None:
        try:
            trusted = load_public_key(Path(args.key))
        except LogError as exc:
            raise UsageError("--key", str(exc)) from None
    try:
        lines, status = verify_path(path, trusted)
    except VerifyError as exc:
        raise UsageError("BUNDLE", str(exc)) from None
    for line in lines:
        print(line)
    return status


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register export and verify."""
    p = subcommand(subparsers, "export", "write a warrant's evidence bundle", cmd_export)
    p.description = EXPORT_HELP
    p.add_argument("handle", metavar="HANDLE")
    p.add_argument("--out", metavar="DIR", required=True, action=Once, help="a new directory")
    p.add_argument(
        "--from",
        dest="since",
        metavar="TIME",
        action=Once,
        help="records received at or after TIME (ISO 8601 with Z or an offset, or a date)",
    )
    p.add_argument(
        "--to", dest="until", metavar="TIME", action=Once, help="records received up to TIME"
    )
    v = subparsers.add_parser(
        "verify", help="check an export bundle (hashes, signatures, chain)", description=VERIFY_HELP
    )
    v.add_argument("path", metavar="BUNDLE", help="an export bundle or a receiver's output dir")
    v.add_argument(
        "--key",
        metavar="PEM",
        action=Once,
        help="your trusted copy of the server's public key; the bundle must match it",
    )
    v.set_defaults(func=cmd_verify)
