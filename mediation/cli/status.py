"""`mediate status`: what a running server is delivering, per warrant stream and endpoint.

Asks the server over its control socket (``DATA_DIR/run/control.sock``;
run it as the server's user). Needs no registry key: it shows handles,
endpoint numbers and transports, counters and states, never an address
(``mediate agency show`` says which endpoint is which, with the key).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from mediation.cli.common import add_data_dir

HEADERS = (
    "HANDLE",
    "STREAM",
    "AGENCY",
    "ENDPOINT",
    "APPENDED",
    "DELIVERED",
    "ACKED",
    "LOST",
    "BACKLOG",
    "STATE",
    "ERROR",
)


def _row(row: dict[str, Any]) -> list[Any]:
    lost = row.get("lost")
    if lost is not None and not row.get("exact", True):
        lost = f"<={lost}"
    return [
        row["handle"],
        row["stream"],
        row["agency"],
        f"{row['transport']}#{row['endpoint']}",
        row["appended"],
        row["delivered"],
        row.get("acknowledged"),
        lost,
        row["backlog"],
        row["state"],
        row.get("last_error"),
    ]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "none"


def _taps(status: dict[str, Any]) -> list[str]:
    """The tap link's lines: listeners and links, then what was refused and lost."""
    taps = status.get("taps")
    if not taps:
        return []
    where = f"tls {taps.get('tls_listening') or 'off'}, udp {taps.get('udp_listening') or 'off'}"
    connected = ", ".join(status.get("taps_connected") or []) or "none"
    return [
        f"taps: {where}; connected: {connected}; batches {taps.get('batches', 0)}",
        f"taps refused: PDUs: {_counts(taps.get('refused_pdus') or {})}; "
        f"links: {_counts(taps.get('refused_links') or {})}; "
        f"datagrams: {_counts(taps.get('refused_datagrams') or {})}",
        f"taps upstream lost: {_counts(taps.get('upstream_lost') or {})}",
    ]


def _tzsp(status: dict[str, Any]) -> list[str]:
    """The TZSP listener's lines (docs/tzsp.md), and the RADIUS listener's when it runs."""
    tzsp, lines = status.get("tzsp"), []
    if tzsp:
        lines += [
            f"tzsp: udp {tzsp.get('listening') or 'off'}; sources {tzsp['sources']}, "
            f"feeding {tzsp['feeding']}; datagrams {tzsp['datagrams']}, frames {tzsp['frames']}, "
            f"passed over {tzsp.get('passed_over') or 0}, "
            f"malformed {tzsp['malformed']}, socket drops {tzsp.get('socket_drops') or 0}",
            f"tzsp refused: datagrams: oversize {tzsp['oversize']}, "
            f"{_counts(tzsp.get('refused_datagrams') or {})}; "
            f"PDUs: {_counts(tzsp.get('refused_pdus') or {})}",
        ]
    radius = status.get("radius")
    if radius:
        lines.append(
            f"radius: udp {radius.get('listening') or 'off'}; requests {radius['requests']}, "
            f"answered {radius['answered']}; refused: {_counts(radius.get('refused') or {})}"
        )
    return lines


def _summary(status: dict[str, Any]) -> list[str]:
    lines = [f"server: pid {status.get('pid')}, since {status.get('started')}"]
    if status.get("reloads"):
        lines[0] += f"; reloaded (SIGHUP) {status['reloads']} times"
    ingest = status.get("ingest")
    if ingest:
        refused = {k: v for k, v in ingest.items() if k not in ("accepted", "notices") and v}
        text = ", ".join(f"{k} {v}" for k, v in refused.items()) or "none"
        lines.append(
            f"ingest: accepted {ingest['accepted']}, notices {ingest['notices']}; refused: {text}"
        )
    if status.get("clock"):
        lines.append(f"clock: {status['clock']}")
    retrieval = status.get("retrieval")
    if retrieval:
        where = retrieval.get("listening") or f"off ({retrieval.get('error')})"
        reasons = retrieval.get("refused_by_reason") or {}
        why = ", ".join(f"{reason} {count}" for reason, count in reasons.items())
        lines.append(
            f"retrieval: {where}; connections {retrieval['connections']}, "
            f"refused {retrieval['refused']}"
            + (f" ({why})" if why else "")
            + (
                f", requests limited {retrieval['limited']}, failed {retrieval['failed']}"
                if "limited" in retrieval
                else ""
            )
        )
    lines += _taps(status)
    lines += _tzsp(status)
    control = status.get("control")
    if control:
        refused = ", ".join(f"{k} {v}" for k, v in control["refused"].items() if v) or "none"
        lines.append(f"control: answered {control['answered']}; refused: {refused}")
    for endpoint, refused in sorted((status.get("udp_refused") or {}).items()):
        text = ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items()))
        lines.append(f"udp {endpoint}: datagrams refused: {text}")
    bad = {k: v for k, v in (status.get("storage") or {}).items() if v != "ok"}
    lines += [f"storage: {k}: {v}" for k, v in sorted(bad.items())]
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    from mediation.cli.common import data_dir, print_table
    from mediation.errors import UsageError
    from mediation.server.control import ControlError, request, socket_path

    directory = data_dir(args)
    try:
        response = request(socket_path(directory), {"op": "status"})
    except ControlError as exc:
        raise UsageError("status", str(exc)) from None
    if response is None:
        raise UsageError(
            "status",
            f"no server is running on {directory} "
            f"(start one with: mediate serve --data-dir {directory})",
        )
    if not response.get("ok"):
        raise UsageError("status", f"refused: {response.get('error')}")
    if args.json:
        print(json.dumps(response, indent=2, sort_keys=True))
        return 0
    for line in _summary(response):
        print(line)
    rows = response.get("delivery") or []
    if not rows:
        print("delivery: nothing (no active warrant with an agency endpoint)")
        return 0
    print_table(HEADERS, [_row(r) for r in rows])
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    summary = "what a running server delivers, per warrant stream and agency endpoint"
    p = subparsers.add_parser("status", help=summary, description=summary)
    add_data_dir(p)
    p.add_argument("--json", action="store_true", help="the server's whole answer as JSON")
    p.set_defaults(func=cmd_status)
