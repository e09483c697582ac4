"""How records become registry rows and back.

Plaintext columns hold only opaque handles, times and the content level.
Everything else goes into one sealed ``details`` column per row (see
:class:`~mediation.warrants.keys.RegistryKey`), bound to its table, handle
and column. Without the key, rows load with ``details=None``.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

from mediation.warrants.keys import RegistryKey
from mediation.warrants.model import (
    Agency,
    AgencyDetails,
    CaseDetails,
    ContentLevel,
    Endpoint,
    Source,
    Stream,
    Tap,
    Target,
    TargetKind,
    Warrant,
    format_time,
)

SCHEMA = """
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE agencies (
    handle  TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    removed TEXT,
    details BLOB NOT NULL           -- sealed: name, endpoints (with UDP keys)
);
CREATE TABLE warrants (
    handle   TEXT PRIMARY KEY,
    agency   TEXT NOT NULL REFERENCES agencies(handle),
    content  TEXT NOT NULL,
    start    TEXT NOT NULL,
    "end"    TEXT NOT NULL,
    created  TEXT NOT NULL,
    modified TEXT NOT NULL,
    removed  TEXT,
    details  BLOB NOT NULL          -- sealed: case id, targets, sources, IAP, court ref, notes
);
CREATE TABLE taps (
    name             TEXT PRIMARY KEY,
    created          TEXT NOT NULL,
    revoked          TEXT,
    cert_fingerprint TEXT NOT NULL,
    cert_serial      TEXT NOT NULL,
    hmac_key         BLOB NOT NULL  -- sealed
);
"""

# Column order of each table, as the *_row functions return values.
COLUMNS = {
    "agencies": ("handle", "created", "removed", "details"),
    "warrants": (
        "handle",
        "agency",
        "content",
        "start",
        '"end"',
        "created",
        "modified",
        "removed",
        "details",
    ),
    "taps": ("name", "created", "revoked", "cert_fingerprint", "cert_serial", "hmac_key"),
}


def parse_stored_time(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text)


def _time(text: str) -> dt.datetime:
    value = parse_stored_time(text)
    assert value is not None
    return value


# Warrants -------------------------------------------------------------------


def case_to_json(details: CaseDetails) -> dict[str, Any]:
    """The sealed JSON of a warrant; ``retention`` only when the warrant has its own."""
    out: dict[str, Any] = {
        "case_id": details.case_id,
        "targets": [_target_to_json(t) for t in details.targets],
        "sources": [[s.kind, s.value] for s in details.sources],
        "iap": details.iap,
        "court_ref": details.court_ref,
        "notes": details.notes,
    }
    if details.retention is not None:
        out["retention"] = details.retention
    return out


def case_from_json(data: dict[str, Any]) -> CaseDetails:
    return CaseDetails(
        case_id=data["case_id"],
        targets=tuple(_target_from_json(t) for t in data["targets"]),
        sources=tuple(Source(k, v) for k, v in data["sources"]),
        iap=data["iap"],
        court_ref=data["court_ref"],
        notes=data["notes"],
        retention=data.get("retention"),  # absent before per-warrant retention: the server's
    )


def _target_to_json(target: Target) -> list[Any]:
    """``[kind, value]``, plus ``{"vlan": N, "iface": NAME}`` only for a scoped target.

    Unscoped targets keep the two-element form, so registries written before
    scoping existed load unchanged and unscoped rows are written as before.
    """
    if not target.scoped:
        return [target.kind.value, target.value]
    scope = {"vlan": target.vlan, "iface": target.interface}
    return [target.kind.value, target.value, {k: v for k, v in scope.items() if v is not None}]


def _target_from_json(item: list[Any]) -> Target:
    scope = item[2] if len(item) > 2 else {}
    return Target(TargetKind(item[0]), item[1], scope.get("vlan"), scope.get("iface"))


def warrant_row(warrant: Warrant, key: RegistryKey) -> tuple[Any, ...]:
    """Values for ``INSERT OR REPLACE INTO warrants`` in column order."""
    assert warrant.details is not None, "a warrant is only written with its details"
    sealed = key.seal_json(f"warrants/{warrant.handle}/details", case_to_json(warrant.details))
    return (
        warrant.handle,
        warrant.agency,
        warrant.content.value,
        format_time(warrant.start),
        format_time(warrant.end),
        format_time(warrant.created),
        format_time(warrant.modified),
        None if warrant.removed is None else format_time(warrant.removed),
        sealed,
    )


def warrant_from_row(row: sqlite3.Row, key: RegistryKey | None) -> Warrant:
    details = None
    if key is not None:
        details = case_from_json(key.open_json(f"warrants/{row['handle']}/details", row["details"]))
    return Warrant(
        handle=row["handle"],
        agency=row["agency"],
        content=ContentLevel(row["content"]),
        start=_time(row["start"]),
        end=_time(row["end"]),
        created=_time(row["created"]),
        modified=_time(row["modified"]),
        removed=parse_stored_time(row["removed"]),
        details=details,
    )


# Agencies -------------------------------------------------------------------


def agency_to_json(details: AgencyDetails) -> dict[str, Any]:
    return {
        "name": details.name,
        "endpoints": [
            {
                "transport": e.transport,
                "host": e.host,
                "port": e.port,
                "streams": [s.value for s in e.streams],
                "ca_pem": e.ca_pem,
                "fingerprint": e.fingerprint,
                **(
                    {"udp_key_id": e.udp_key_id, "udp_key": e.udp_key.hex()}
                    if e.udp_key is not None
                    else {}
                ),
                **({"udp_format": e.udp_format} if e.udp_format else {}),
            }
            for e in details.endpoints
        ],
    }


def agency_from_json(data: dict[str, Any]) -> AgencyDetails:
    endpoints = tuple(
        Endpoint(
            transport=e["transport"],
            host=e["host"],
            port=e["port"],
            streams=tuple(Stream(s) for s in e["streams"]),
            ca_pem=e["ca_pem"],
            fingerprint=e["fingerprint"],
            # Absent in registries older than sealed UDP delivery.
            udp_key_id=e.get("udp_key_id"),
            udp_key=bytes.fromhex(e["udp_key"]) if e.get("udp_key") else None,
            udp_format=e.get("udp_format"),  # absent: envelopes (before SCTE delivery)
        )
        for e in data["endpoints"]
    )
    return AgencyDetails(name=data["name"], endpoints=endpoints)


def agency_row(agency: Agency, key: RegistryKey) -> tuple[Any, ...]:
    assert agency.details is not None, "an agency is only written with its details"
    sealed = key.seal_json(f"agencies/{agency.handle}/details", agency_to_json(agency.details))
    removed = None if agency.removed is None else format_time(agency.removed)
    return (agency.handle, format_time(agency.created), removed, sealed)


def agency_from_row(row: sqlite3.Row, key: RegistryKey | None) -> Agency:
    details = None
    if key is not None:
        details = agency_from_json(
            key.open_json(f"agencies/{row['handle']}/details", row["details"])
        )
    return Agency(
        handle=row["handle"],
        created=_time(row["created"]),
        removed=parse_stored_time(row["removed"]),
        details=details,
    )


# Taps -----------------------------------------------------------------------


def tap_row(tap: Tap, key: RegistryKey) -> tuple[Any, ...]:
    assert tap.hmac_key is not None, "a tap is only written with its key"
    sealed = key.seal(f"taps/{tap.name}/hmac_key", tap.hmac_key)
    revoked = None if tap.revoked is None else format_time(tap.revoked)
    return (
        tap.name,
        format_time(tap.created),
        revoked,
        tap.cert_fingerprint,
        str(tap.cert_serial),
        sealed,
    )


def tap_from_row(row: sqlite3.Row, key: RegistryKey | None) -> Tap:
    hmac_key = None if key is None else key.open(f"taps/{row['name']}/hmac_key", row["hmac_key"])
    return Tap(
        name=row["name"],
        created=_time(row["created"]),
        cert_fingerprint=row["cert_fingerprint"],
        cert_serial=int(row["cert_serial"]),
        revoked=parse_stored_time(row["revoked"]),
        hmac_key=hmac_key,
    )
