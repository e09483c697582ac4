"""Delivery workers: one per agency endpoint, one cursor task per warrant stream.

:class:`DeliveryManager` keeps the workers matching the warrant table:
each agency endpoint (UDP or TLS) gets the streams its ``streams`` setting
names (cmii, cmcc, both) of every warrant of *that* agency whose streams
are open in this server (active now, or active earlier and still being
delivered). A stream of another agency's warrant is never given to it:
the set is computed from ``warrant.agency`` alone, and the machines then
refuse anything else the agency asks for.

Workers read from the log only, so ingest never waits for them, and an
absent agency costs disk, not memory: a worker holds its position and at
most one batch (or one TLS window) of records.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping

import trio

from mediation.evidence.manifest import Signer
from mediation.log import LogRecord, StreamLog
from mediation.pdu import StreamId, StreamKind
from mediation.protocol.envelope import StreamEnvelopes
from mediation.server.config import DeliveryConfig, FilesConfig
from mediation.server.delivery_files import FilesWorker
from mediation.server.delivery_tls import TlsWorker
from mediation.server.delivery_udp import UdpWorker
from mediation.server.status import EndpointRef, StatusRow
from mediation.server.tls import AgencyTrust, IdentityFiles
from mediation.server.warrant_table import WarrantTable
from mediation.warrants.model import Endpoint, Stream

log = logging.getLogger("mediation.server.delivery")
_KIND = {Stream.CMII: StreamKind.CMII, Stream.CMCC: StreamKind.CMCC}
Worker = UdpWorker | TlsWorker | FilesWorker
# The shared envelopes of all delivered streams together keep at most this
# (two generations a stream, plus its last run), as the log's rings share
# ``ring_budget``: each stream's generation is its share, up to
# MAX_GENERATION.
ENVELOPE_BUDGET = 64 * 1024 * 1024
# Two generations cover a TLS endpoint a whole window behind the UDP one
# (1,024 envelopes of ~1.5 KB and a log read of 256): at saturation it runs
# that far behind, waiting for a quarter of its window, and with generations
# of 256 KiB the cache paused and kept nothing, so each envelope was framed
# twice (docs/architecture.md, "The server's CPU per PDU: one framing a PDU").
MAX_GENERATION = 2 * 1024 * 1024


def endpoint_ident(secret: bytes, agency: str, endpoint: Endpoint) -> str:
    """A stable name for an endpoint that gives away no address.

    Keyed (HMAC-SHA256 under a subkey of the registry key): an unkeyed hash
    of an IPv4 address and port could be reversed by trying them all.
    """
    message = f"{agency}|{endpoint.transport}|{endpoint.host}|{endpoint.port}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:12]


class DeliveryManager:
    """Starts, updates and stops the endpoint workers as warrants and agencies change."""

    def __init__(
        self,
        nursery: trio.Nursery,
        config: DeliveryConfig,
        identity: IdentityFiles,
        trust: AgencyTrust,
        secret: bytes,
        files: tuple[FilesConfig, Signer] | None = None,
    ) -> None:
        self._nursery = nursery
        self._files = files  # capture-to-disk: rotation, and the key that signs manifests
        self.config = config
        self._identity = identity
        self._trust = trust
        self._secret = secret
        self._workers: dict[tuple[str, str], tuple[Worker, trio.CancelScope]] = {}
        # Per stream, its envelopes encoded once for all its endpoints.
        self._envelopes: dict[StreamId, StreamEnvelopes] = {}

    def sync(
        self,
        owners: Mapping[str, str],
        table: WarrantTable,
        streams: Mapping[StreamId, StreamLog],
    ) -> None:
        """Make the workers match the agencies and the open streams (synchronous).

        Args:
            owners: warrant handle -> agency handle, for every warrant seen
                (a removed warrant's streams are still delivered to the end).
            table: the agencies and their endpoints.
            streams: the open streams.

        Synchronous on purpose: a UDP stream's starting position is taken
        here, before the caller appends the warrantActive notice.
        """
        wanted = self._wanted(owners, table, streams)
        envelopes = self._share_envelopes(chosen for _ref, _endpoint, chosen in wanted.values())
        for key in list(self._workers):
            if key not in wanted or wanted[key][1] != self._workers[key][0].endpoint:
                self._stop(key)
        for key, (ref, endpoint, chosen) in wanted.items():
            if key not in self._workers:
                self._start(key, ref, endpoint)
            worker = self._workers[key][0]
            worker.ref = ref  # the endpoint's number may change when another is removed
            if isinstance(worker, FilesWorker):  # writes the content, not envelopes
                worker.set_streams(chosen)
            else:
                worker.set_streams(chosen, envelopes=envelopes)

    def _share_envelopes(
        self, chosen: Iterable[Mapping[StreamId, StreamLog]]
    ) -> dict[StreamId, StreamEnvelopes]:
        """One envelope encoder per delivered stream; its workers join and leave it."""
        delivered = {sid for streams in chosen for sid in streams}
        for sid in list(self._envelopes):
            if sid not in delivered:
                del self._envelopes[sid]
        for sid in delivered:
            if sid not in self._envelopes:
                self._envelopes[sid] = StreamEnvelopes(sid)
        generation = min(MAX_GENERATION, ENVELOPE_BUDGET // (2 * max(1, len(self._envelopes))))
        for envelopes in self._envelopes.values():
            envelopes.generation_bytes = generation
        return self._envelopes

    def _wanted(
        self, owners: Mapping[str, str], table: WarrantTable, streams: Mapping[StreamId, StreamLog]
    ) -> dict[tuple[str, str], tuple[EndpointRef, Endpoint, dict[StreamId, StreamLog]]]:
        by_agency: dict[str, list[StreamId]] = {}
        for sid in streams:
            agency = owners.get(sid.warrant_handle)
            if agency is not None:
                by_agency.setdefault(agency, []).append(sid)
        wanted = {}
        for agency in table.agencies.values():
            if agency.removed is not None or agency.details is None:
                continue
            for number, endpoint in enumerate(agency.details.endpoints, start=1):
                ident = endpoint_ident(self._secret, agency.handle, endpoint)
                ref = EndpointRef(agency.handle, number, endpoint.transport, ident)
                kinds = {_KIND[s] for s in endpoint.streams}
                chosen = {
                    sid: streams[sid]
                    for sid in by_agency.get(agency.handle, ())
                    if sid.kind in kinds
                }
                wanted[(agency.handle, ident)] = (ref, endpoint, chosen)
        return wanted

    def _start(self, key: tuple[str, str], ref: EndpointRef, endpoint: Endpoint) -> None:
        worker: Worker
        if endpoint.transport == "udp":
            worker = UdpWorker(ref, endpoint, self.config)
        elif endpoint.transport == "files":
            assert self._files is not None, "the server gives its signer for files endpoints"
            worker = FilesWorker(ref, endpoint, *self._files)
        else:
            worker = TlsWorker(ref, endpoint, self.config, self._identity, self._trust)
        scope = trio.CancelScope()
        self._workers[key] = (worker, scope)
        self._nursery.start_soon(_run_in, scope, worker)
        log.info("%s: delivery started", ref.label)

    def _stop(self, key: tuple[str, str]) -> None:
        worker, scope = self._workers.pop(key)
        scope.cancel()
        log.info("%s: delivery stopped", worker.ref.label)

    def deliver_from_memory(self, sid: StreamId, record: LogRecord) -> None:
        """A notice the log cannot store yet: to every endpoint carrying its stream now."""
        for worker, _scope in self._workers.values():
            worker.deliver_from_memory(sid, record)

    @property
    def shared_envelopes(self) -> Mapping[StreamId, StreamEnvelopes]:
        """Per delivered stream, its envelopes shared by its endpoints (status, tests)."""
        return self._envelopes

    @property
    def workers(self) -> list[Worker]:
        return [worker for worker, _scope in self._workers.values()]

    def udp_refused(self) -> dict[str, dict[str, int]]:
        """Per UDP endpoint (``a-1b2c3d udp#1``), the datagrams it sent that were dropped."""
        out = {}
        for worker in self.workers:
            if isinstance(worker, UdpWorker) and (refused := worker.refusals()):
                out[f"{worker.ref.agency} {worker.ref.short}"] = refused
        return out

    def rows(self) -> list[StatusRow]:
        """Every (stream, endpoint) row, sorted by handle, stream and endpoint."""
        rows = [row for worker in self.workers for row in worker.rows()]
        return sorted(
            rows, key=lambda r: (r.handle, r.stream, r.endpoint.agency, r.endpoint.number)
        )


async def _run_in(scope: trio.CancelScope, worker: Worker) -> None:
    with scope:
        try:
            await worker.run()
        except Exception as exc:  # one endpoint's bug must not stop the others
            # The type only: an exception's text may hold the endpoint's address.
            log.error("%s: delivery failed (%s)", worker.ref.label, type(exc).__name__)
