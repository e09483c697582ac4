"""Warrants, agencies and taps as frozen records.

Each record is split in two: the fields the registry keeps in plaintext
(opaque handles, times, the content level) and the fields that would
identify a case, grouped in a ``...Details`` record that the registry only
ever stores encrypted. A record loaded without the key has ``details``
set to ``None``: handles, state and times are still there, nothing else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any


class Stream(enum.Enum):
    """A warrant stream: CmII (identifying information) or CmCC (content)."""

    CMII = "cmii"
    CMCC = "cmcc"


class ContentLevel(enum.Enum):
    """What the court order allows: headers only (a pen register) or full content."""

    HEADERS = "headers"
    FULL = "full"

    @property
    def streams(self) -> tuple[Stream, ...]:
        """The streams a warrant of this level produces."""
        if self is ContentLevel.FULL:
            return (Stream.CMII, Stream.CMCC)
        return (Stream.CMII,)


class WarrantState(enum.Enum):
    """Where a warrant stands; derived from its window and the clock, never stored."""

    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"
    REMOVED = "removed"


class TargetKind(enum.Enum):
    ADDRESS = "address"
    PREFIX = "prefix"
    MAC = "mac"
    INTERFACE = "interface"
    USER = "user"  # a subscriber's user name, followed through RADIUS accounting


_PREFIXES = {TargetKind.INTERFACE: "iface:", TargetKind.USER: "user:"}


@dataclasses.dataclass(frozen=True, order=True)
class Target:
    """One thing to intercept, in normalised text form (see ``target_text.parse_target``).

    ``vlan`` and ``interface`` narrow it (AND): a target scoped to VLAN 100
    matches only frames whose outermost 802.1Q/802.1ad tag is 100, one
    scoped to an interface only frames captured there. Written
    ``192.0.2.10@vlan:100``, ``192.0.2.10@iface:eth1`` or both.
    """

    kind: TargetKind
    value: str
    vlan: int | None = None
    interface: str | None = None

    @property
    def scoped(self) -> bool:
        """Whether a VLAN or an interface narrows this target."""
        return self.vlan is not None or self.interface is not None

    def __str__(self) -> str:
        text = _PREFIXES.get(self.kind, "") + self.value
        if self.vlan is not None:
            text += f"@vlan:{self.vlan}"
        if self.interface is not None:
            text += f"@iface:{self.interface}"
        return text


@dataclasses.dataclass(frozen=True, order=True)
class Source:
    """Where a warrant's traffic comes from: a registered tap or a TZSP sender."""

    kind: str  # "tap" or "tzsp"
    value: str  # tap name, or the TZSP sender's IP address

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One place an agency receives streams: UDP, or TLS with its CA or a pinned fingerprint.

    A UDP endpoint has its sealing key (``udp_key``, 32 octets, and its
    4-octet ``udp_key_id``): created when it is registered; None only in a
    registry older than sealing (``mediate agency udp-key`` creates one).
    """

    transport: str  # "udp", "tls" or "files" (host: the directory, port 0)
    host: str
    port: int
    streams: tuple[Stream, ...]
    ca_pem: str | None = None
    fingerprint: str | None = None  # SHA-256 of the certificate (DER), lower-case hex
    udp_key_id: int | None = None
    udp_key: bytes | None = dataclasses.field(default=None, repr=False)
    udp_format: str | None = None  # "scte": CC as SCTE datagrams (protocol/scte.py)

    @property
    def address(self) -> str:
        """``host:port``, with IPv6 literals bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def describe(self) -> str:
        """One line for people: transport, address, streams and how TLS is verified."""
        streams = ",".join(s.value for s in self.streams)
        if self.transport == "files":
            return f"files {self.host} streams={streams}"
        text = f"{self.transport} {self.address} streams={streams}"
        if self.fingerprint:
            text += f" fingerprint=sha256:{self.fingerprint}"
        elif self.ca_pem:
            text += " ca=(certificate stored)"
        if self.transport == "udp":
            text += f" key={self.udp_key_id:08x}" if self.udp_key else " key=NONE"
            text += f" format={self.udp_format}" if self.udp_format else ""
        return text


@dataclasses.dataclass(frozen=True)
class AgencyDetails:
    """What would identify an agency: its name and addresses. Stored encrypted."""

    name: str
    endpoints: tuple[Endpoint, ...]


@dataclasses.dataclass(frozen=True)
class Agency:
    handle: str
    created: dt.datetime
    removed: dt.datetime | None = None
    details: AgencyDetails | None = None


@dataclasses.dataclass(frozen=True)
class CaseDetails:
    """What would identify a case. Stored encrypted; in memory only with the key."""

    case_id: str
    targets: tuple[Target, ...]
    sources: tuple[Source, ...] = ()
    iap: str | None = None
    court_ref: str | None = None
    notes: str | None = None
    # Years its records are kept after it ends (warrants/retention.py);
    # None: the server's [retention] years.
    retention: int | None = None


@dataclasses.dataclass(frozen=True)
class Warrant:
    """A registered court order, known everywhere outside the registry by ``handle``."""

    handle: str
    agency: str  # the agency's opaque handle
    content: ContentLevel
    start: dt.datetime
    end: dt.datetime
    created: dt.datetime
    modified: dt.datetime
    removed: dt.datetime | None = None
    details: CaseDetails | None = None

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        """A JSON view for people and scripts; case fields only when the details are loaded."""
        out: dict[str, Any] = {"handle": self.handle, "state": self.state(now).value}
        if self.details is None:
            return out
        d = self.details
        out.update(
            case_id=d.case_id,
            agency=self.agency,
            content=self.content.value,
            start=format_time(self.start),
            end=format_time(self.end),
            targets=[str(t) for t in d.targets],
            sources=[str(s) for s in d.sources],
            iap=d.iap,
            court_ref=d.court_ref,
            notes=d.notes,
            retention_years=d.retention,
            created=format_time(self.created),
            modified=format_time(self.modified),
            removed=format_time(self.removed) if self.removed else None,
        )
        return out

    def state(self, now: dt.datetime) -> WarrantState:
        """Active only inside ``[start, end)``; removal wins over the window."""
        if self.removed is not None:
            return WarrantState.REMOVED
        if now < self.start:
            return WarrantState.PENDING
        if now < self.end:
            return WarrantState.ACTIVE
        return WarrantState.EXPIRED


@dataclasses.dataclass(frozen=True)
class Tap:
    """A registered tap: its certificate's identity and its UDP message key."""

    name: str
    created: dt.datetime
    cert_fingerprint: str  # SHA-256 of the tap's certificate (DER), lower-case hex
    cert_serial: int
    revoked: dt.datetime | None = None
    hmac_key: bytes | None = None  # only with the registry key


@dataclasses.dataclass(frozen=True)
class RegistrySnapshot:
    """Everything a server needs at one moment, decrypted; never written anywhere."""

    generation: int
    warrants: tuple[Warrant, ...]
    agencies: tuple[Agency, ...]
    taps: tuple[Tap, ...]


def format_time(value: dt.datetime | None) -> str:
    """UTC, to the second, with ``Z``: the one time format people and files see."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> dt.datetime:
    """Now, in UTC, to the second (warrant windows are set to the second)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
