"""Running a tap process: the link, the spool and a source (a pcap file or an interface).

``mediate tap run`` (targets from the server's warrant set) and the seed's
form (``mediate tap -i ...``, ``mediate tap run --config FILE``: one
intercept from a :class:`TapConfig`) both end in :func:`run`, so there is
one tap client (:class:`mediation.tap.link.TapClient`) whichever way a tap
is started.

The seed form's ports (docs/tap.md): the link goes over TLS to
``DEST:CMII_PORT`` (``-n``; default: the port in the credentials), which
brings the tap its warrant set and, without ``-m``, carries both streams
with acknowledgements; with ``-m CMC_PORT`` (only with ``-c``) both streams
go as sealed UDP datagrams to ``DEST:CMC_PORT``, the server's ``[taps]
udp_listen``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from mediation.errors import UsageError
from mediation.tap.batching import LINGER_SECONDS
from mediation.tap.file_replay import Pace, replay_file
from mediation.tap.replay import Tap

if TYPE_CHECKING:  # the seed form's modules bring the evidence log's: imported when used
    from mediation.tap.tapconfig import TapConfig

DEFAULT_SPOOL_LIMIT = 256 * 1024 * 1024
log = logging.getLogger("mediation.tap")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How one tap process runs (``mediate tap run``'s options).

    Attributes:
        address: the server's TLS tap listener.
        udp: the server's UDP tap listener, to send batches there instead.
        interface: capture on this interface; or ``source``: replay this pcap file.
        paced: replay at the recorded pace (else as fast as possible).
        rate: replay this many frames a second instead, each stamped with
            the time it is replayed (as a live capture would), so latency
            from capture can be measured; None: ``paced`` decides.
        spool_dir, spool_limit: the spool (TLS only).
        batch: PDUs per batch at most.
        connect_wait: seconds to wait for the first warrant set.
        epoch: the correlation epoch (None: the start time).
        quiet: warnings only on stderr.
        workers: capture processes for ``interface`` (mediation/tap/workers.py).
        linger: the most a batch waits for more PDUs on a free link
            (mediation/tap/link.py, ``LINGER_SECONDS``).
    """

    address: tuple[str, int]
    udp: tuple[str, int] | None = None
    interface: str | None = None
    source: Path | None = None
    paced: bool = True
    rate: float | None = None
    spool_dir: Path = Path("tap.spool")
    spool_limit: int = DEFAULT_SPOOL_LIMIT
    batch: int = 1024
    connect_wait: float = 60.0
    epoch: int | None = None
    quiet: bool = False
    workers: int = 1
    linger: float = LINGER_SECONDS


def read_credentials(path: Path) -> Any:
    """The tap's credentials (:class:`TapCredentials`).

    Raises:
        UsageError: missing or not a tap credentials file.
    """
    from mediation.warrants.authority import read_bundle

    try:
        return read_bundle(path)
    except FileNotFoundError:
        raise UsageError("--credentials", f"{path} does not exist") from None
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(
            "--credentials", f"{path} is not a tap credentials file ({type(exc).__name__})"
        ) from None


def run_tap(
    config: TapConfig, credentials_path: Path, source: Path | None = None, paced: bool = True
) -> int:
    """Capture on ``config.interface`` and feed the server until stopped (SIGINT, SIGTERM).

    Args:
        config: the checked intercept configuration.
        credentials_path: the tap's ``NAME.tap`` credentials file.
        source: replay this pcap file instead, as if captured on the
            interface, through the ``-f`` filter (libpcap's offline filter);
            then exit once the server has acknowledged everything.
        paced: replay at the recorded pace (else as fast as possible).

    Returns:
        The process's exit status.

    Raises:
        UsageError: bad credentials, no server, or the capture cannot start.
    """
    from mediation.tap.seed import seed_tap
    from mediation.warrants.validate import parse_host_port

    credentials = read_credentials(credentials_path)
    _, default_port = parse_host_port(credentials.server, "`server` in the credentials file")
    udp = (config.destination, config.cmc_port) if config.cmc_port is not None else None
    settings = RunSettings(
        address=(config.destination, config.cmii_port or default_port),
        udp=udp,
        interface=config.interface,
        source=source,
        paced=paced,
        spool_dir=Path(f"{credentials_path}.spool"),
    )
    return run(credentials, settings, seed_tap(config), config.filter, config)


