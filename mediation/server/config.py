"""``mediate serve``'s configuration: one TOML file, every key optional.

With no file at all the server runs on the defaults below, which work out
of the box on one machine (retrieval listens on loopback only). A file
names only what it changes::

    data_dir = "/var/lib/mediation"

    [log]                      # any field of mediation.log.LogConfig
    commit_records = 256       # fdatasync every N records ...
    commit_interval = 0.002    # ... or T seconds, whichever first

    [delivery]
    report_interval = 1.0      # UDP receiver reports expected this often
    silent_after = 3           # ... an endpoint without one for 3 is silent
    window = 1024              # TLS: unacknowledged envelopes per stream
    keepalive_interval = 10.0
    keepalive_timeout = 30.0
    connect_timeout = 10.0
    reconnect_min = 0.1        # backoff after a failed or lost connection ...
    reconnect_max = 2.0        # ... doubling up to this
    batch = 256                # records read from the log per step
    write_linger = 0.002       # TLS: least seconds between two writes (more joins the next)

    [retrieval]
    listen = "127.0.0.1:37001" # "" turns retrieval off; port 0 picks one
    request_records = 100000   # one replay request: at most this many records ...
    request_bytes = 67108864   # ... and octets; the rest is answered "not yet"
    connection_records = 1000000   # one retrieval connection: at most this many ...
    connection_bytes = 536870912   # ... records and octets, then "not yet" to all

    [taps]                     # the tap link (docs/tap-link.md)
    tls_listen = "127.0.0.1:37002"  # "" turns it off; off loopback only when set
    udp_listen = ""            # sealed datagrams from UDP taps; "" = off
    keepalive = 10             # seconds; a tap silent for 3 of them is lost

    [tzsp]                     # frames mirrored by routers (docs/tzsp.md)
    listen = "127.0.0.1:37008" # "" turns it off; off loopback only when set
    max_datagram = 16384       # larger datagrams are counted (oversize) and dropped
    receive_buffer = 8388608   # SO_RCVBUF asked of the kernel, octets
    batch = 64                 # datagrams taken from the socket per step
    idle_after = 10.0          # a source silent this long has stopped feeding

    [radius]                   # RADIUS accounting copies from a NAS (docs/tzsp.md)
    listen = ""                # e.g. "0.0.0.0:1813"; "" = off
    nas = ["192.0.2.1"]        # the NAS addresses accepted
    secret_file = "/etc/mediation/radius.secret"   # the shared secret, mode 0600

    [status]
    interval = 1.0             # the status line on a terminal
    log_interval = 10.0        # structured status log lines otherwise

    [clock]
    check_interval = 5.0       # clock (un)synchronised notices

    [retention]
    years = 5                  # records kept 5..100 years after a warrant ends
    check_interval = 3600.0    # how often the server purges what is past that

    [files]                    # capture-to-disk endpoints (agency add --files DIR)
    rotate_seconds = 3600.0    # a capture file is closed after this long ...
    rotate_bytes = 67108864    # ... or this many octets, whichever first

    [tls]
    server_names = ["localhost", "127.0.0.1", "::1"]   # the identity's subjectAltName

Every mistake is one :class:`~mediation.errors.UsageError` naming the key,
the value and what is expected (``config [delivery] window: must be a
whole number from 1 to 1048576, got 0``), so ``mediate serve`` exits 2
with one line. One validator reads every section, driven by the fields
and types of its dataclass, so a field added to a section is checked
without more code:

- ``int``: a whole number (not ``2.5``, not ``true``) from 1 up (:data:`WHOLE`);
- ``float``: a finite number above 0 (not ``nan`` or ``inf``), at most a
  day (:data:`SECONDS`);
- ``bool``: ``true`` or ``false``; ``str``: a string;
  ``tuple[str, ...]``: a list of non-empty strings;
- per-field ranges other than these are in :data:`LIMITS` (a :class:`Limit`), and rules across
  fields in :data:`_SECTION_CHECKS` (and a section's own ``__post_init__``);
- unknown sections and keys are refused.

On SIGHUP a running server re-reads the file and applies the keys in
:data:`RELOADABLE`; a change to any other key is logged and waits for a restart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from mediation.errors import UsageError
from mediation.log.config import LogConfig

DEFAULT_RETRIEVAL_LISTEN = "127.0.0.1:37001"
DEFAULT_TAP_LISTEN = "127.0.0.1:37002"
DEFAULT_TZSP_LISTEN = "127.0.0.1:37008"
_LISTEN = re.compile(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)")


@dataclasses.dataclass(frozen=True)
class DeliveryConfig:
    """Timers and limits of delivery to agencies (docs/delivery-protocol.md)."""

    report_interval: float = 1.0
    silent_after: int = 3
    window: int = 1024
    keepalive_interval: float = 10.0
    keepalive_timeout: float = 30.0
    connect_timeout: float = 10.0
    # An agency that is down is retried with a doubling delay: 0.1 s keeps a
    # resume after a brief cut well inside a second. 2 s caps how long a
    # returning agency waits for its backlog (at 10 s an agency back after
    # a 10 s outage waited 4-9 s, twice its catch-up, while its backlog
    # grew); an agency gone for an hour costs 1,800-3,600 attempts, each a
    # refused connect (microseconds) or a refused handshake (milliseconds).
    reconnect_min: float = 0.1
    reconnect_max: float = 2.0
    # Records per read from the log and per TLS write: big enough to amortise
    # a write (and TLS record) over many envelopes, small enough that one
    # stream's batch does not hold up the others on the connection.
    batch: int = 256
    # TLS: a write goes this long after its first envelope was queued, so
    # light traffic goes out a few commits and every stream of the endpoint
    # per TLS record run instead of one per commit of each stream; it adds
    # at most this to an envelope's delay.
    write_linger: float = 0.002


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """Where agencies connect over TLS to fetch ranges again ("" = nowhere)."""

    # Loopback by default: nothing is reachable from outside until the
    # operator says so ("0.0.0.0:37001" or a specific address).
    listen: str = DEFAULT_RETRIEVAL_LISTEN
    # What one replay request and one connection may cost; the rest of a
    # range is answered "not yet" (ask again), never "unavailable".
    # 100,000 records (~150 MB of full-size CC envelopes at most, capped at
    # 64 MiB) is a few seconds of reading and sending: large enough that a
    # receiver's gap after a long outage comes back in a few requests,
    # small enough that no one request holds the log reader for long or
    # buffers much. A connection may take ten requests' worth (1,000,000
    # records, 512 MiB) before it must reconnect, so one agency cannot
    # stream the whole log in one go while the server also delivers live.
    request_records: int = 100_000
    request_bytes: int = 64 * 2**20
    connection_records: int = 1_000_000
    connection_bytes: int = 512 * 2**20

    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to listen on, or None when retrieval is off."""
        if not self.listen:
            return None
        match = _LISTEN.fullmatch(self.listen.strip())
        assert match is not None  # checked by load_config
        return match.group(1) or match.group(3), int(match.group(2) or match.group(4))


