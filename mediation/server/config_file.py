"""Reading ``mediate serve``'s configuration file: TOML in, a checked :class:`ServerConfig` out.

The sections and their defaults are :mod:`mediation.server.config`.
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
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from mediation.errors import UsageError
from mediation.server.config import (
    LISTEN_ADDRESS,
    DeliveryConfig,
    RadiusConfig,
    RetrievalConfig,
    ServerConfig,
    TapsConfig,
    TzspConfig,
)


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
    match = LISTEN_ADDRESS.fullmatch(text.strip())
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
