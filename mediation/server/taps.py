"""The tap listeners: TLS and UDP tap links into ingest (docs/tap-link.md).

TLS: after the handshake, :func:`mediation.server.tls.check_tap_peer`
(the tap CA, the tap role), then the registry: a registered, unrevoked
tap whose certificate fingerprint is the one registered; the tap's hello
must name that tap. Then its :class:`~mediation.server.tap_connection.TapConnection`
runs the :class:`TapLinkServer` machine: the warrant set is sent (and again
when it changes), each batch is checked and appended
(:mod:`mediation.server.tap_ingest`) and acknowledged once durable, in order.

UDP: each datagram is opened (:class:`DatagramOpener`, direction
tap->server) under the key of the tap its key id names; forged,
replayed and stale datagrams are refused and counted; batch ids missing
from a tap's session are counted as upstream loss, and each warrant the
tap serves gets an upstream-gap notice.

Tap lost / tap back notices follow the TLS link's state. Everything here
is counted for ``mediate status`` (the ``taps`` section).
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import ssl
from collections.abc import Callable
from typing import Any, Protocol

import trio
from cryptography.hazmat.primitives.serialization import Encoding

from mediation.pdu import taplink as T
from mediation.pdu.errors import PDUError
from mediation.pki import RoleRefused, fingerprint
from mediation.protocol.errors import ProtocolError
from mediation.protocol.sealed import DatagramOpener, Direction, SealKey, SealRefused
from mediation.protocol.taplink import TapLinkServer, UpstreamLoss
from mediation.refusals import Refusals
from mediation.server.config import TapsConfig, listen_address
from mediation.server.link import close_quietly
from mediation.server.tap_connection import TapConnection, describe, receive_some, served
from mediation.server.tap_ingest import TapGate, TapIngest
from mediation.server.tls import IdentityFiles, check_tap_peer
from mediation.server.udp_listen import bind_udp
from mediation.server.warrant_table import WarrantTable
from mediation.warrants.model import Tap, Warrant, WarrantState

log = logging.getLogger("mediation.server")
HANDSHAKE_TIMEOUT = 10.0
_IGNORED = trio.TASK_STATUS_IGNORED


def tap_key_id(cert_fingerprint: str) -> int:
    """The sealed key id of a tap: the first 4 octets of its certificate's SHA-256."""
    return int(cert_fingerprint[:8], 16)


class Hooks(Protocol):
    """What the listeners need of the server (:class:`MediationServer`)."""

    taps_connected: set[str]

    def tap_lost(self, tap_name: str) -> None: ...
    def tap_restored(self, tap_name: str) -> None: ...
    def upstream_gap(
        self, handle: str, lost: int, start: dt.datetime, end: dt.datetime, source: str
    ) -> None: ...


