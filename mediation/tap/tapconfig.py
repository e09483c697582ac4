"""A tap's intercept configuration: the seed's ``tap`` arguments, checked, and the tap file.

The seed's command line (the white paper's ``tap`` program)::

    mediate tap -i IF -x CONTENT_ID -y CASE_ID -z IAP_ID -d DEST [-c]
                [-m CMC_PORT] [-n CMII_PORT] [-f FILTER] --credentials NAME.tap

and its confidential form, the tap file: the same arguments as TOML
(keys in :data:`FIELDS`), encrypted with AES-256-GCM under a key derived
from the tap's credential key (:mod:`mediation.tap.atrest`, labels
``mediation-tap-file-v1``), so the router's disk never holds them in clear.
Both are checked by one validator, :func:`build_config`, whose refusals
name the field the way the user gave it (``-y`` or ``tap file: case-id``)
and never repeat its value.
"""

from __future__ import annotations

import ctypes
import dataclasses
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mediation.errors import UsageError
from mediation.tap.atrest import KeyMismatch, open_blob, seal_blob
from mediation.warrants.model import ContentLevel
from mediation.warrants.validate import (
    parse_case_id,
    parse_host,
    parse_iap,
    parse_interface,
)

TAP_FILE_MAGIC = b"MTAPCFG1"
TAP_FILE_INFO = b"mediation-tap-file-v1"
TAP_FILE_CHECK_INFO = b"mediation-tap-file-key-check-v1"
# A tap file is a dozen short lines; a mistaken path costs one bounded read.
TAP_FILE_LIMIT = 64 * 1024
CONTENT_ID_MAX = 64
FILTER_MAX = 4096
_DLT_EN10MB = 1


@dataclasses.dataclass(frozen=True)
class TapConfig:
    """One intercept as the seed's ``tap`` command line gave it.

    The case data (content id, case id, IAP id, filter) is left out of
    ``repr`` so that no log line or traceback shows it.

    Attributes:
        interface: the capture interface (``-i``).
        content_id: the agency's content identifier (``-x``).
        case_id: the case identity (``-y``).
        iap_id: the IAP system identity (``-z``).
        destination: the mediation server's host or IP address (``-d``).
        content: headers only, or full content (``-c``).
        cmc_port: the server's port for content (``-m``), None: the default.
        cmii_port: the server's port for headers and events (``-n``), None: the default.
        filter: a tcpdump (libpcap) filter expression (``-f``), None: none.
    """

    interface: str
    content_id: str = dataclasses.field(repr=False)
    case_id: str = dataclasses.field(repr=False)
    iap_id: str = dataclasses.field(repr=False)
    destination: str
    content: ContentLevel = ContentLevel.HEADERS
    cmc_port: int | None = None
    cmii_port: int | None = None
    filter: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class Field:
    """One seed argument: its TapConfig attribute, its flag, its key in a tap file."""

    key: str
    flag: str
    file_key: str
    sensitive: bool  # case data: warned about on the command line, hidden by show-config


FIELDS = (
    Field("interface", "-i", "interface", False),
    Field("content_id", "-x", "content-id", True),
    Field("case_id", "-y", "case-id", True),
    Field("iap_id", "-z", "iap-id", True),
    Field("destination", "-d", "destination", False),
    Field("content", "-c", "content", False),
    Field("cmc_port", "-m", "cmc-port", False),
    Field("cmii_port", "-n", "cmii-port", False),
    Field("filter", "-f", "filter", True),
)


