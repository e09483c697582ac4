"""``mediate tap run``: the tap process, fed by a capture file or an interface.

Registered by ``cli/tap.py`` (:func:`add_run`). See docs/tap.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mediation.errors import UsageError
from mediation.tap.runner import DEFAULT_SPOOL_LIMIT, LINGER_SECONDS


def cmd_tap_run(args: argparse.Namespace) -> int:
    from mediation.tap.runner import RunSettings, read_credentials, run, run_tap
    from mediation.warrants.validate import parse_host_port

    if args.config:  # the seed's form, from an encrypted tap file (cli/tap_config.py)
        from mediation.cli.tap_config import replay_source
        from mediation.tap.tapconfig import read_tap_file

        if args.interface:
            raise UsageError("-i", "the tap file names the interface: drop -i with --config")
        path = Path(args.credentials)
        config = read_tap_file(Path(args.config), path)
        source = replay_source(args.read, "--read")
        return run_tap(config, path, source, args.speed == "recorded")
    credentials = read_credentials(Path(args.credentials))
    if not args.read and not args.interface:
        raise UsageError("-i", "give -i IFACE (live capture) or --read FILE (a pcap file)")
    source = Path(args.read) if args.read else None
    if source is not None and not source.is_file():
        raise UsageError("--read", f"{source} is not a readable file")
    server = args.server or credentials.server
    host, port = parse_host_port(server, "--server (or `server` in the credentials file)")
    udp = parse_host_port(args.udp, "--udp") if args.udp else None
    if not 1 <= args.batch <= 65536:
        raise UsageError("--batch", f"must be 1 to 65536 PDUs, got {args.batch}")
    workers = _workers(args)
    if not 1 <= args.linger <= 200:
        raise UsageError("--linger", f"must be 1 to 200 milliseconds, got {args.linger:g}")
    if args.spool_limit < 65536:
        raise UsageError("--spool-limit", f"must be at least 65536 bytes, got {args.spool_limit}")
    settings = RunSettings(
        address=(host, port),
        udp=udp,
        interface=args.interface,
        source=source,
        paced=args.speed == "recorded",
        rate=_rate(args.speed),
        spool_dir=Path(args.spool) if args.spool else Path(f"{args.credentials}.spool"),
        spool_limit=args.spool_limit,
        batch=args.batch,
        connect_wait=args.connect_wait,
        epoch=args.correlation_epoch,
        quiet=args.quiet,
        workers=workers,
        linger=args.linger / 1000,
    )
    return run(credentials, settings)


def _workers(args: argparse.Namespace) -> int:
    """``--workers``, checked; its default for a live capture (mediation/tap/workers.py)."""
    if not args.interface:  # a file's replay: the workers' module (multiprocessing) not loaded
        if args.workers is not None:
            raise UsageError("--workers", "applies to live capture only: give -i IFACE, or drop it")
        return 1
    from mediation.tap.workers import MAX_WORKERS, default_workers

    if args.workers is None:
        return default_workers()
    if not 1 <= args.workers <= MAX_WORKERS:
        raise UsageError("--workers", f"must be 1 to {MAX_WORKERS}, got {args.workers}")
    return args.workers


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
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the seed's form: an encrypted tap file (`tap edit`); with --read, replay a file",
    )
    p.add_argument(
        "--speed",
        default="recorded",
        metavar="recorded|full|N",
        help="--read: at the recorded pace (default), as fast as possible, or N frames a "
        "second, each stamped with the time it is replayed",
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
        "--linger",
        type=float,
        default=LINGER_SECONDS * 1000,
        metavar="MS",
        help="the most a batch waits for more PDUs on a free link (default "
        f"{LINGER_SECONDS * 1000:g}): longer sends fewer batches (less server CPU), "
        "shorter adds less latency",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="-i: capture processes sharing the interface (default: one per core, at most 8)",
    )
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


def _rate(speed: str) -> float | None:
    """``--speed``: None for ``recorded`` and ``full``, else the frames a second.

    Raises:
        UsageError: anything else, or a rate outside 1 to 10,000,000.
    """
    if speed in ("recorded", "full"):
        return None
    try:
        rate = float(speed)
    except ValueError:
        rate = 0.0
    if not 1 <= rate <= 10_000_000:  # also refuses nan and inf
        raise UsageError(
            "--speed", f"must be recorded, full or 1 to 10000000 frames a second, got {speed!r}"
        )
    return rate
