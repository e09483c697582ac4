"""What the server says about delivery: rows, a status line, structured log lines.

Rows are per (warrant stream, agency endpoint) and name the warrant by
handle and the endpoint by the agency's handle, its number among the
agency's endpoints (as ``mediate agency show`` lists them) and its
transport: never an address.

On a terminal the server rewrites one status line each second::

    w-3f9a1c cmCC udp#1 sent 1234 lost 3 | w-3f9a1c cmCC tls#2 acked 1230 backlog 4

trimmed to the terminal's width; otherwise it logs one ``key=value`` line
per row every ``log_interval`` seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
from collections.abc import Callable
from typing import Any, TextIO

import trio

log = logging.getLogger("mediation.server.status")


@dataclasses.dataclass(frozen=True)
class EndpointRef:
    """An agency endpoint as logs and status name it.

    ``ident`` is a keyed hash of transport, host and port (see
    ``delivery.endpoint_ident``): stable across restarts and endpoint
    removals, so it names the endpoint's saved log positions, yet it gives
    away no address.
    """

    agency: str
    number: int  # 1-based, among the agency's endpoints
    transport: str
    ident: str

    @property
    def label(self) -> str:
        """``endpoint 2 (tls) of agency a-1b2c3d``: for log lines."""
        return f"endpoint {self.number} ({self.transport}) of agency {self.agency}"

    @property
    def short(self) -> str:
        return f"{self.transport}#{self.number}"

    @property
    def cursor_name(self) -> str:
        """The named log cursor of this endpoint's acknowledged positions."""
        return f"{self.agency}.{self.transport}.{self.ident}"


@dataclasses.dataclass(frozen=True)
class StatusRow:
    """Delivery of one warrant stream to one endpoint.

    Attributes:
        appended: sequence numbers taken by the stream (one past the last).
        delivered: everything below was sent to the endpoint at least once.
        acknowledged: TLS: everything below is stored by the agency; None for UDP.
        lost: UDP: still missing at the agency per its latest report; None for TLS.
        backlog: appended but not acknowledged (TLS) or not sent (UDP).
        state: connected, connecting, down, refused, idle (TLS);
            waiting, receiving, silent, error, no key (UDP: the endpoint has no sealing key).
    """

    handle: str
    stream: str
    endpoint: EndpointRef
    appended: int
    delivered: int
    acknowledged: int | None
    lost: int | None
    backlog: int
    state: str
    last_error: str | None = None
    exact: bool = True

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["endpoint"] = self.endpoint.number
        out["agency"] = self.endpoint.agency
        out["transport"] = self.endpoint.transport
        return out

    def short(self) -> str:
        """``w-3f9a1c cmCC udp#1 sent 1234 lost 3`` (with the state when not fine)."""
        head = f"{self.handle} {self.stream} {self.endpoint.short}"
        if self.acknowledged is None:
            text = f"{head} sent {self.delivered} lost {self.lost or 0}"
            healthy = self.state in ("receiving", "waiting")
        else:
            text = f"{head} acked {self.acknowledged} backlog {self.backlog}"
            healthy = self.state == "connected"
        return text if healthy else f"{text} {self.state}"

    def log_line(self) -> str:
        fields = {
            "handle": self.handle,
            "stream": self.stream,
            "agency": self.endpoint.agency,
            "endpoint": self.endpoint.short,
            "appended": self.appended,
            "delivered": self.delivered,
            "acked": self.acknowledged,
            "lost": self.lost,
            "backlog": self.backlog,
            "state": self.state,
            "error": self.last_error,
        }
        return "delivery " + " ".join(
            f"{k}={_value(v)}" for k, v in fields.items() if v is not None
        )


def _value(value: object) -> str:
    text = str(value)
    return f'"{text}"' if " " in text else text


def status_line(rows: list[StatusRow], width: int) -> str:
    """One line for a terminal: every row's short form, cut to ``width``."""
    text = " | ".join(row.short() for row in rows) or "no delivery"
    if len(text) > width:
        text = text[: max(0, width - 1)] + "…"
    return text


class StatusReporter:
    """The status line on a terminal, or structured log lines elsewhere."""

    def __init__(
        self,
        rows: Callable[[], list[StatusRow]],
        *,
        interval: float,
        log_interval: float,
        out: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self._rows = rows
        self._interval = interval
        self._log_interval = log_interval
        self._out = out or sys.stderr
        self.tty = self._out.isatty() if tty is None else tty
        self._shown = False

    async def run(self) -> None:
        try:
            if self.tty:
                await self._line_loop()
            else:
                await self._log_loop()
        finally:
            self.clear()

    async def _line_loop(self) -> None:
        while True:
            await trio.sleep(self._interval)
            width = shutil.get_terminal_size((100, 24)).columns - 1
            self._out.write("\r\x1b[K" + status_line(self._rows(), width))
            self._out.flush()
            self._shown = True

    async def _log_loop(self) -> None:
        while True:
            await trio.sleep(self._log_interval)
            for row in self._rows():
                log.info("%s", row.log_line())

    def clear(self) -> None:
        """Wipe the status line (before a log line is written under it)."""
        if self._shown:
            self._out.write("\r\x1b[K")
            self._out.flush()
            self._shown = False


class StatusLineHandler(logging.StreamHandler):
    """A log handler that wipes the status line before each record.

    The next status line redraws it a second later; log lines are never
    overwritten or glued to it.
    """

    def __init__(self, reporter: Callable[[], StatusReporter | None], stream: TextIO) -> None:
        super().__init__(stream)
        self._reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        reporter = self._reporter()
        if reporter is not None:
            reporter.clear()
        super().emit(record)
