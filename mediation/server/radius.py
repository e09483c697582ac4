"""The RADIUS accounting listener (``[radius]``): a NAS's accounting copies, checked.

Some carriers' NAS can send a copy of their accounting to a second server
(RouterOS ``/radius add service=ppp,hotspot accounting-port=1813 ...``).
With ``[radius] listen`` set, the server takes Accounting-Requests
(RFC 2866) from the NAS addresses in ``[radius] nas`` only, checks each
one's Request Authenticator against the shared secret (``[radius]
secret_file``, a file of mode 0600), and shows the good ones to the RADIUS
following of the TZSP tap core (:meth:`TzspService.accounting`): a warrant
with ``user:NAME`` targets fed by a router follows the addresses that user
holds. An Accounting-Response is sent only once what the request caused is
durable in the log (RFC 2866: respond only when the request is recorded);
a refused request gets no answer, so the NAS resends it.

Everything refused is counted by reason for ``mediate status`` (the
``radius`` section), with rate-limited log lines.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import trio

from mediation.errors import UsageError
from mediation.refusals import Refusals
from mediation.server.config import RadiusConfig
from mediation.server.tzsp import TzspService, shown
from mediation.server.tzsp_socket import normal_address
from mediation.server.udp_listen import bind_udp
from mediation.tap.radius import MAX_PACKET, RadiusError, accounting_response, parse_accounting

log = logging.getLogger("mediation.server")
MAX_SECRET = 128  # RFC 2865 asks for at least 16 octets; nothing sensible is longer


def read_secret(config: RadiusConfig) -> bytes | None:
    """The shared secret in ``[radius] secret_file``; None when the listener is off.

    The file holds the secret as text; a final newline is not part of it.

    Raises:
        UsageError: the file cannot be read, is readable by others, or is empty
            or longer than 128 octets.
    """
    if not config.listen:
        return None
    field, path = "config [radius] secret_file", Path(config.secret_file)
    try:
        mode = path.stat().st_mode & 0o777
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise UsageError(
            field, f"{path} is readable by others (mode {mode:04o}); run: chmod 600 {path}"
        )
    secret = raw[:-1] if raw.endswith(b"\n") else raw
    if not 1 <= len(secret) <= MAX_SECRET:
        raise UsageError(field, f"{path} must hold the shared secret (1 to 128 octets)")
    return secret


class RadiusService:
    """The accounting listener and its counters.

    Args:
        config: ``[radius]`` (its ``listen`` set).
        secret: the shared secret (:func:`read_secret`).
        tzsp: the TZSP service whose taps follow RADIUS.
        clock: the wall clock (the receive time of each request).
    """

    def __init__(self, config: RadiusConfig, secret: bytes, tzsp: TzspService, clock: Any) -> None:
        self.config = config
        self.secret = secret
        self.tzsp = tzsp
        self.clock = clock
        self.nas = frozenset(normal_address(a) for a in config.nas)
        self.listening: tuple[str, int] | None = None
        self.counters: collections.Counter[str] = collections.Counter()
        self.refusals = Refusals(log, "radius: refused", clock=trio.current_time)

    def status(self) -> dict[str, Any]:
        return {
            "listening": shown(self.listening),
            "requests": self.counters["requests"],
            "answered": self.counters["answered"],
            "refused": dict(sorted(self.refusals.counts.items())),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer accounting until cancelled (a bind failure is logged; the server carries on)."""
        bound = bind_udp(self.config.listen, "radius", log)
        if bound is None:
            task_status.started()
            return
        sock = trio.socket.from_stdlib_socket(bound)
        self.listening = sock.getsockname()[:2]
        log.info("radius: listening on udp %s (accounting)", self.config.listen)
        task_status.started()
        with sock:
            while True:
                try:
                    data, peer = await sock.recvfrom(MAX_PACKET + 1)
                except OSError as exc:  # an ICMP error queued on the socket: not fatal
                    self.refusals.refuse(f"socket error: {exc.strerror}")
                    continue
                answer = await self.request(data, normal_address(peer[0]))
                if answer is not None:
                    try:
                        await sock.sendto(answer, peer)
                        self.counters["answered"] += 1
                    except OSError as exc:
                        self.refusals.refuse(f"cannot answer: {exc.strerror}", peer[0])

    async def request(self, data: bytes, sender: str) -> bytes | None:
        """One datagram from ``sender``: its Accounting-Response, or None (refused, counted)."""
        self.counters["requests"] += 1
        if sender not in self.nas:
            self.refusals.refuse("unregistered-nas", sender)
            return None
        if len(data) > MAX_PACKET:
            self.refusals.refuse("oversize", sender)
            return None
        try:
            parse_accounting(data, self.secret)
        except RadiusError as exc:
            self.refusals.refuse(exc.reason.value, sender)
            return None
        now: dt.datetime = self.clock()
        receipts = await self.tzsp.ingest_pdus(self.tzsp.accounting(data, now))
        if receipts is None:  # not recorded: no answer, so the NAS sends it again
            self.refusals.refuse("unable-to-store", sender)
            return None
        for receipt in receipts:
            await receipt.durable()  # recorded before it is acknowledged (RFC 2866)
        return accounting_response(data, self.secret)