def listen_address(text: str) -> tuple[str, int] | None:
    """``(host, port)`` of a checked ``HOST:PORT`` (``[v6]:PORT``), or None for ""."""
    if not text:
        return None
    match = _LISTEN.fullmatch(text.strip())
    assert match is not None  # checked by load_config
    return match.group(1) or match.group(3), int(match.group(2) or match.group(4))


@dataclasses.dataclass(frozen=True)
class TapsConfig:
    """Where taps connect: TLS (on loopback by default) and UDP (off by default)."""

    tls_listen: str = DEFAULT_TAP_LISTEN
    udp_listen: str = ""
    keepalive: int = 10


@dataclasses.dataclass(frozen=True)
class TzspConfig:
    """Where routers send TZSP (on loopback by default) and what one datagram may cost."""

    listen: str = DEFAULT_TZSP_LISTEN
    # Ethernet frames with VLAN tags and TZSP's header fit in 1,600 octets;
    # jumbo frames in 9,100. 16 KiB leaves room and bounds the buffers
    # (batch x max_datagram) the listener keeps.
    max_datagram: int = 16384
    # A burst of 1,500-octet frames at 30,000 a second is 45 MB/s: 8 MiB is
    # about 0.2 s of it (the kernel caps it at net.core.rmem_max).
    receive_buffer: int = 8 * 2**20
    batch: int = 64
    idle_after: float = 10.0


