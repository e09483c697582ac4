"""``mediate tap run``: the tap process, fed by a capture file or an interface.

Registered by ``cli/tap.py`` (:func:`add_run`). See docs/tap.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import sys
from pathlib import Path

from mediation.errors import UsageError

DEFAULT_SPOOL_LIMIT = 256 * 1024 * 1024


def cmd_tap_run(args: argparse.Namespace) -> int:
    import trio

    from mediation.warrants.validate import parse_host_port

    if args.config:  # the seed's form, from an encrypted tap file (cli/tap_config.py)
        from mediation.tap.runner import run_tap
        from mediation.tap.tapconfig import read_tap_file

        path = Path(args.credentials)
        return run_tap(read_tap_file(Path(args.config), path), path)
    credentials = _credentials(args.credentials)
    if not args.read and not args.interface:
        raise UsageError("-i", "give -i IFACE (live capture) or --read FILE (a pcap file)")
    source = Path(args.read) if args.read else None
    if source is not None and not source.is_file():
        raise UsageError("--read", f"{source} is not a readable file")
    server = args.server or credentials.server
    host, port = parse_host_port(server, "--server (or `server` in the credentials file)")
    udp = parse_host_port(args.udp, "--udp") if args.udp else None
    spool_dir = Path(args.spool) if args.spool else Path(f"{args.credentials}.spool")
    if not 1 <= args.batch <= 65536:
        raise UsageError("--batch", f"must be 1 to 65536 PDUs, got {args.batch}")
    if args.spool_limit < 65536:
        raise UsageError("--spool-limit", f"must be at least 65536 bytes, got {args.spool_limit}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mediate tap: %(message)s"))
    logger = logging.getLogger("mediation.tap")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        return trio.run(_run, args, credentials, (host, port), udp, spool_dir, source)
    except* UsageError as group:  # raised inside a nursery: one line, exit 2, as everywhere
        raise group.exceptions[0] from None


def _credentials(path_text: str):
    from mediation.warrants.authority import read_bundle

    path = Path(path_text)
    try:
        return read_bundle(path)
    except FileNotFoundError:
        raise UsageError("--credentials", f"{path} does not exist") from None
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(
            "--credentials", f"{path} is not a tap credentials file ({type(exc).__name__})"
        ) from None


async def _run(
    args: argparse.Namespace,
    credentials: object,
    address: tuple[str, int],
    udp: tuple[str, int] | None,
    spool_dir: Path,
    source: Path | None,
) -> int:
    import trio

    from mediation.tap.link import TapClient, client_context
    from mediation.tap.spool import TapSpool

    spool = None
    if udp is None:
        spool = await trio.to_thread.run_sync(
            TapSpool.open,
            spool_dir,
            credentials.hmac_key,  # type: ignore[attr-defined]
            args.spool_limit,
        )
    try:
        context = client_context(credentials)  # type: ignore[arg-type]
        client = TapClient(
            credentials,  # type: ignore[arg-type]
            spool,
            address,
            context,
            udp=udp,
            batch_pdus=args.batch,
            epoch=args.correlation_epoch,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run_link)
            nursery.start_soon(client.run_timer)
            with trio.move_on_after(args.connect_wait) as waited:
                await client.warrants_ready.wait()
            if waited.cancelled_caught:
                raise UsageError(
                    "--server", f"no warrant set from {address[0]}:{address[1]} in time"
                )
            if source is None:
                await _live(client, args.interface)
            else:
                await _replay(client, source, args.speed == "recorded")
            with trio.move_on_after(math.inf if source is not None else 5.0):
                await client.drained()  # a live tap stopping keeps the rest spooled
            nursery.cancel_scope.cancel()
    finally:
        if spool is not None:
            spool.close()
    c = client.counters
    print(
        f"tap {credentials.name}: {c.frames} frames, {c.pdus} PDUs in {c.batches} batches; "  # type: ignore[attr-defined]
        f"{c.acked} acknowledged, {c.overflow_batches} refused by a full spool",
        flush=True,
    )
    return 0


async def _live(client: object, interface: str) -> None:
    """Capture until stopped (SIGINT, SIGTERM); the spool keeps what is not yet acknowledged."""
    import signal

    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def capture() -> None:
                try:
                    await client.run_live(interface)  # type: ignore[attr-defined]
                except OSError as exc:
                    raise UsageError("-i", f"cannot capture on {interface}: {exc}") from None

            nursery.start_soon(capture)
            async for _signum in signals:
                nursery.cancel_scope.cancel()
                break


async def _replay(client: object, source: Path, paced: bool) -> None:
    """Every frame of a pcap file, at full speed or at the recorded pace."""
    import time

    import trio

    from mediation.evidence.pcap import PcapError, PcapReader

    try:
        reader = PcapReader.open(source)
    except (OSError, PcapError) as exc:
        raise UsageError("--read", f"{source}: {exc}") from None
    first: dt.datetime | None = None
    began = time.monotonic()
    with reader:
        for packet in reader:
            when = packet.time
            if paced:
                first = first or when
                delay = (when - first).total_seconds() - (time.monotonic() - began)
                if delay > 0:
                    await trio.sleep(delay)
            await client.frame(packet.data, when, reader.linktype)  # type: ignore[attr-defined]
            await trio.lowlevel.checkpoint()


def add_run(sub: argparse._SubParsersAction) -> None:
    """Register ``tap run`` (no data directory: it runs on the router)."""
    p = sub.add_parser(
        "run",
        help="run the tap: capture, and feed the server over the tap link",
        description="Run the tap: capture the targets of the warrants the server sends, "
        "and feed the server over the tap link (docs/tap.md).",
    )
    p.set_defaults(func=cmd_tap_run)
    p.add_argument("--credentials", required=True, metavar="NAME.tap", help="from `tap register`")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-i", dest="interface", metavar="IFACE", help="capture on this interface")
    src.add_argument("--read", metavar="FILE", help="replay a pcap file instead, then exit")
    src.add_argument(
        "--config", metavar="FILE", help="the seed's form: an encrypted tap file (`tap edit`)"
    )
    p.add_argument(
        "--speed",
        choices=("recorded", "full"),
        default="recorded",
        help="--read: at the recorded pace (default) or as fast as possible",
    )
    p.add_argument("--server", metavar="HOST:PORT", help="default: `server` in the credentials")
    p.add_argument("--udp", metavar="HOST:PORT", help="send batches as sealed UDP datagrams here")
    p.add_argument("--spool", metavar="DIR", help="the spool directory (default: NAME.tap.spool)")
    p.add_argument(
        "--spool-limit",
        type=int,
        default=DEFAULT_SPOOL_LIMIT,
        metavar="BYTES",
        help=f"the most the spool holds (default {DEFAULT_SPOOL_LIMIT})",
    )
    p.add_argument("--batch", type=int, default=1024, metavar="N", help="PDUs per batch at most")
    p.add_argument(
        "--connect-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="--read: give up when no warrant set came in this long",
    )
    p.add_argument(
        "--correlation-epoch",
        type=int,
        metavar="N",
        help="first 4 octets of content identifiers (default: the start time, in seconds)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only")
