"""Retrieval: fetching from the server's log what the receiver is missing.

The receiver connects to the server's retrieval address as TLS client (its
agency certificate; the server checked against its CA or a pin) and speaks
the stream protocol with the :class:`RetrievalClient` inside a
:class:`StreamReceiver` that shares the receiver's trackers. Two uses:

- :class:`Retriever` runs all along and asks for the gaps the trackers
  count, once they are old enough not to be datagrams still in flight;
- :func:`fetch` asks for explicit ranges once, and returns when every
  request has its ReplayResult (``mediate receive --fetch``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import ssl

import trio

from mediation import pdu
from mediation.lea.driver import StreamDriver
from mediation.lea.state import ReceiverState
from mediation.lea.tls import PeerRefused, ServerCheck, failure_reason
from mediation.pki import SERVER_AUTH
from mediation.protocol import Event, ReplayFinished, StreamReceiver
from mediation.protocol.retrieval import MAX_OUTSTANDING

log = logging.getLogger("mediation.lea")

Address = tuple[str, int]
MAX_BACKOFF = 30.0
IDLE = "nothing left to fetch"
CONNECTION_SPENT = "the server's limit for one connection is reached"


@dataclasses.dataclass(frozen=True)
class FetchRange:
    """Sequence numbers ``first`` to ``last`` (inclusive) of one stream, to fetch."""

    stream: pdu.StreamId
    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.stream}:{self.first}-{self.last}"


class ConnectError(Exception):
    """The retrieval address could not be reached or authenticated (one line why)."""


async def connect(
    address: Address, context: ssl.SSLContext, server: ServerCheck | None, timeout: float
) -> trio.SSLStream:
    """A TLS connection to the retrieval address, handshake done and the server checked.

    Raises:
        ConnectError: refused, unreachable, timed out, or not the server we trust.
    """
    host, port = address
    tcp: trio.SocketStream | None = None
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port)
            stream = trio.SSLStream(tcp, context, server_hostname=host)
            await stream.do_handshake()
        (server or ServerCheck()).check(stream.getpeercert(binary_form=True), SERVER_AUTH)
    except OSError as exc:
        raise ConnectError(exc.strerror or str(exc)) from None
    except trio.TooSlowError:
        if tcp is not None:
            await trio.aclose_forcefully(tcp)
        raise ConnectError(f"no TLS handshake within {timeout:g} s") from None
    except trio.BrokenResourceError as exc:
        raise ConnectError(f"TLS handshake failed: {failure_reason(exc)}") from None
    except PeerRefused as exc:
        await trio.aclose_forcefully(stream)
        raise ConnectError(f"server refused: {exc}") from None
    return stream


class Settling:
    """When a missing range is old enough to ask for.

    A UDP gap may be a datagram still in flight or reordered. A gap below
    what was the highest held ``settle`` seconds ago has been a gap for at
    least that long, so only those are asked for.
    """

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self._samples: dict[pdu.StreamId, collections.deque[tuple[float, int]]] = {}

    def observe(self, now: float, state: ReceiverState) -> None:
        """Note each stream's highest held sequence number at ``now``."""
        for stream, tracker in state.trackers.items():
            if tracker.highest is None:
                continue
            samples = self._samples.setdefault(stream, collections.deque())
            samples.append((now, tracker.highest))
            # Keep the newest sample that is already old enough, drop older ones.
            while len(samples) > 1 and samples[1][0] <= now - self.settle:
                samples.popleft()

    def below(self, stream: pdu.StreamId, now: float) -> int | None:
        """Ask only for gaps below this sequence number; None: nothing is old enough yet."""
        samples = self._samples.get(stream)
        if not samples or samples[0][0] > now - self.settle:
            return None
        return samples[0][1]

    def wanted(self, state: ReceiverState, now: float) -> bool:
        """Whether any stream has a retrievable gap old enough to ask for."""
        for stream, tracker in state.trackers.items():
            below = self.below(stream, now)
            if below is not None and stream in state.accepted:
                first = tracker.retrievable(limit=1, now=now)
                if first and first[0][0] < below:
                    return True
        return False


