"""The running server's answers on its control socket: ``reload``, ``status``, ``purge``.

The socket and its line protocol are :mod:`mediation.server.control_listener`
and :mod:`mediation.server.control`; here is what the server answers
(:class:`ControlRequests`, a base class of
:class:`~mediation.server.app.MediationServer`).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Any

from mediation.errors import UsageError
from mediation.server.config import ServerConfig
from mediation.server.control import ControlError
from mediation.server.control_listener import ControlSocket
from mediation.server.delivery import DeliveryManager
from mediation.server.ingest import Ingest
from mediation.server.radius import RadiusService
from mediation.server.retention import InsideRetention, purge_request
from mediation.server.retrieval import RetrievalService
from mediation.server.taps import TapService
from mediation.server.tzsp import TzspService
from mediation.server.warrant_table import WarrantTable
from mediation.warrants.keys import RegistryKey
from mediation.warrants.model import format_time


class ControlRequests:
    """What a :class:`~mediation.server.app.MediationServer` answers on its control socket.

    Uses the server's table, services, configuration and counters; reloads
    and detaches streams with the server's own methods.
    """

    table: WarrantTable
    config: ServerConfig
    started: dt.datetime
    taps_connected: set[str]
    reloads: int
    intake: Ingest | None
    delivery: DeliveryManager | None
    retrieval: RetrievalService | None
    taps: TapService | None
    tzsp: TzspService | None
    radius: RadiusService | None
    control: ControlSocket | None
    _key: RegistryKey
    _clock: Callable[[], dt.datetime]

    async def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one control request (see ``control.py`` for the protocol)."""
        op = request["op"]
        if op == "reload":
            change = await self.reload()
            return {"ok": True, "op": op, "changes": change.to_json(), **self._status()}
        if op == "status":
            return {"ok": True, "op": op, **self._status()}
        if op == "purge":
            return await self._purge(request)
        raise ControlError(f"unknown op {op!r} (allowed: reload, status, purge)")

    async def _purge(self, request: dict[str, Any]) -> dict[str, Any]:
        """``mediate purge`` through us: one warrant, only if past retention."""
        assert self.intake is not None
        try:
            report = await purge_request(
                self.intake.evidence,
                self._key,
                request,
                self._clock(),
                self.config.retention.years,
                self._detach,
            )
        except InsideRetention as exc:
            return {"ok": False, "op": "purge", "error": str(exc), "inside_retention": True}
        except UsageError as exc:
            raise ControlError(str(exc)) from None
        return {"ok": True, "op": "purge", "purge": report.to_json()}

    def _status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "started": format_time(self.started),
            "generation": self.table.generation,
            "warrants": self.table.statuses(),
            "taps_connected": sorted(self.taps_connected),
            "delivery": [row.to_json() for row in self.delivery_rows()],
            "reloads": self.reloads,
            "udp_refused": self.delivery.udp_refused() if self.delivery is not None else {},
        }
        if self.control is not None:
            out["control"] = self.control.counters.to_json()
        if self.intake is not None:
            out["ingest"] = self.intake.counters.to_json()
            out["clock"] = self.intake.clock.reading.status.value
            out["storage"] = {
                str(sid): "ok" if s.state.healthy else f"unable to store: {s.state.reason}"
                for sid, s in self.intake.streams.items()
            }
        if self.retrieval is not None:
            out["retrieval"] = self.retrieval.status()
        if self.taps is not None:
            out["taps"] = self.taps.status()
        if self.tzsp is not None:
            out["tzsp"] = self.tzsp.status()
        if self.radius is not None:
            out["radius"] = self.radius.status()
        return out