def build_config(values: Mapping[str, Any], name: Callable[[Field], str]) -> TapConfig:
    """The checked configuration from raw values (keys: :data:`FIELDS`' ``key``).

    Args:
        values: the content as ``"headers"`` or ``"full"``, ports as ints,
            everything else as strings; a missing or None value is not given.
        name: how a refusal names a field (``-y``, ``tap file: case-id``).

    Raises:
        UsageError: the first bad field, named by ``name``, value not repeated.
    """
    by_key = {f.key: f for f in FIELDS}

    def need(key: str, what: str) -> str:
        value = values.get(key)
        if value is None:
            raise UsageError(name(by_key[key]), f"required: {what}")
        if not isinstance(value, str):
            raise UsageError(name(by_key[key]), f'must be a string ("…"): {what}')
        return value

    interface = parse_interface(
        need("interface", "the capture interface"), name(by_key["interface"])
    )
    content_id = _identifier(
        need("content_id", "the agency's content identifier"), name(by_key["content_id"])
    )
    case_id = parse_case_id(need("case_id", "the case identity"), name(by_key["case_id"]))
    iap_id = parse_iap(need("iap_id", "the IAP system identity"), name(by_key["iap_id"]))
    host = parse_host(
        need("destination", "the mediation server's host or IP address"),
        name(by_key["destination"]),
    )
    content = _content(values.get("content"), name(by_key["content"]))
    cmc = _port(values.get("cmc_port"), name(by_key["cmc_port"]))
    cmii = _port(values.get("cmii_port"), name(by_key["cmii_port"]))
    if cmc is not None and content is not ContentLevel.FULL:
        fix = "add -c" if name(by_key["content"]) == "-c" else 'set content = "full"'
        raise UsageError(
            name(by_key["cmc_port"]),
            f"a content port without full content carries nothing; {fix} or leave the port out",
        )
    text = values.get("filter")
    if text is not None:
        text = check_filter(text, name(by_key["filter"]))
    assert iap_id is not None
    return TapConfig(interface, content_id, case_id, iap_id, host, content, cmc, cmii, text)


