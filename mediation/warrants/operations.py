"""What the carrier's commands do to the registry, checked before anything is written.

Each function takes parsed values (see ``validate.py``), checks them
against what the registry already holds (the agency exists, the case
identity is not in use, the taps are registered), then makes one audited
write. Any refusal is a :class:`~mediation.errors.UsageError` raised before
the write, so a refused command leaves the registry and the audit trail
byte for byte as they were.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from mediation.errors import UsageError
from mediation.warrants.audit import AuditEvent
from mediation.warrants.authority import (
    TapAuthority,
    TapCredentials,
    write_bundle,
)
from mediation.warrants.model import (
    Agency,
    AgencyDetails,
    CaseDetails,
    ContentLevel,
    Endpoint,
    Source,
    Tap,
    Target,
    Warrant,
    WarrantState,
)
from mediation.warrants.registry import WarrantRegistry
from mediation.warrants.retention import DEFAULT_YEARS, check_not_earlier
from mediation.warrants.udpkey import new_udp_key
from mediation.warrants.validate import check_window


@dataclasses.dataclass(frozen=True)
class WarrantChanges:
    """What ``mediate modify`` asks for; None leaves a field as it is."""

    case_id: str | None = None
    content: ContentLevel | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    targets: tuple[Target, ...] | None = None  # the whole new list of targets
    sources: tuple[Source, ...] | None = None
    iap: str | None = None
    court_ref: str | None = None
    notes: str | None = None
    retention: int | None = None  # years kept after the end (validate.parse_retention)


def _agency(registry: WarrantRegistry, ref: str | None, field: str = "--agency") -> Agency:
    if not ref:
        raise UsageError(field, "required: the agency's name or handle (see `mediate agency list`)")
    agency = registry.find_agency(ref)
    if agency is None:
        raise UsageError(
            field, "no such agency; see `mediate agency list`, or add it with `mediate agency add`"
        )
    return agency


def _check_sources(registry: WarrantRegistry, sources: tuple[Source, ...]) -> None:
    for index, source in enumerate(sources):
        if source.kind != "tap":
            continue
        tap = registry.tap(source.value)
        if tap is None:
            raise UsageError(f"--tap #{index + 1}", "no tap by that name; see `mediate tap list`")
        if tap.revoked is not None:
            raise UsageError(f"--tap #{index + 1}", "that tap is revoked; register a new one")


def _check_unique_case(
    registry: WarrantRegistry, agency: str, case_id: str, now: dt.datetime, skip: str | None = None
) -> None:
    """One live warrant per (agency, case identity): an extension modifies the end instead."""
    for other in registry.warrants(include_removed=False):
        if other.handle == skip or other.agency != agency or other.details is None:
            continue
        if other.details.case_id == case_id and other.state(now) is not WarrantState.EXPIRED:
            raise UsageError(
                "--case-id",
                f"already used for this agency by {other.handle}; "
                f"to extend it use `mediate modify {other.handle} --end TIME`",
            )


def add_warrant(
    registry: WarrantRegistry,
    agency_ref: str | None,
    details: CaseDetails,
    content: ContentLevel,
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
) -> Warrant:
    """Register a warrant; returns it with its new handle."""
    agency = _agency(registry, agency_ref)
    if end <= now:
        raise UsageError("--end", "is in the past: the warrant would never be active")
    check_window(start, end)
    _check_sources(registry, details.sources)
    _check_unique_case(registry, agency.handle, details.case_id, now)
    handle = registry.new_handle("w")
    warrant = Warrant(handle, agency.handle, content, start, end, now, now, None, details)
    detail: dict[str, object] = {
        "targets": len(details.targets),
        "content": content.value,
        "state": warrant.state(now).value,
    }
    if details.retention is not None:
        detail["retention_years"] = details.retention
    registry.save_warrant(warrant, AuditEvent("add", handle, detail=detail))
    return warrant


def existing_warrant(registry: WarrantRegistry, handle: str) -> Warrant:
    warrant = registry.warrant(handle)
    if warrant is None:
        raise UsageError("HANDLE", f"no warrant {handle}; see `mediate list`")
    return warrant


def modify_warrant(
    registry: WarrantRegistry,
    handle: str,
    changes: WarrantChanges,
    now: dt.datetime,
    default_retention: int = DEFAULT_YEARS,
) -> tuple[Warrant, list[str]]:
    """Apply ``changes``; returns the new warrant and the names of the fields that changed.

    A removed warrant may only have its retention lengthened. Once a warrant
    has ended, nothing may bring its retention date forward.

    Args:
        default_retention: the server's ``[retention] years``, the period of
            a warrant without its own.

    Raises:
        UsageError: unknown or removed handle, a bad window, an unknown tap,
            a case id in use, retention shortened after the end, or no change.
    """
    old = existing_warrant(registry, handle)
    if old.removed is not None and changes != WarrantChanges(retention=changes.retention):
        raise UsageError(
            "HANDLE", f"{handle} was removed; of a removed warrant only --retention can change"
        )
    assert old.details is not None
    details = dataclasses.replace(
        old.details,
        **{
            name: getattr(changes, name)
            for name in ("case_id", "targets", "sources", "iap", "court_ref", "notes", "retention")
            if getattr(changes, name) is not None
        },
    )
    new = dataclasses.replace(
        old,
        content=changes.content or old.content,
        start=changes.start or old.start,
        end=changes.end or old.end,
        details=details,
    )
    check_window(new.start, new.end)
    check_not_earlier(old, new, now, default_retention)
    _check_sources(registry, details.sources)
    if details.case_id != old.details.case_id:
        _check_unique_case(registry, old.agency, details.case_id, now, skip=handle)
    changed = [f for f in ("content", "start", "end") if getattr(new, f) != getattr(old, f)]
    changed += [
        f.name
        for f in dataclasses.fields(details)
        if getattr(details, f.name) != getattr(old.details, f.name)
    ]
    if not changed:
        raise UsageError("modify", "nothing would change: the values given are the ones stored")
    new = dataclasses.replace(new, modified=now)
    detail: dict[str, object] = {"fields": changed}
    if "retention" in changed:  # the promise an ended warrant's records are kept by
        detail["retention_years"] = details.retention
    registry.save_warrant(new, AuditEvent("modify", handle, detail=detail))
    return new, changed


def remove_warrant(registry: WarrantRegistry, handle: str, now: dt.datetime) -> Warrant:
    """Mark removed: it stops at once, but the record is kept (recordkeeping)."""
    old = existing_warrant(registry, handle)
    if old.removed is not None:
        raise UsageError("HANDLE", f"{handle} was already removed")
    new = dataclasses.replace(old, removed=now, modified=now)
    registry.save_warrant(new, AuditEvent("remove", handle, detail={"was": old.state(now).value}))
    return new


def add_agency_endpoint(
    registry: WarrantRegistry, name: str, endpoint: Endpoint, field: str, now: dt.datetime
) -> tuple[Agency, bool]:
    """Add ``endpoint`` to agency ``name``, created if new. Returns (agency, created).

    A UDP endpoint without a key gets a new one (see :func:`udp_key_ids`).
    """
    if endpoint.transport == "udp" and endpoint.udp_key is None:
        key_id, key = new_udp_key(udp_key_ids(registry))
        endpoint = dataclasses.replace(endpoint, udp_key_id=key_id, udp_key=key)
    agency = registry.find_agency(name)
    if agency is None:
        agency = Agency(registry.new_handle("a"), now, None, AgencyDetails(name, (endpoint,)))
        registry.save_agency(
            agency, AuditEvent("agency add", agency.handle, detail={"endpoints": 1})
        )
        return agency, True
    assert agency.details is not None
    for old in agency.details.endpoints:
        if (old.transport, old.host, old.port) == (
            endpoint.transport,
            endpoint.host,
            endpoint.port,
        ):
            raise UsageError(field, f"agency {agency.handle} already has this endpoint")
    details = dataclasses.replace(agency.details, endpoints=(*agency.details.endpoints, endpoint))
    agency = dataclasses.replace(agency, details=details)
    event = AuditEvent("agency add", agency.handle, detail={"endpoints": len(details.endpoints)})
    registry.save_agency(agency, event)
    return agency, False


def udp_key_ids(registry: WarrantRegistry) -> set[int]:
    """The key ids of every UDP endpoint, removed agencies' too: a new one differs."""
    return {
        e.udp_key_id
        for agency in registry.agencies(include_removed=True)
        if agency.details is not None
        for e in agency.details.endpoints
        if e.udp_key_id is not None
    }