class Retriever:
    """Keeps a retrieval connection while there are gaps, and asks for them."""

    def __init__(
        self,
        state: ReceiverState,
        address: Address,
        context: ssl.SSLContext,
        server: ServerCheck | None,
        *,
        interval: float = 1.0,
        settle: float = 2.0,
        handshake_timeout: float = 10.0,
        idle_close: float = 30.0,
    ) -> None:
        """Args:
        state: the receiver's shared state (trackers, outputs).
        address: the server's retrieval HOST, PORT.
        context: from :func:`mediation.lea.tls.retrieval_client_context`.
        server: how the server is recognised (CA, pin, role; see ``lea.tls``).
        interval: seconds between looks at the trackers.
        settle: how old a gap must be before it is asked for.
        handshake_timeout: seconds for TCP connect and TLS handshake.
        idle_close: close the connection after this long with nothing to ask.
        """
        self.state = state
        self.address = address
        self.context = context
        self.server = server
        self.interval = interval
        self.settling = Settling(settle)
        self.handshake_timeout = handshake_timeout
        self.idle_close = idle_close
        self.machine: StreamReceiver | None = None
        self.connections = 0
        self._spent = False  # the server's per-connection limit was reached

    @property
    def open_requests(self) -> int:
        """Replay requests sent and not yet answered."""
        machine = self.machine
        return len(machine.retrieval.open_requests) if machine and machine.connected else 0

    async def run(self) -> None:
        """Forever: wait for something to fetch, connect, fetch; back off on failure."""
        backoff = self.interval
        while True:
            while not self.settling.wanted(self.state, trio.current_time()):
                await trio.sleep(self.interval)
                self.settling.observe(trio.current_time(), self.state)
            began = trio.current_time()
            try:
                stream = await connect(
                    self.address, self.context, self.server, self.handshake_timeout
                )
                ended = await self._session(stream)
            except ConnectError as exc:
                ended = str(exc)
            if ended == IDLE:
                log.info("retrieval: %s:%d: %s", *self.address, ended)
                backoff = self.interval
                continue
            if trio.current_time() - began >= MAX_BACKOFF:
                backoff = self.interval  # it worked for a while: not a tight failure loop
            # A failure may repeat at once (a server that keeps hanging up,
            # say): wait before the next attempt, longer each time.
            log.warning("retrieval: %s:%d: %s; again in %g s", *self.address, ended, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _session(self, stream: trio.SSLStream) -> str:
        """One retrieval connection, until idle or broken; returns why it ended."""
        self.connections += 1
        self.machine = StreamReceiver(trackers=self.state.trackers, streams=self.state.accepted)
        self.machine.connection_made(trio.current_time())
        log.info("retrieval: connected to %s:%d", *self.address)
        self._spent = False

        async def on_events(events: list[Event]) -> None:
            # The server's budget for this connection is spent: anything
            # asked here now is "not yet". The requester ends the session.
            for event in events:
                if isinstance(event, ReplayFinished):
                    self._spent |= event.limited is pdu.ReplayLimit.CONNECTION

        driver = StreamDriver(self.machine, stream, self.state, "retrieval", on_events=on_events)
        await driver.run(self._requester)
        return driver.ended_by or "closed"

    async def _requester(self, driver: StreamDriver) -> None:
        machine = driver.machine
        quiet_since = trio.current_time()
        while True:
            if self._spent:  # reconnect (after the backoff) for a new budget
                driver.end(CONNECTION_SPENT)
                return
            now = trio.current_time()
            self.settling.observe(now, self.state)
            for stream in list(self.state.trackers):
                below = self.settling.below(stream, now)
                if below is None or stream not in self.state.accepted:
                    continue
                requests = machine.request_missing(stream, below, now)
                if requests:
                    log.info("retrieval: asking for %s gaps (%d requests)", stream, len(requests))
                for request in requests:
                    await driver.send(request)
            if machine.retrieval.open_requests or self.settling.wanted(self.state, now):
                quiet_since = now
            elif now - quiet_since >= self.idle_close:
                driver.end(IDLE)
                return
            await trio.sleep(self.interval)


async def fetch(
    state: ReceiverState,
    address: Address,
    context: ssl.SSLContext,
    server: ServerCheck | None,
    ranges: list[FetchRange],
    *,
    handshake_timeout: float = 10.0,
) -> list[ReplayFinished]:
    """Ask for each range once and store what comes; return the server's results.

    Raises:
        ConnectError: the server could not be reached or authenticated, or
        the connection ended before every request was answered.
    """
    stream = await connect(address, context, server, handshake_timeout)
    machine = StreamReceiver(trackers=state.trackers, streams=state.accepted)
    machine.connection_made(trio.current_time())
    results: list[ReplayFinished] = []
    answered = trio.Event()

    async def on_events(events: list[Event]) -> None:
        finished = [e for e in events if isinstance(e, ReplayFinished)]
        if finished:
            results.extend(finished)
            answered.set()

    async def requester(driver: StreamDriver) -> None:
        nonlocal answered
        pending = collections.deque(ranges)
        while pending or machine.retrieval.open_requests:
            while pending and len(machine.retrieval.open_requests) < MAX_OUTSTANDING:
                item = pending.popleft()
                await driver.send(machine.retrieval.request(item.stream, [(item.first, item.last)]))
            await answered.wait()
            answered = trio.Event()
        driver.end("fetch complete")

    driver = StreamDriver(machine, stream, state, "retrieval", on_events=on_events)
    await driver.run(requester)
    if len(results) < len(ranges):
        raise ConnectError(f"{len(ranges) - len(results)} requests unanswered: {driver.ended_by}")
    return results