def run(
    credentials: Any,
    settings: RunSettings,
    fixed: Tap | None = None,
    expression: str | None = None,
    seed_config: TapConfig | None = None,
) -> int:
    """Run the tap process until its source ends (a file) or it is stopped (an interface).

    Args:
        credentials: the tap's :class:`TapCredentials`.
        settings: see :class:`RunSettings`.
        fixed: the seed form's tap (else taps come from the server's warrant set).
        expression: the seed form's kernel filter (tcpdump syntax), with ``fixed``.
        seed_config: the seed form's configuration, to rebuild ``fixed`` with
            the MACs to follow of the server's warrant (mediation/tap/seed.py).

    Returns:
        0.

    Raises:
        UsageError: no warrant set in time, the file or the capture cannot be read.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mediate tap: %(message)s"))
    logger = logging.getLogger("mediation.tap")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if settings.quiet else logging.INFO)
    seed = None
    if fixed is not None:
        from mediation.tap.seed import seed_tap

        config = seed_config
        rebuild = None if config is None else (lambda macs: seed_tap(config, macs))
        seed = (fixed, expression, rebuild)
    try:
        return trio.run(_run, credentials, settings, seed)
    except* UsageError as group:  # raised inside a nursery: one line, exit 2, as everywhere
        raise group.exceptions[0] from None


async def _run(credentials: Any, settings: RunSettings, seed: tuple[Any, ...] | None) -> int:
    from mediation.tap.link import TapClient, client_context
    from mediation.tap.spool import TapSpool
    from mediation.tap.trace import BatchTrace

    spool = None
    if settings.udp is None:
        spool = await trio.to_thread.run_sync(
            lambda: TapSpool.open(
                settings.spool_dir, credentials.hmac_key, settings.spool_limit, reserve=True
            )
        )
    address, source = settings.address, settings.source
    trace = BatchTrace.from_environment()  # latency work only (bench/e2e.py --stages)
    try:
        client = TapClient(
            credentials,
            spool,
            address,
            client_context(credentials),
            udp=settings.udp,
            batch_pdus=settings.batch,
            epoch=settings.epoch,
            fixed=seed,
            linger=settings.linger,
            trace=trace,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run_link)
            nursery.start_soon(client.run_timer)
            await _ready(client, settings, seed is not None)
            if source is None:
                assert settings.interface is not None
                await _live(client, settings.interface, settings.workers)
            else:
                pace = Pace(settings.paced and settings.rate is None, settings.rate)
                await replay_file(client, source, pace, settings.interface)
            with trio.move_on_after(math.inf if source is not None else 5.0):
                await client.drained()  # a live tap stopping keeps the rest spooled
            nursery.cancel_scope.cancel()
    finally:
        if spool is not None:
            spool.close()
        if trace is not None:
            trace.close()
    c = client.counters
    print(
        f"tap {credentials.name}: {c.frames} frames, {c.pdus} PDUs in {c.batches} batches; "
        f"{c.acked} acknowledged, {c.overflow_batches} refused by a full spool",
        flush=True,
    )
    stats = client.capture_stats()
    if stats is not None:
        print(
            f"tap {credentials.name}: capture on {settings.interface}: "
            f"{stats.kernel_received} frames passed the kernel filter, "
            f"{stats.kernel_dropped} dropped by the kernel (ring full)",
            flush=True,
        )
    return 0


# The seed form replaying a file waits this long for the link before it
# replays anyway, into the spool (sent once the link is up): its tap is known
# without the server, and a replay that waits for ever would look hung.
LINK_WAIT = 5.0


async def _ready(client: Any, settings: RunSettings, seeded: bool) -> None:
    """Wait until capture or replay may begin: compiled, and the link up when it can be.

    Everything a first packet needs is ready before capture or replay
    begins, so nothing captured waits for a compile (docs/tap.md,
    "Start-up"). Targets from the server: the first warrant set (it comes
    once the link is up; the reference codec is compiled meanwhile, when a
    warrant needs it), within ``connect_wait``. The seed form: its tap is
    known, so it is compiled for while the link connects; a live capture
    then begins at once (what it captures waits in the spool), a replay
    waits for the link up to :data:`LINK_WAIT` seconds and then replays
    into the spool.

    Raises:
        UsageError: no warrant set from the server within ``connect_wait``.
    """
    if seeded:
        await client.prepare()
        if settings.source is not None:
            with trio.move_on_after(min(LINK_WAIT, settings.connect_wait)) as waited:
                await client.warrants_ready.wait()
            if waited.cancelled_caught:
                log.warning("tap link: not up after %g s; replaying into the spool", LINK_WAIT)
        return
    with trio.move_on_after(settings.connect_wait) as waited:
        await client.warrants_ready.wait()
    if waited.cancelled_caught:
        host, port = settings.address
        raise UsageError("--server", f"no warrant set from {host}:{port} in time")


async def _live(client: Any, interface: str, workers: int = 1) -> None:
    """Capture until stopped (SIGINT, SIGTERM); the spool keeps what is not yet acknowledged."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def capture() -> None:
                try:
                    await client.run_live(interface, workers)
                except OSError as exc:
                    raise UsageError("-i", f"cannot capture on {interface}: {exc}") from None

            nursery.start_soon(capture)
            nursery.start_soon(_report_drops, client, interface)
            async for _signum in signals:
                nursery.cancel_scope.cancel()
                break


DROP_CHECK, DROP_REPORT = 10.0, 60.0  # seconds: read the counters; the most often to warn


async def _report_drops(client: Any, interface: str) -> None:
    """Warn when the kernel dropped frames (the ring was full): at most once a minute."""
    reported, last_warning = 0, -math.inf
    while True:
        await trio.sleep(DROP_CHECK)
        stats = client.capture_stats()
        if stats is None or stats.kernel_dropped == reported:
            continue
        if time.monotonic() - last_warning >= DROP_REPORT:
            log.warning(
                "capture on %s: the kernel dropped %d frames (ring full; %d in all)",
                interface,
                stats.kernel_dropped - reported,
                stats.kernel_dropped,
            )
            reported, last_warning = stats.kernel_dropped, time.monotonic()