def udp_endpoint(agency: Agency, address: tuple[str, int] | None) -> tuple[int, Endpoint]:
    """The agency's UDP endpoint at ``address``, or its only one; with its index.

    Raises:
        UsageError: none, or several and no ``--endpoint`` to choose.
    """
    assert agency.details is not None
    found = [
        (i, e)
        for i, e in enumerate(agency.details.endpoints)
        if e.transport == "udp" and (address is None or (e.host, e.port) == address)
    ]
    if not found:
        where = "at that address" if address else "at all"
        raise UsageError("--endpoint", f"agency {agency.handle} has no UDP endpoint {where}")
    if len(found) > 1:
        raise UsageError("--endpoint", "the agency has several UDP endpoints: choose one HOST:PORT")
    return found[0]


def udp_key_for(
    registry: WarrantRegistry, ref: str, address: tuple[str, int] | None, renew: bool
) -> tuple[Agency, Endpoint, bool]:
    """An agency UDP endpoint's key, created if it has none or ``renew``; audited.

    Returns:
        The agency, the endpoint with its key, and whether the key is new
        (a running server then seals with it after its next reload).
    """
    agency = _agency(registry, ref, "NAME")
    assert agency.details is not None
    index, endpoint = udp_endpoint(agency, address)
    made = renew or endpoint.udp_key is None
    if made:
        key_id, key = new_udp_key(udp_key_ids(registry))
        endpoint = dataclasses.replace(endpoint, udp_key_id=key_id, udp_key=key)
        endpoints = list(agency.details.endpoints)
        endpoints[index] = endpoint
        details = dataclasses.replace(agency.details, endpoints=tuple(endpoints))
        agency = dataclasses.replace(agency, details=details)
    event = AuditEvent(
        "agency udp-key",
        agency.handle,
        detail={"endpoint": index + 1, "key_id": f"{endpoint.udp_key_id:08x}", "new": made},
    )
    if made:
        registry.save_agency(agency, event)
    else:
        registry.record(event)  # handing a key out is recorded too
    return agency, endpoint, made


