"""Turning what a person typed into registry values, or one clear refusal.

Every function raises :class:`~mediation.errors.UsageError` naming the
field and what is allowed. Messages never repeat a refused case identity,
target or agency address (stderr ends up in shell histories, tickets and
log collectors); they say which value was wrong by its position instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from pathlib import Path

from mediation.errors import UsageError
from mediation.warrants.model import ContentLevel, Source, Stream
from mediation.warrants.retention import LEGAL_FLOOR_YEARS, MAX_YEARS

# T1.IAS caseId is a VisibleString (SIZE (1..25)); the CmCC iapId (SIZE (1..15))
# is the tighter of the two IAP identity fields, so one value fits both.
CASE_ID_MAX = 25
IAP_ID_MAX = 15
TEXT_MAX = 200
NOTE_MAX = 1000

_HANDLE = {"w": re.compile(r"w-[0-9a-f]{6}"), "a": re.compile(r"a-[0-9a-f]{6}")}
_TAP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# Linux IFNAMSIZ is 16 including the NUL; '/' and whitespace are never allowed.
INTERFACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,14}")
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_TIME_HELP = "use ISO 8601 with a zone, e.g. 2026-11-23T00:00:00Z, or a date, e.g. 2026-11-23"


def _visible(text: str) -> bool:
    return all(0x20 <= ord(c) <= 0x7E for c in text)


def is_printable(text: str) -> bool:
    """No control or other unprintable characters (what free text and names allow)."""
    return text.isprintable()


def ordinal(index: int) -> str:
    """``#1``, ``#2``: how a refused value is named without repeating it."""
    return f"#{index + 1}"


def parse_case_id(text: str | None, field: str = "--case-id") -> str:
    """A T1.IAS case identity: 1 to 25 visible ASCII characters."""
    if text is None:
        raise UsageError(
            field, "required: the case identity on the court order (1 to 25 characters)"
        )
    if not 1 <= len(text) <= CASE_ID_MAX or not _visible(text):
        raise UsageError(
            field,
            f"must be 1 to {CASE_ID_MAX} visible ASCII characters (T1.IAS caseId), "
            f"got {len(text)} characters"
            + ("" if _visible(text) else " including invisible or non-ASCII ones"),
        )
    return text


def parse_iap(text: str | None, field: str = "--iap") -> str | None:
    """The IAP system identity: 1 to 15 visible ASCII characters, or unset."""
    if text is None:
        return None
    if not 1 <= len(text) <= IAP_ID_MAX or not _visible(text):
        raise UsageError(
            field, f"must be 1 to {IAP_ID_MAX} visible ASCII characters (T1.IAS iAPSystemId)"
        )
    return text


def parse_free_text(text: str | None, field: str, limit: int = TEXT_MAX) -> str | None:
    """A court reference or a note: printable text on one line, up to ``limit`` characters."""
    if text is None:
        return None
    if not text.strip() or len(text) > limit or not is_printable(text):
        raise UsageError(field, f"must be 1 to {limit} printable characters on one line")
    return text


def parse_content(text: str | None, field: str = "--content") -> ContentLevel:
    """``headers`` (CmII only) or ``full`` (CmII and CmCC)."""
    for level in ContentLevel:
        if text == level.value:
            return level
    raise UsageError(field, "must be headers (CmII only, a pen register) or full (CmII and CmCC)")


def parse_time(text: str, field: str, now: dt.datetime) -> dt.datetime:
    """ISO 8601 with ``Z`` or an offset, a bare date (midnight UTC), or ``now``.

    Naive times are refused: a warrant window is a legal boundary, and a
    guess at the time zone could open it hours early or close it late.
    """
    text = text.strip()
    if text == "now":
        return now
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            raise UsageError(field, f"not a valid date; {_TIME_HELP}") from None
        return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(field, f"not a time; {_TIME_HELP}") from None
    if value.tzinfo is None:
        raise UsageError(
            field, "has no time zone; add Z for UTC or an offset like +01:00 (2026-11-23T00:00:00Z)"
        )
    return value.astimezone(dt.UTC).replace(microsecond=0)


def parse_retention(text: str | None, field: str = "--retention") -> int | None:
    """Years the records are kept after the warrant ends: a whole number from 5 to 100.

    Returns:
        None when not given (the server's ``[retention] years`` applies).
    """
    if text is None:
        return None
    value = text.strip()
    if not re.fullmatch(r"\d{1,3}", value) or not LEGAL_FLOOR_YEARS <= int(value) <= MAX_YEARS:
        raise UsageError(
            field,
            f"must be a whole number of years from {LEGAL_FLOOR_YEARS} (the legal floor) "
            f"to {MAX_YEARS}, e.g. 7",
        )
    return int(value)


def check_window(start: dt.datetime, end: dt.datetime) -> None:
    """The window must be non-empty."""
    if end <= start:
        raise UsageError("--end", "must be after --start")


def parse_handle(text: str | None, kind: str = "w", field: str = "HANDLE") -> str:
    """An opaque handle: ``w-`` (warrant) or ``a-`` (agency) and 6 hex digits."""
    if text is None or not _HANDLE[kind].fullmatch(text):
        raise UsageError(field, f"must be a handle like {kind}-3f9a1c (see `mediate list`)")
    return text


