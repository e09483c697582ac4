"""`mediate receive`'s options, checked and turned into the run's :class:`ReceiverConfig`.

The seam of ``cli/receive.py``: that module registers the command and
runs it; this one reads its options, each refusal a :class:`UsageError`
naming the option and the fix.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mediation.lea.receiver import ReceiverConfig
    from mediation.lea.retrieve import FetchRange
    from mediation.lea.tls import TrustSettings
    from mediation.protocol.sealed import SealKey

_FETCH = re.compile(r"([^/\s]+)/(cmii|cmcc):(\d+)(?:-(\d+))?", re.IGNORECASE)


def config_from_args(args: argparse.Namespace) -> ReceiverConfig:
    """Check the options and build the run's configuration.

    Raises:
        UsageError: naming the first option that is wrong.
    """
    from mediation.errors import UsageError
    from mediation.lea.receiver import ReceiverConfig
    from mediation.lea.tls import live_server_context, retrieval_client_context
    from mediation.warrants.validate import parse_host_port

    if not (args.udp or args.tls or args.fetch):
        raise UsageError("--udp/--tls/--fetch", "give at least one way to receive")
    if args.fetch and (args.udp or args.tls):
        raise UsageError("--fetch", "fetches and exits: not with --udp or --tls")
    handles = _handles(args.handle)
    fetch = tuple(_fetch_range(text, handles) for text in args.fetch)
    if fetch and not args.retrieve_from:
        raise UsageError("--fetch", "needs --retrieve-from HOST:PORT")
    udp = _listen_address(args.udp, "--udp") if args.udp else None
    tls = _listen_address(args.tls, "--tls") if args.tls else None
    udp_buffer = _udp_buffer(args.udp_buffer, given=bool(udp))
    udp_format = _udp_format(args.format, given=bool(udp), handles=handles)
    retrieve = args.retrieve_from and parse_host_port(args.retrieve_from, "--retrieve-from")
    duration = _seconds(args.duration, "--duration")
    until_idle = _seconds(args.until_idle, "--until-idle")
    trust = _trust(args, needed=bool(tls or retrieve))
    udp_keys = _udp_keys(args.udp_key, needed=bool(udp))
    return ReceiverConfig(
        out_dir=_out_dir(args.out),
        udp=udp,
        udp_keys=udp_keys,
        udp_buffer=udp_buffer,
        udp_format=udp_format,
        tls=tls,
        tls_context=live_server_context(trust) if tls and trust else None,
        retrieve_from=retrieve or None,
        retrieval_context=retrieval_client_context(trust) if retrieve and trust else None,
        server_check=trust.server_check() if trust else None,
        handles=handles,
        fetch=fetch,
        duration=duration,
        until_idle=until_idle,
        sort=args.sort,
    )


def _udp_keys(files: list[str], *, needed: bool) -> tuple[SealKey, ...]:
    """The ``--udp-key`` files, read and checked: needed exactly with --udp."""
    from mediation.errors import UsageError
    from mediation.protocol.sealed import SealKey
    from mediation.warrants.udpkey import read_key_file

    if not needed:
        if files:
            raise UsageError("--udp-key", "only with --udp")
        return ()
    if not files:
        raise UsageError(
            "--udp-key",
            "needed with --udp: UDP delivery is sealed; ask the carrier for the key file "
            "(`mediate agency udp-key NAME --out FILE`)",
        )
    keys: dict[int, SealKey] = {}
    for name in files:
        key_id, key = read_key_file(Path(name), "--udp-key")
        if key_id in keys and keys[key_id].key != key:
            raise UsageError("--udp-key", f"two files give key id {key_id:08x} different keys")
        keys[key_id] = SealKey(key_id, key)
    return tuple(keys.values())


def _udp_format(text: str | None, *, given: bool, handles: frozenset[str] | None) -> str:
    """``--format``, checked: only with --udp; scte needs the handles it will receive."""
    from mediation.errors import UsageError

    if text is None:
        return "envelope"
    if not given:
        raise UsageError("--format", "only with --udp")
    if text not in ("envelope", "scte"):
        raise UsageError("--format", f"envelope or scte, got {text!r}")
    if text == "scte" and not handles:
        raise UsageError(
            "--format",
            "scte needs --handle HANDLE for each warrant (the carrier gives the handles): "
            "a datagram names its warrant only by a keyed hash of the handle",
        )
    return text


def _udp_buffer(text: str | None, *, given: bool) -> int:
    """``--udp-buffer``, checked: only with --udp, 65536 to 1073741824 bytes."""
    from mediation.errors import UsageError
    from mediation.lea.udp import DEFAULT_BUFFER

    if text is None:
        return DEFAULT_BUFFER
    if not given:
        raise UsageError("--udp-buffer", "only with --udp")
    value = int(text) if text.isdigit() and len(text) <= 10 else 0
    if not 65536 <= value <= 1 << 30:
        raise UsageError("--udp-buffer", f"must be 65536 to 1073741824 bytes, got {text!r}")
    return value


def _listen_address(text: str, field: str) -> tuple[str, int]:
    """HOST:PORT to listen on; port 0 picks a free one (the "listening:" line says which)."""
    from mediation.warrants.validate import parse_host_port

    zero = re.search(r":0+$", text.strip()) is not None
    host, port = parse_host_port(re.sub(r":0+$", ":1", text.strip()), field)
    return host, 0 if zero else port


def _trust(args: argparse.Namespace, *, needed: bool) -> TrustSettings | None:
    """The certificate options, checked: needed exactly for --tls and --retrieve-from."""
    from mediation.errors import UsageError
    from mediation.lea.tls import TrustSettings
    from mediation.warrants.validate import parse_fingerprint

    pin = args.server_fingerprint and parse_fingerprint(
        args.server_fingerprint, "--server-fingerprint"
    )
    given = [
        (name, value)
        for name, value in (
            ("--cert", args.cert),
            ("--key", args.key),
            ("--server-ca", args.server_ca),
            ("--server-fingerprint", pin),
        )
        if value
    ]
    if not needed:
        if given:
            raise UsageError(given[0][0], "only with --tls or --retrieve-from")
        return None
    for option, value in (("--cert", args.cert), ("--key", args.key)):
        if not value:
            raise UsageError(option, "needed with --tls and --retrieve-from")
    ca = Path(args.server_ca) if args.server_ca else None
    return TrustSettings(Path(args.cert), Path(args.key), ca, pin or None)


def _handles(values: list[str] | None) -> frozenset[str] | None:
    from mediation.errors import UsageError
    from mediation.lea.outputs import safe_handle

    if not values:
        return None
    for value in values:
        if not safe_handle(value):
            raise UsageError("--handle", f"{value!r} is not a warrant handle (like w-3f9a1c)")
    return frozenset(values)


def _fetch_range(text: str, handles: frozenset[str] | None) -> FetchRange:
    from mediation import pdu
    from mediation.errors import UsageError
    from mediation.lea.outputs import safe_handle
    from mediation.lea.retrieve import FetchRange
    from mediation.pdu.delivery import MAX_SEQUENCE
    from mediation.protocol.gaps import MAX_GAP_SPAN

    match = _FETCH.fullmatch(text.strip())
    if not match or not safe_handle(match.group(1)):
        raise UsageError("--fetch", f"{text!r} is not HANDLE/KIND:FIRST-LAST (w-3f9a1c/cmcc:0-99)")
    handle, kind_text, first_text, last_text = match.groups()
    # The digits are bounded before int(): a number of 10,000 digits is refused, not parsed.
    if max(len(first_text), len(last_text or "")) > len(str(MAX_SEQUENCE)):
        raise UsageError("--fetch", f"{text!r}: sequence numbers end at {MAX_SEQUENCE}")
    first = int(first_text)
    last = int(last_text) if last_text is not None else first
    if not first <= last <= MAX_SEQUENCE:
        raise UsageError("--fetch", f"{text!r}: need FIRST <= LAST <= {MAX_SEQUENCE}")
    if last - first + 1 > MAX_GAP_SPAN:
        raise UsageError(
            "--fetch", f"{text!r}: at most {MAX_GAP_SPAN} sequence numbers per range; split it"
        )
    if handles is not None and handle not in handles:
        raise UsageError("--fetch", f"{handle} is not among the --handle options")
    kind = pdu.StreamKind.CMII if kind_text.lower() == "cmii" else pdu.StreamKind.CMCC
    return FetchRange(pdu.StreamId(handle, kind), first, last)


def _seconds(text: str | None, field: str) -> float | None:
    from mediation.errors import UsageError

    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 10**9:
        raise UsageError(field, f"must be a positive number of seconds, got {text!r}")
    return value


def _out_dir(text: str) -> Path:
    from mediation.errors import UsageError

    path = Path(text)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError("--out", f"cannot create {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise UsageError("--out", f"{path} is not a directory")
    return path