def remove_agency(
    registry: WarrantRegistry, ref: str, endpoint: tuple[str, int] | None, now: dt.datetime
) -> Agency:
    """Remove one endpoint, or the whole agency if no live warrant still names it."""
    agency = _agency(registry, ref, "NAME")
    assert agency.details is not None
    if endpoint is not None:
        kept = tuple(e for e in agency.details.endpoints if (e.host, e.port) != endpoint)
        if len(kept) == len(agency.details.endpoints):
            raise UsageError("--endpoint", f"agency {agency.handle} has no such endpoint")
        if not kept:
            raise UsageError(
                "--endpoint", "that is the agency's last endpoint; remove the agency instead"
            )
        agency = dataclasses.replace(
            agency, details=dataclasses.replace(agency.details, endpoints=kept)
        )
        registry.save_agency(
            agency, AuditEvent("agency remove", agency.handle, detail={"endpoints": len(kept)})
        )
        return agency
    live = [
        w.handle
        for w in registry.warrants(include_removed=False)
        if w.agency == agency.handle and w.state(now) is not WarrantState.EXPIRED
    ]
    if live:
        raise UsageError("NAME", f"still named by {', '.join(live)}; remove those warrants first")
    agency = dataclasses.replace(agency, removed=now)
    registry.save_agency(agency, AuditEvent("agency remove", agency.handle))
    return agency


def register_tap(
    registry: WarrantRegistry,
    authority: TapAuthority,
    name: str,
    out: Path,
    server: str,
    now: dt.datetime,
    server_ca_pem: str,
) -> TapCredentials:
    """Issue a tap's credentials, write its bundle to ``out`` (0600), and register it.

    ``server_ca_pem`` goes into the bundle: the CA the tap verifies the server by.
    """
    if registry.tap(name) is not None:
        raise UsageError(
            "NAME", "a tap by that name exists (revoked taps keep their name); choose another"
        )
    if out.exists():
        raise UsageError("--out", f"{out} exists; choose another file or move it away")
    if not out.parent.is_dir():
        raise UsageError("--out", f"{out.parent} is not a directory")
    credentials = authority.issue_tap(name, now, server, server_ca_pem=server_ca_pem)
    write_bundle(out, credentials)
    fingerprint = credentials.fingerprint
    tap = Tap(name, now, fingerprint, credentials.serial, None, credentials.hmac_key)
    try:
        registry.save_tap(tap, AuditEvent("tap register", f"tap:{name}"))
    except BaseException:
        out.unlink(missing_ok=True)  # nothing written: no orphan private key either
        raise
    return credentials


def revoke_tap(registry: WarrantRegistry, name: str, now: dt.datetime) -> Tap:
    tap = registry.tap(name)
    if tap is None:
        raise UsageError("NAME", "no tap by that name; see `mediate tap list`")
    if tap.revoked is not None:
        raise UsageError("NAME", "that tap is already revoked")
    tap = dataclasses.replace(tap, revoked=now)
    registry.save_tap(tap, AuditEvent("tap revoke", f"tap:{name}"))
    return tap