def _identifier(value: Any, field: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= CONTENT_ID_MAX:
        raise UsageError(field, f"must be 1 to {CONTENT_ID_MAX} visible ASCII characters")
    if not all(0x21 <= ord(c) <= 0x7E for c in value):
        raise UsageError(field, "must be visible ASCII characters only (no spaces)")
    return value


def _content(value: Any, field: str) -> ContentLevel:
    for level in ContentLevel:
        if value == level.value:
            return level
    if value is None:
        return ContentLevel.HEADERS
    raise UsageError(field, 'must be "headers" (CmII only) or "full" (CmII and CmCC)')


def _port(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise UsageError(field, "must be a port number, 1 to 65535")
    return value


def check_filter(text: Any, field: str) -> str:
    """A tcpdump filter that libpcap compiles (for Ethernet); refused with libpcap's reason.

    libpcap's reason is shown with any quoted word or address in it
    replaced by ``…``: a filter names the target.

    Raises:
        UsageError: not a string, empty, too long, or refused by libpcap.
    """
    if not isinstance(text, str) or not text.strip() or len(text) > FILTER_MAX:
        raise UsageError(field, f"must be a tcpdump filter of 1 to {FILTER_MAX} characters")
    if not text.isprintable():
        raise UsageError(field, "must be printable text on one line")
    reason = _libpcap_refusal(text, field)
    if reason is not None:
        reason = re.sub(r"'[^']*'|\S*[0-9A-Fa-f][:.][0-9A-Fa-f:.]*\S*", "…", reason)
        raise UsageError(field, f"libpcap cannot compile it: {reason}; see man pcap-filter")
    return text


def _libpcap_refusal(text: str, field: str) -> str | None:
    """libpcap's error for ``text``, None when it compiles. Needs no interface nor privilege."""
    try:
        from scapy.libs import winpcapy as pcap
    except OSError:  # scapy raises this when it finds no libpcap
        raise UsageError(
            field, "libpcap is not installed, so the filter cannot be checked"
        ) from None
    handle = pcap.pcap_open_dead(_DLT_EN10MB, 65535)
    try:
        program = pcap.bpf_program()
        if pcap.pcap_compile(handle, ctypes.byref(program), text.encode(), 1, -1) != 0:
            return pcap.pcap_geterr(handle).decode(errors="replace") or "refused"
        pcap.pcap_freecode(ctypes.byref(program))
        return None
    finally:
        pcap.pcap_close(handle)


# -- the tap file ----------------------------------------------------------------


def load_tap_key(credentials_path: Path) -> bytes:
    """The 32-byte secret key of the tap's credentials file (``NAME.tap``).

    Raises:
        UsageError: unreadable, not a credentials file, or no 32-byte key in it.
    """
    from mediation.warrants.authority import read_bundle

    try:
        key = read_bundle(Path(credentials_path)).hmac_key
    except OSError as exc:
        raise UsageError(
            "--credentials", f"cannot read {credentials_path}: {exc.strerror}"
        ) from None
    except (ValueError, KeyError, TypeError, tomllib.TOMLDecodeError):
        raise UsageError(
            "--credentials",
            f"{credentials_path} is not a tap credentials file (mediate tap register writes one)",
        ) from None
    if len(key) != 32:
        raise UsageError("--credentials", f"{credentials_path}: its key is not 32 bytes")
    return key


def seal_tap_file(key: bytes, text: str) -> bytes:
    """A tap file's bytes: ``text`` (TOML) sealed under a key of its own."""
    return seal_blob(key, TAP_FILE_MAGIC, TAP_FILE_INFO, TAP_FILE_CHECK_INFO, text.encode())


def open_tap_file(path: Path, key: bytes, field: str = "--config") -> str:
    """The TOML text of the tap file at ``path``.

    Raises:
        UsageError: unreadable, too large, not a tap file, altered, or
            sealed under other credentials.
    """
    try:
        with open(path, "rb") as stream:
            raw = stream.read(TAP_FILE_LIMIT + 1)
    except OSError as exc:
        raise UsageError(field, f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > TAP_FILE_LIMIT:
        raise UsageError(field, f"{path} is larger than a tap file can be")
    try:
        return open_blob(key, TAP_FILE_MAGIC, TAP_FILE_INFO, TAP_FILE_CHECK_INFO, raw).decode()
    except KeyMismatch:
        raise UsageError(
            field, f"{path} was written with other credentials; give the NAME.tap that wrote it"
        ) from None
    except ValueError as exc:
        raise UsageError(field, f"{path} is not a tap file or was damaged: {exc}") from None


def parse_tap_text(text: str, label: str = "tap file") -> TapConfig:
    """The configuration in a tap file's TOML text.

    Raises:
        UsageError: not TOML, an unknown key, or a bad value (named ``LABEL: key``).
    """
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message gives line and column, not text
        raise UsageError(label, f"not valid TOML: {exc}") from None
    by_file = {f.file_key: f for f in FIELDS}
    for key in table:
        if key not in by_file:
            shown = key if re.fullmatch(r"[A-Za-z0-9_-]{1,32}", key) else "a key"
            raise UsageError(f"{label}: {shown}", f"not a tap setting; use {', '.join(by_file)}")
    values = {by_file[k].key: v for k, v in table.items()}
    return build_config(values, lambda f: f"{label}: {f.file_key}")


def read_tap_file(path: Path, credentials_path: Path) -> TapConfig:
    """The configuration in the encrypted tap file at ``path`` (``mediate tap run --config``).

    Raises:
        UsageError: see :func:`load_tap_key`, :func:`open_tap_file`, :func:`parse_tap_text`.
    """
    text = open_tap_file(Path(path), load_tap_key(Path(credentials_path)))
    return parse_tap_text(text, f"{path}")


def render_toml(config: TapConfig, reveal: bool = True) -> str:
    """``config`` as tap file TOML; case data shown as ``(set)`` unless ``reveal``."""
    lines = []
    for field in FIELDS:
        value = getattr(config, field.key)
        if value is None:
            continue
        if isinstance(value, ContentLevel):
            value = value.value
        if field.sensitive and not reveal:
            lines.append(f"# {field.file_key} = (set, {len(value)} characters: --reveal shows it)")
        elif isinstance(value, int):
            lines.append(f"{field.file_key} = {value}")
        else:
            lines.append(f"{field.file_key} = {_toml_string(value)}")
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    """A TOML literal string when it can be one, else a basic string."""
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
