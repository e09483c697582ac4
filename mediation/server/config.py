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

The file is read and checked by :mod:`mediation.server.config_file`
(``load_config``): every mistake is one
:class:`~mediation.errors.UsageError` naming the key, the value and what
is expected.

On SIGHUP a running server re-reads the file and applies the keys in
:data:`RELOADABLE`; a change to any other key is logged and waits for a restart.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from mediation.log.config import LogConfig

DEFAULT_RETRIEVAL_LISTEN = "127.0.0.1:37001"
DEFAULT_TAP_LISTEN = "127.0.0.1:37002"
DEFAULT_TZSP_LISTEN = "127.0.0.1:37008"
# ``HOST:PORT`` or ``[v6]:PORT`` (checked by config_file, read by listen_address).
LISTEN_ADDRESS = re.compile(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)")


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
        match = LISTEN_ADDRESS.fullmatch(self.listen.strip())
        assert match is not None  # checked by config_file.load_config
        return match.group(1) or match.group(3), int(match.group(2) or match.group(4))


def listen_address(text: str) -> tuple[str, int] | None:
    """``(host, port)`` of a checked ``HOST:PORT`` (``[v6]:PORT``), or None for ""."""
    if not text:
        return None
    match = LISTEN_ADDRESS.fullmatch(text.strip())
    assert match is not None  # checked by config_file.load_config
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


# Keys a running server applies on SIGHUP ("section.key"); the rest need a restart.
RELOADABLE = frozenset({"status.interval", "status.log_interval", "clock.check_interval"})


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