@dataclasses.dataclass(frozen=True)
class RadiusConfig:
    """A RADIUS accounting listener (off by default): which NAS, which secret."""

    listen: str = ""
    nas: tuple[str, ...] = ()
    secret_file: str = ""


@dataclasses.dataclass(frozen=True)
class StatusConfig:
    interval: float = 1.0
    log_interval: float = 10.0


@dataclasses.dataclass(frozen=True)
class ClockConfig:
    check_interval: float = 5.0


@dataclasses.dataclass(frozen=True)
class RetentionConfig:
    years: int = 5  # records kept this long after a warrant ends (at least five)
    check_interval: float = 3600.0  # how often the server looks for records past it


@dataclasses.dataclass(frozen=True)
class FilesConfig:
    """Rotation of capture files (``agency add --files``; docs/agency.md)."""

    # An hour or 64 MiB: a file a tool opens whole, and at most an hour's
    # records to rebuild from the log after a crash.
    rotate_seconds: float = 3600.0
    rotate_bytes: int = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything ``mediate serve`` can be told; the defaults work as they are."""

    data_dir: Path | None = None
    log: LogConfig = LogConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    status: StatusConfig = StatusConfig()
    clock: ClockConfig = ClockConfig()
    tls: TlsConfig = TlsConfig()
    taps: TapsConfig = TapsConfig()
    retention: RetentionConfig = RetentionConfig()
    files: FilesConfig = FilesConfig()
    tzsp: TzspConfig = TzspConfig()
    radius: RadiusConfig = RadiusConfig()


@dataclasses.dataclass(frozen=True)
class Limit:
    """The range a number in the file must fall in: ``low`` (or above it) to ``high``."""

    low: float
    high: float
    low_included: bool = True

    def admits(self, value: float) -> bool:
        above = self.low <= value if self.low_included else self.low < value
        return above and value <= self.high

    def describe(self, whole: bool) -> str:
        """``a whole number from 1 to 64``, ``a number above 0 and at most 86400``, ..."""
        low, high = _plain(self.low), _plain(self.high)
        if whole:
            if self.high >= MAX_INT:
                return f"a whole number of {low} or more"
            return f"a whole number from {low} to {high}"
        start = f"from {low}" if self.low_included else f"above {low}"
        return f"a number {start} and at most {high}"


def _plain(number: float) -> str:
    """1048576 as ``1048576``, 0.5 as ``0.5``: never in exponent form."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


MAX_INT = 1 << 53  # beyond any sensible count or size, and exact as a float
MAX_SECONDS = 86400.0  # an interval longer than a day is a mistake
# What every int and float key must satisfy unless LIMITS says otherwise.
WHOLE = Limit(1, MAX_INT)
SECONDS = Limit(0, MAX_SECONDS, low_included=False)
# Per-field limits ("section.key") where the rule for the type is not enough.
LIMITS: dict[str, Limit] = {
    # A record waits at most this for its fdatasync: what a crash can lose.
    "log.commit_interval": Limit(0, 1.0, low_included=False),
    # Shared writer threads and segment files open for writing (docs/architecture.md).
    "log.writer_threads": Limit(1, 64),
    "log.open_segments": Limit(1, 65536),
    # Unacknowledged envelopes held per TLS stream: memory per agency.
    "delivery.window": Limit(1, 1 << 20),
    "delivery.batch": Limit(1, 1 << 16),
    # Added to an envelope's delay at most; past 0.1 s it would be felt.
    "delivery.write_linger": Limit(0, 0.1, low_included=False),
    "taps.keepalive": Limit(1, 3600),
    # Records are kept at least five years after a warrant ends (the white paper).
    "retention.years": Limit(5, 100),
    # A capture file holds at least a few packets, at most a terabyte.
    "files.rotate_bytes": Limit(1024, 1 << 40),
    "tzsp.max_datagram": Limit(64, 65535),
    "tzsp.receive_buffer": Limit(65536, 1 << 30),
    "tzsp.batch": Limit(1, 1024),
}

