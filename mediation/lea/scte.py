"""SCTE CC datagrams at the agency (``mediate receive --udp H:P --format scte``).

An endpoint registered with ``agency add ... --format scte`` sends each CC
packet as one SCTE/PacketCable datagram (``protocol/scte.py``): CCC id,
NTP capture time, the packet, then the CmCC sequence number and a tag
under the SCTE key (derived from the endpoint's UDP key: the same key file).

The warrant handle is not on the wire; the CCC id is an HMAC of it under
that key. So the receiver is told the handles it expects (``--handle``,
from the carrier) and computes each one's CCC id per key: a datagram whose
CCC id is none of them, or whose tag does not verify, is refused and
counted (``unauthenticated``, reasons prefixed ``scte:``), never stored.
What verifies is tracked per stream exactly like envelopes (the shared
trackers: gaps, duplicates, retrieval of gaps by sequence number from the
log, which holds the same CmCC records) and written to ``cmcc.scte`` (the
datagrams as received) and ``cmcc.pcap``.

SCTE datagrams carry no receiver reports back and no checkpoints.
"""

from __future__ import annotations

import logging
import socket as stdlib_socket

import trio

from mediation import pdu
from mediation.lea.state import ReceiverState
from mediation.protocol import scte
from mediation.protocol.sealed import SealKey
from mediation.refusals import Refusals

log = logging.getLogger("mediation.lea")

Address = tuple[str, int]
MAX_DATAGRAM = 65535
BATCH = 256  # datagrams taken per wake-up before other tasks get a turn


def ccc_routes(keys: list[SealKey], handles: frozenset[str]) -> dict[int, list[tuple[bytes, str]]]:
    """CCC id -> the (SCTE key, warrant handle) pairs that give it.

    Args:
        keys: the endpoint UDP keys (``--udp-key``).
        handles: the warrant handles expected (``--handle``).
    """
    routes: dict[int, list[tuple[bytes, str]]] = {}
    for key in keys:
        derived = scte.scte_key(key.key)
        for handle in sorted(handles):
            routes.setdefault(scte.ccc_id(derived, handle), []).append((derived, handle))
    return routes


class ScteDelivery:
    """The reader of one UDP socket receiving SCTE datagrams."""

    def __init__(
        self,
        sock: stdlib_socket.socket,
        state: ReceiverState,
        keys: list[SealKey],
        handles: frozenset[str],
    ) -> None:
        self.sock = sock
        self.state = state
        self.routes = ccc_routes(keys, handles)
        self.refusals = Refusals(
            log,
            "scte: datagram refused",
            clock=trio.current_time,
            counts=state.counters.unauthenticated,  # type: ignore[arg-type]
        )

    async def reader(self) -> None:
        """Check and store every datagram; count anything else (batched like the UDP reader)."""
        sock = self.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            for _ in range(BATCH):
                try:
                    data, source = sock.recvfrom(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    log.debug("scte: receive: %s", exc)
                    continue
                self.receive(data, source[:2], now)
            self.refusals.tick()
            await trio.lowlevel.checkpoint()

    def receive(self, data: bytes, source: Address, now: float) -> None:
        """One datagram: stored if authentic and new, counted as refused otherwise."""
        if len(data) < scte.HEADER + scte.TRAILER:
            self.refusals.refuse("scte: too short", source[0])
            return
        candidates = self.routes.get(int.from_bytes(data[:4], "big"))
        if not candidates:
            self.refusals.refuse("scte: unknown CCC id", source[0])
            return
        for key, handle in candidates:
            try:
                opened = scte.open_datagram(key, data)
            except scte.ScteRefused as exc:
                reason = f"scte: {exc}"
                continue
            self._store(pdu.StreamId(handle, pdu.StreamKind.CMCC), opened, data, now)
            return
        self.refusals.refuse(reason, source[0])

    def _store(
        self, stream: pdu.StreamId, opened: scte.ScteDatagram, data: bytes, now: float
    ) -> None:
        state = self.state
        tracker = state.tracker(stream)
        stats = state.stream_stats(stream)
        stats.transports.add("scte")
        stats.last_sequence = opened.sequence
        state.last_arrival = now
        expected = 0 if tracker.highest is None else tracker.highest + 1
        if opened.sequence > expected:
            stats.gaps_opened += 1
        if not tracker.add(opened.sequence):
            stats.duplicates += 1
            return
        case = state.case(stream.warrant_handle)
        case.store_scte(opened.sequence, opened.time, opened.packet, data)
        stats.received += 1
        stats.octets += len(data)
