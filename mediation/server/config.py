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
    reconnect_max = 10.0       # ... doubling up to this
    batch = 256                # records read from the log per step

    [retrieval]
    listen = "127.0.0.1:37001" # "" turns retrieval off; port 0 picks one
    request_records = 100000   # one replay request: at most this many records ...
    request_bytes = 67108864   # ... and octets; the rest is answered "not yet"
    connection_records = 1000000   # one retrieval connection: at most this many ...
    connection_bytes = 536870912   # ... records and octets, then "not yet" to all

    [status]
    interval = 1.0             # the status line on a terminal
    log_interval = 10.0        # structured status log lines otherwise

    [clock]
    check_interval = 5.0       # clock (un)synchronised notices

    [tls]
    server_names = ["localhost", "127.0.0.1", "::1"]   # the identity's subjectAltName

Every mistake is one :class:`~mediation.errors.UsageError` naming the key
(``config [delivery] window: must be a whole number of 1 or more, got 0``),
so ``mediate serve`` exits 2 with one line.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from mediation.errors import UsageError
from mediation.log.config import LogConfig

DEFAULT_RETRIEVAL_LISTEN = "127.0.0.1:37001"
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
    # resume after a brief cut well inside a second; 10 s caps the attempts
    # on an agency that is gone for an hour at 360, and its resume delay.
    reconnect_min: float = 0.1
    reconnect_max: float = 10.0
    # Records per read from the log and per TLS write: big enough to amortise
    # a write (and TLS record) over many envelopes, small enough that one
    # stream's batch does not hold up the others on the connection.
    batch: int = 256


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


@dataclasses.dataclass(frozen=True)
class StatusConfig:
    interval: float = 1.0
    log_interval: float = 10.0


@dataclasses.dataclass(frozen=True)
class ClockConfig:
    check_interval: float = 5.0


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


_SECTIONS: dict[str, type] = {
    "delivery": DeliveryConfig,
    "retrieval": RetrievalConfig,
    "status": StatusConfig,
    "clock": ClockConfig,
    "tls": TlsConfig,
}


def load_config(path: Path | None) -> ServerConfig:
    """The configuration in ``path`` (None: all defaults).

    Raises:
        UsageError: the file cannot be read, is not TOML, or a key is
            unknown or has a value out of range; the message names the key.
    """
    if path is None:
        return ServerConfig()
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UsageError("--config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError("--config", f"{path} is not valid TOML: {exc}") from None
    return parse_config(data)


def parse_config(data: dict[str, Any]) -> ServerConfig:
    """A :class:`ServerConfig` from parsed TOML (see :func:`load_config`)."""
    known = {"data_dir", "log", *_SECTIONS}
    for key in data:
        if key not in known:
            raise UsageError(f"config {key}", f"unknown key (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    if "data_dir" in data:
        if not isinstance(data["data_dir"], str) or not data["data_dir"]:
            raise UsageError("config data_dir", "must be a non-empty string (a directory)")
        values["data_dir"] = Path(data["data_dir"])
    values["log"] = _log_section(_table(data, "log"))
    for name, cls in _SECTIONS.items():
        values[name] = _section(name, cls, _table(data, name))
    return ServerConfig(**values)


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise UsageError(f"config {name}", f"must be a table ([{name}])")
    return table


def _log_section(table: dict[str, Any]) -> LogConfig:
    fields = {f.name: f for f in dataclasses.fields(LogConfig)}
    for key in table:
        if key not in fields:
            raise UsageError(f"config [log] {key}", _unknown(fields))
    try:
        return LogConfig(**table)
    except UsageError as exc:  # LogConfig names the field; add where it lives
        raise UsageError(f"config [log] {exc.field}", exc.problem) from None


def _section(name: str, cls: type, table: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in fields:
            raise UsageError(f"config [{name}] {key}", _unknown(fields))
        default = fields[key].default
        values[key] = _check(f"config [{name}] {key}", value, default)
    section = cls(**values)
    if isinstance(section, RetrievalConfig):
        _check_listen(section.listen)
    if isinstance(section, DeliveryConfig) and section.reconnect_max < section.reconnect_min:
        raise UsageError("config [delivery] reconnect_max", "must be at least reconnect_min")
    return section


def _unknown(fields: dict[str, Any]) -> str:
    return f"unknown key (known: {', '.join(fields)})"


def _check(field: str, value: Any, default: Any) -> Any:
    """``value`` if it has the default's type and a sensible range."""
    if isinstance(default, bool) or isinstance(value, bool):
        raise UsageError(field, "booleans are not accepted here")
    if isinstance(default, int):
        if not isinstance(value, int) or value < 1:
            raise UsageError(field, f"must be a whole number of 1 or more, got {value!r}")
        return value
    if isinstance(default, float):
        if not isinstance(value, int | float) or value <= 0:
            raise UsageError(field, f"must be a number of seconds above 0, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise UsageError(field, f"must be a string, got {type(value).__name__}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise UsageError(field, "must be a list of non-empty strings")
        return tuple(value)
    raise UsageError(field, "cannot be set")  # pragma: no cover - every field has a type


def _check_listen(text: str) -> None:
    if not text:
        return
    match = _LISTEN.fullmatch(text.strip())
    if match is None or not 0 <= int(match.group(2) or match.group(4)) <= 65535:
        raise UsageError(
            "config [retrieval] listen",
            'must be "HOST:PORT" (port 0 to 65535; 0 picks a free one) or "" for off',
        )