# Keys a running server applies on SIGHUP ("section.key"); the rest need a restart.
RELOADABLE = frozenset({"status.interval", "status.log_interval", "clock.check_interval"})


def load_config(path: Path | None) -> ServerConfig:
    """The configuration in ``path`` (None: all defaults).

    Raises:
        UsageError: the file cannot be read, is not UTF-8 or not TOML, or a
            key is unknown or has a value out of range; the message names the key.
    """
    if path is None:
        return ServerConfig()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError("--config", f"cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UsageError(
            "--config", f"{path} is not UTF-8 text (line {line}); save it as UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError("--config", f"{path} is not valid TOML: {exc}") from None
    return parse_config(data)


def parse_config(data: dict[str, Any]) -> ServerConfig:
    """A :class:`ServerConfig` from parsed TOML (see :func:`load_config`)."""
    hints = typing.get_type_hints(ServerConfig)
    sections = {name for name, kind in hints.items() if dataclasses.is_dataclass(kind)}
    for key in data:
        if key not in hints:
            raise UsageError(f"config {key}", f"unknown key (known: {', '.join(hints)})")
    values: dict[str, Any] = {}
    for name, kind in hints.items():
        if name not in data:
            continue
        if name in sections:
            values[name] = _section(name, kind, _table(data, name))
        else:
            values[name] = _value(f"config {name}", name, kind, data[name])
    return ServerConfig(**values)


def reloaded_config(
    old: ServerConfig, new: ServerConfig
) -> tuple[ServerConfig, list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """What a reload makes of ``new``: (config to run, keys applied, keys kept).

    Keys in :data:`RELOADABLE` take their new values; every other changed
    key keeps its old value (a restart applies it). Each list holds
    ``("config [section] key", old value, new value)``.
    """
    applied: list[tuple[str, Any, Any]] = []
    kept: list[tuple[str, Any, Any]] = []
    merged: dict[str, Any] = {}
    for field in dataclasses.fields(ServerConfig):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if not dataclasses.is_dataclass(before):
            if before != after:
                kept.append((f"config {field.name}", before, after))
            merged[field.name] = before
            continue
        changes: dict[str, Any] = {}
        for inner in dataclasses.fields(before):
            was, now = getattr(before, inner.name), getattr(after, inner.name)
            if was == now:
                continue
            key = f"config [{field.name}] {inner.name}"
            if f"{field.name}.{inner.name}" in RELOADABLE:
                changes[inner.name] = now
                applied.append((key, was, now))
            else:
                kept.append((key, was, now))
        merged[field.name] = dataclasses.replace(before, **changes)  # type: ignore[type-var]
    return ServerConfig(**merged), applied, kept


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    table = data[name]
    if not isinstance(table, dict):
        raise UsageError(f"config {name}", f"must be a table ([{name}]), got {_shown(table)}")
    return table


def _section(name: str, cls: type, table: dict[str, Any]) -> Any:
    """One section: every key known and of its field's type, then the cross-field rules."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in table.items():
        if key not in known:
            raise UsageError(f"config [{name}] {key}", f"unknown key (known: {', '.join(known)})")
        values[key] = _value(f"config [{name}] {key}", f"{name}.{key}", hints[key], value)
    try:
        section = cls(**values)
    except UsageError as exc:  # the section's own rule names its field: add where it lives
        got = f", got {_shown(values[exc.field])}" if exc.field in values else ""
        raise UsageError(f"config [{name}] {exc.field}", exc.problem + got) from None
    check = _SECTION_CHECKS.get(name)
    if check is not None:
        check(section)
    return section


def _value(field: str, limit_key: str, kind: Any, value: Any) -> Any:
    """``value`` if it fits ``kind`` (a field's type) and its limits, else UsageError."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        kind = options[0] if len(options) == 1 else kind  # TOML has no null: X | None is X
    if kind is bool:
        if not isinstance(value, bool):
            raise UsageError(field, f"must be true or false, got {_shown(value)}")
        return value
    if kind is int or kind is float:
        return _number(
            field, kind is int, LIMITS.get(limit_key, WHOLE if kind is int else SECONDS), value
        )
    if kind is str or kind is Path:
        if not isinstance(value, str):
            raise UsageError(field, f"must be a string, got {_shown(value)}")
        if kind is Path and not value:
            raise UsageError(field, "must be a non-empty string (a directory)")
        return Path(value) if kind is Path else value
    if typing.get_origin(kind) is tuple:
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise UsageError(
                field, f"must be a non-empty list of non-empty strings, got {_shown(value)}"
            )
        return tuple(value)
    raise UsageError(field, "cannot be set in the file")  # a type this validator does not know


def _number(field: str, whole: bool, limit: Limit, value: Any) -> int | float:
    """An int (``whole``) or float key: no booleans, no nan or inf, within ``limit``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        fits = False
    elif whole:
        fits = isinstance(value, int) and limit.admits(value)
    else:
        fits = math.isfinite(value) and limit.admits(value)
    if not fits:
        raise UsageError(field, f"must be {limit.describe(whole)}, got {_shown(value)}")
    return value if whole else float(value)


def _shown(value: Any) -> str:
    """``value`` as TOML spells it (``true``, ``nan``, ``"text"``), cut to one short line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and not math.isfinite(value):
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_reconnect(section: DeliveryConfig) -> None:
    if section.reconnect_max < section.reconnect_min:
        raise UsageError(
            "config [delivery] reconnect_max",
            f"must be at least reconnect_min ({section.reconnect_min:g}), "
            f"got {section.reconnect_max:g}",
        )


def _check_listen(section: RetrievalConfig) -> None:
    _check_address("config [retrieval] listen", section.listen)


def _check_taps(section: TapsConfig) -> None:
    _check_address("config [taps] tls_listen", section.tls_listen)
    _check_address("config [taps] udp_listen", section.udp_listen)


def _check_address(field: str, text: str) -> None:
    if not text:
        return
    match = _LISTEN.fullmatch(text.strip())
    if match is None or not 0 <= int(match.group(2) or match.group(4)) <= 65535:
        raise UsageError(
            field,
            'must be "HOST:PORT" (port 0 to 65535; 0 picks a free one) or "" for off, '
            f"got {_shown(text)}",
        )


def _check_tzsp(section: TzspConfig) -> None:
    _check_address("config [tzsp] listen", section.listen)


def _check_radius(section: RadiusConfig) -> None:
    _check_address("config [radius] listen", section.listen)
    if not section.listen:
        return
    if not section.nas:
        raise UsageError(
            "config [radius] nas", 'must list the NAS addresses to accept, e.g. ["192.0.2.1"]'
        )
    for nas in section.nas:
        try:
            ipaddress.ip_address(nas)
        except ValueError:
            raise UsageError(
                "config [radius] nas", f"must be IP addresses, got {_shown(nas)}"
            ) from None
    if not section.secret_file:
        raise UsageError(
            "config [radius] secret_file",
            "must name the file holding the shared secret (mode 0600) when listen is set",
        )


# Rules across a section's fields, after each field passed on its own.
_SECTION_CHECKS: dict[str, Any] = {
    "delivery": _check_reconnect,
    "retrieval": _check_listen,
    "taps": _check_taps,
    "tzsp": _check_tzsp,
    "radius": _check_radius,
}