class TapService:
    """Both tap listeners and their counters."""

    def __init__(
        self,
        config: TapsConfig,
        identity: IdentityFiles,
        table: WarrantTable,
        ingest: TapIngest,
        hooks: Hooks,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.config = config
        self.identity = identity
        self.table = table
        self.ingest = ingest
        self.hooks = hooks
        self.clock = clock
        self.tls_listening: tuple[str, int] | None = None
        self.udp_listening: tuple[str, int] | None = None
        self.refusals = Refusals(log, "tap link: refused", clock=trio.current_time)
        self.connections: collections.Counter[str] = collections.Counter()
        self.lost_upstream: collections.Counter[str] = collections.Counter()
        self._lost: set[str] = set()  # taps that were connected and went away
        self._opener = DatagramOpener({}, Direction.TAP_TO_SERVER)
        self._key_taps: dict[int, str] = {}
        self._loss: dict[str, UpstreamLoss] = {}
        self._last_captured: dict[str, dt.datetime] = {}
        self._links: set[TapConnection] = set()
        self._gates: dict[str, tuple[int, TapGate]] = {}  # tap -> (table version, its gate)

    # -- status ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "tls_listening": _shown(self.tls_listening),
            "udp_listening": _shown(self.udp_listening),
            "connections": dict(self.connections),
            "batches": self.ingest.batches,
            "refused_pdus": dict(sorted(self.ingest.refused.items())),
            "refused_links": dict(sorted(self.refusals.counts.items())),
            "refused_datagrams": {r.value: n for r, n in self._opener.refused.items()},
            "upstream_lost": dict(self.lost_upstream),
        }

    # -- TLS ---------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.identity.certificate, self.identity.private_key)
        context.verify_mode = ssl.CERT_REQUIRED
        assert self.identity.tap_ca is not None
        context.load_verify_locations(
            cadata=self.identity.tap_ca.public_bytes(Encoding.PEM).decode("ascii")
        )
        return context

    async def run_tls(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen for TLS taps until cancelled (a bind failure is logged; the server carries on)."""
        address = listen_address(self.config.tls_listen)
        if address is None:
            task_status.started()
            return
        try:
            listeners = await trio.open_tcp_listeners(address[1], host=address[0])
        except OSError as exc:
            log.error("tap link: cannot listen on %s: %s", self.config.tls_listen, exc.strerror)
            task_status.started()
            return
        self.tls_listening = listeners[0].socket.getsockname()[:2]
        log.info("tap link: listening on %s (TLS, tap certificates)", _shown(self.tls_listening))
        context = self._context()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._summaries)
            await trio.serve_listeners(
                lambda tcp: self._serve(trio.SSLStream(tcp, context, server_side=True)),
                listeners,
            )

    async def _summaries(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.refusals.tick()

    async def _serve(self, stream: trio.SSLStream) -> None:
        try:
            tap = await self._identify(stream)
            if tap is not None:
                await self._link(tap, stream)
        except Exception as exc:  # one connection's failure must not stop the listener
            self.refusals.refuse(f"connection failed: {describe(exc)}", "")
        finally:
            await close_quietly(stream)

    async def _identify(self, stream: trio.SSLStream) -> Tap | None:
        """The registered, unrevoked tap whose certificate this is, or None (refused)."""
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await stream.do_handshake()
            der = stream.getpeercert(binary_form=True)
            check_tap_peer(der, self.identity)
        except trio.TooSlowError:
            self.refusals.refuse("no handshake in time", "")
            return None
        except trio.BrokenResourceError:
            self.refusals.refuse("no acceptable certificate", "")
            return None
        except RoleRefused as exc:
            self.refusals.refuse(str(exc), "")
            return None
        seen = fingerprint(der)
        tap = next((t for t in self.table.taps.values() if t.cert_fingerprint == seen), None)
        if tap is None:
            self.refusals.refuse("unregistered tap certificate", "")
            return None
        if tap.revoked is not None:
            self.refusals.refuse("revoked tap", tap.name)
            return None
        return tap

    async def _link(self, tap: Tap, stream: trio.SSLStream) -> None:
        machine = TapLinkServer(trio.current_time(), keepalive=self.config.keepalive)
        hello = await self._hello(tap, stream, machine)
        if hello is None:
            return
        name = tap.name
        self.connections[name] += 1
        self.hooks.taps_connected.add(name)
        if name in self._lost:
            self._lost.discard(name)
            self.hooks.tap_restored(name)
        log.info("tap %s: connected (batches stored up to %d)", name, hello[0])
        link = TapConnection(self, tap, stream, machine)
        self._links.add(link)
        try:
            await link.run(hello[1])
        finally:
            self._links.discard(link)
            log.info("tap %s: disconnected (%s)", name, link.reason)
            if not any(other.tap.name == name for other in self._links):  # its last link
                self.hooks.taps_connected.discard(name)
                self.table.tap_dropped(name)
                self._lost.add(name)
                self.hooks.tap_lost(name)

    async def _hello(
        self, tap: Tap, stream: trio.SSLStream, machine: TapLinkServer
    ) -> tuple[int, T.TapHello] | None:
        """Wait for the hello; answer it. None: refused."""
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            while machine.hello is None:
                data = await receive_some(stream)
                if not data:
                    return None
                try:
                    machine.receive_data(data, trio.current_time())
                except ProtocolError as exc:
                    self.refusals.refuse(f"bad hello: {exc}", tap.name)
                    return None
        hello = machine.hello
        if hello is None:
            self.refusals.refuse("no hello in time", tap.name)
            return None
        if hello.name != tap.name:
            self.refusals.refuse("hello names another tap than the certificate", tap.name)
            return None
        last = await self.ingest.hello(tap.name, hello.next_batch)
        machine.accept(last, trio.current_time())
        return last, hello

    def gate(self, tap: str) -> TapGate:
        """The checks for ``tap``'s PDUs: built once per change of the warrant table.

        Kept between batches (keyed on :attr:`WarrantTable.version`): building
        one walks every warrant of the table, and its cache of address pairs
        already checked is only worth something if it lives longer than a batch.
        """
        cached = self._gates.get(tap)
        if cached is not None and cached[0] == self.table.version:
            return cached[1]
        gate = TapGate(tap, [w for w in served(self.table, tap) if self._active(w)])
        self._gates[tap] = (self.table.version, gate)
        return gate

    def _active(self, warrant: Warrant) -> bool:
        return self.table.state(warrant.handle) is WarrantState.ACTIVE

    def overflow(self, tap: str, overflow: T.Overflow) -> None:
        """A tap's spool refused batches: an upstream gap for each warrant it serves."""
        self.lost_upstream[tap] += overflow.count
        for warrant in served(self.table, tap):
            if self._active(warrant):
                self.hooks.upstream_gap(
                    warrant.handle, overflow.count, overflow.first, overflow.last, f"tap:{tap}"
                )

    # -- UDP ---------------------------------------------------------------------

    def on_change(self) -> None:
        """The warrants changed: connected taps accept theirs now and are sent the new set.

        Marked at once, so ``mediate add``'s "taps accepted" line, answered
        right after this, names the taps that will have the warrant.
        """
        self.sync_keys()
        for link in list(self._links):
            if not self.table.tap_allowed(link.tap.name):  # revoked (or removed): cut it now
                link.revoke()
                continue
            for warrant in served(self.table, link.tap.name):
                self.table.tap_accepted(warrant.handle, link.tap.name)
            link.wake.set()

    def sync_keys(self) -> None:
        """Take the registered taps' keys (after each reload); revoked taps have none."""
        keys, owners = {}, {}
        for tap in self.table.taps.values():
            if tap.revoked is None and tap.hmac_key is not None:
                key_id = tap_key_id(tap.cert_fingerprint)
                keys[key_id] = SealKey(key_id, tap.hmac_key)
                owners[key_id] = tap.name
        self._opener.keys, self._key_taps = keys, owners

    async def run_udp(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive sealed batches until cancelled."""
        bound = bind_udp(self.config.udp_listen, "tap link", log)
        if bound is None:
            task_status.started()
            return
        sock = trio.socket.from_stdlib_socket(bound)
        self.udp_listening = sock.getsockname()[:2]
        log.info("tap link: listening on udp %s (sealed datagrams)", _shown(self.udp_listening))
        self.sync_keys()
        task_status.started()
        with sock:
            while True:
                datagram = await sock.recv(65536)
                await self._datagram(datagram)

    async def _datagram(self, datagram: bytes) -> None:
        try:
            opened = self._opener.open(datagram)
        except SealRefused:
            return  # counted by the opener (status: refused_datagrams)
        tap = self._key_taps.get(opened.key_id)
        first = last = None
        try:
            message = T.decode(opened.message)
            if isinstance(message, T.PduBatch) and message.pdus:
                # The times a gap notice needs (a batch's times are read only when asked for).
                first, last = message.pdus[0].captured, message.pdus[-1].captured
        except PDUError:
            message = None
        if tap is None or not isinstance(message, T.PduBatch):
            self.refusals.refuse("datagram is not a batch", tap or "")
            return
        lost = self._loss.setdefault(tap, UpstreamLoss()).observe(opened.session, message.batch_id)
        if lost and first is not None:
            self._gap(tap, lost, first)
        if last is not None:
            self._last_captured[tap] = last
        await self.ingest.batch(self.gate(tap), message, durable=False)

    def _gap(self, tap: str, lost: int, until: dt.datetime) -> None:
        self.lost_upstream[tap] += lost
        since = self._last_captured.get(tap, until)
        for warrant in served(self.table, tap):
            if self._active(warrant):
                self.hooks.upstream_gap(warrant.handle, lost, since, until, f"tap:{tap}")


def _shown(address: tuple[str, int] | None) -> str | None:
    if address is None:
        return None
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