def parse_tap_name(text: str | None, field: str = "NAME") -> str:
    """A tap's name: 1 to 63 letters, digits or ``._-``, starting with a letter or digit."""
    if text is None or not _TAP_NAME.fullmatch(text):
        raise UsageError(
            field, "must be 1 to 63 letters, digits or ._- starting with a letter or digit (edge-1)"
        )
    return text


def parse_agency_name(text: str | None, field: str = "NAME") -> str:
    """An agency's name as the carrier knows it: 1 to 64 printable characters."""
    if text is None or not text.strip() or len(text) > 64 or not is_printable(text):
        raise UsageError(field, "must be 1 to 64 printable characters (e.g. FBI-NYFO)")
    return text


def parse_source(text: str, index: int = 0, field: str = "--source") -> Source:
    """``tzsp:ADDR``: a router sending TZSP from that IP address."""
    kind, _, value = text.partition(":")
    if kind != "tzsp" or not value:
        raise UsageError(f"{field} {ordinal(index)}", "must be tzsp:ADDRESS, e.g. tzsp:192.0.2.1")
    try:
        return Source("tzsp", str(ipaddress.ip_address(value)))
    except ValueError:
        raise UsageError(
            f"{field} {ordinal(index)}", "must be tzsp:ADDRESS with an IPv4 or IPv6 address"
        ) from None


def parse_host_port(text: str | None, field: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; host is an IP address or a DNS name, port 1 to 65535."""
    if not text:
        raise UsageError(field, "must be HOST:PORT, e.g. 203.0.113.5:5555 or [2001:db8::5]:5555")
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not match:
        raise UsageError(field, "must be HOST:PORT, e.g. 203.0.113.5:5555 or [2001:db8::5]:5555")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise UsageError(field, f"port must be 1 to 65535, got {port}")
    return parse_host(host, field, name_allowed=not match.group(1)), port


def parse_host(text: str | None, field: str, name_allowed: bool = True) -> str:
    """An IP address (normalised) or a DNS name.

    Args:
        name_allowed: False where only an address fits (inside ``[...]``).
    """
    host = (text or "").strip()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        labels = host.rstrip(".").split(".")
        if (
            not name_allowed
            or not host
            or len(host) > 253
            or not all(_HOSTNAME_LABEL.fullmatch(x) for x in labels)
        ):
            raise UsageError(
                field, "host must be an IP address or a DNS name, e.g. 203.0.113.5"
            ) from None
    return host


def parse_interface(text: str | None, field: str) -> str:
    """A Linux network interface name (IFNAMSIZ: at most 15 characters)."""
    if text is None or not INTERFACE_NAME.fullmatch(text):
        raise UsageError(field, "interface name must be 1 to 15 letters, digits or ._@:- (eth0)")
    return text


def parse_streams(text: str | None, field: str = "--streams") -> tuple[Stream, ...]:
    """``cmii``, ``cmcc``, ``cmii,cmcc`` or ``both``; the default is both."""
    if text is None or text.strip() == "both":
        return (Stream.CMII, Stream.CMCC)
    chosen = set()
    for word in text.split(","):
        try:
            chosen.add(Stream(word.strip().lower()))
        except ValueError:
            raise UsageError(field, "must be cmii, cmcc or cmii,cmcc (both)") from None
    return tuple(s for s in Stream if s in chosen)


def parse_fingerprint(text: str, field: str = "--fingerprint") -> str:
    """A SHA-256 certificate fingerprint: 64 hex digits; colons, ``sha256:`` optional."""
    value = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise UsageError(field, "must be a SHA-256 fingerprint: 64 hex digits, colons allowed")
    return value


def read_ca_file(path: str, field: str = "--ca") -> str:
    """The PEM text of an agency's CA certificate(s).

    Refused unless it parses, and if it is one of this carrier's own (a
    tap, the server, or either CA): those are never an agency's, and would
    let a tap or the server itself fetch the agency's streams.
    """
    from cryptography import x509

    from mediation.pki import role_of

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise UsageError(
            field, f"{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        )
    for cert in certificates:
        role = role_of(cert)
        if role is not None:
            raise UsageError(
                field,
                f"{path} is a {role.value} certificate of the mediation server, not the "
                "agency's: ask the agency for its CA or its receiver's certificate",
            )
    from cryptography.hazmat.primitives.serialization import Encoding

    return "".join(cert.public_bytes(Encoding.PEM).decode("ascii") for cert in certificates)


def parse_files_dir(text: str | None, field: str) -> str:
    """A capture-to-disk directory: absolute, made (mode 0700) if missing, private, writable.

    Returns:
        The path, normalised (``/srv/capture``, no trailing slash).

    Raises:
        UsageError: relative, not a directory, cannot be made, open to others, or not writable.
    """
    example = "e.g. /var/lib/mediation-capture"
    if not text or not text.strip():
        raise UsageError(field, f"must be a directory, {example}")
    if "\x00" in text or "\n" in text:
        raise UsageError(field, "must be a directory path on one line")
    if not os.path.isabs(text):
        raise UsageError(field, f"must be an absolute path (starting with /), {example}")
    path = Path(os.path.normpath(text))
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(field, f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise UsageError(field, f"cannot create {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise UsageError(field, f"{path} is not a directory")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        # Capture files are the content of an intercept: for the server's user only.
        raise UsageError(field, f"{path} is open to others (mode {mode:o}); chmod 700 it")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(field, f"{path} is not writable by this user; chown it to the server's")
    return str(path)
