"""What a person watching ``mediate receive`` sees: a live table, and a summary at exit.

On a terminal the table is redrawn in place once a second (per stream:
PDUs stored, rate, missing, last sequence); log lines are printed above
it. Elsewhere (a pipe, a journal) a one-line summary goes out every 10 s.
Only warrant handles are shown, never case identities or targets.
"""

from __future__ import annotations

import logging
import time
from typing import TextIO

import trio

from mediation.lea.receiver import Receiver, RunResult
from mediation.lea.state import ReceiverState

TTY_INTERVAL = 1.0
LINE_INTERVAL = 10.0
_UP_AND_CLEAR = "\x1b[{n}F\x1b[J"  # cursor up n lines to column 1, clear below

COLUMNS = ("STREAM", "PDUS", "RATE/S", "MISSING", "RETRIEVED", "DUPS", "LAST SEQ")


def stream_rows(state: ReceiverState, rates: dict[str, float]) -> list[list[str]]:
    """One row per stream, in handle order, for the table."""
    rows = []
    for stream in sorted(state.trackers, key=str):
        tracker, stats = state.trackers[stream], state.stream_stats(stream)
        rows.append(
            [
                str(stream),
                str(stats.stored),
                f"{rates.get(str(stream), 0.0):.1f}",
                str(tracker.missing_count),
                str(stats.retrieved),
                str(stats.duplicates),
                "-" if tracker.highest is None else str(tracker.highest),
            ]
        )
    return rows


def table(headers: tuple[str, ...] | list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned first column, the rest right-aligned; two spaces between."""
    widths = [max(len(str(r[i])) for r in [list(headers), *rows]) for i in range(len(headers))]
    out = []
    for row in [list(headers), *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    return out


class LiveView:
    """Redraws the table on a terminal, or writes summary lines to a pipe."""

    def __init__(self, out: TextIO, *, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._drawn = 0  # lines of the table currently on screen
        self._last: dict[str, tuple[float, int]] = {}
        self._rates: dict[str, float] = {}
        self._receiver: Receiver | None = None

    async def run(self, receiver: Receiver) -> None:
        """The view task (give it to :meth:`Receiver.run` as ``extra``)."""
        self._receiver = receiver
        interval = TTY_INTERVAL if self.tty else LINE_INTERVAL
        try:
            while True:
                await trio.sleep(interval)
                self._update_rates(receiver.state)
                if self.tty:
                    self._draw(self._lines(receiver.state))
                else:
                    self._print(self._one_line(receiver.state))
        finally:
            self._erase()
            self._receiver = None

    def _update_rates(self, state: ReceiverState) -> None:
        now = time.monotonic()
        for stream, stats in state.stats.items():
            key = str(stream)
            then, count = self._last.get(key, (now, stats.stored))
            if now > then:
                self._rates[key] = (stats.stored - count) / (now - then)
            self._last[key] = (now, stats.stored)

    def _lines(self, state: ReceiverState) -> list[str]:
        counters = state.counters
        lines = table(COLUMNS, stream_rows(state, self._rates)) if state.trackers else []
        status = f"up {_elapsed(self._receiver)}"
        retriever = self._receiver.retriever if self._receiver else None
        if retriever is not None:
            status += f"  retrieval: {retriever.open_requests} open requests"
        lines.append(
            f"{status}  refused connections {counters.refused_connections}  bad datagrams "
            f"{counters.bad_datagrams}  unauthenticated {counters.unauthenticated.total()}  "
            f"protocol errors {counters.protocol_errors}  socket drops {counters.socket_drops}"
        )
        return lines

    def _one_line(self, state: ReceiverState) -> str:
        parts = [
            f"{stream}: {state.stream_stats(stream).stored} PDUs "
            f"({self._rates.get(str(stream), 0.0):.0f}/s), {tracker.missing_count} missing, "
            f"last {tracker.highest}"
            for stream, tracker in sorted(state.trackers.items(), key=lambda i: str(i[0]))
        ]
        return "; ".join(parts) or "nothing received yet"

    def _draw(self, lines: list[str]) -> None:
        self._erase()
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)

    def _erase(self) -> None:
        if self.tty and self._drawn:
            self.out.write(_UP_AND_CLEAR.format(n=self._drawn))
            self._drawn = 0

    def _print(self, line: str) -> None:
        self.out.write(f"mediate receive: {line}\n")
        self.out.flush()

    def log_line(self, line: str) -> None:
        """Print a log line above the table (which is redrawn at once)."""
        self._erase()
        self.out.write(line + "\n")
        if self.tty and self._receiver is not None:
            self._draw(self._lines(self._receiver.state))
        self.out.flush()


def _elapsed(receiver: Receiver | None) -> str:
    if receiver is None or receiver.started_at is None:
        return "-"
    seconds = int(trio.current_time() - receiver.started_at)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ViewLogHandler(logging.Handler):
    """Sends log records through the view, so they do not tear the table."""

    def __init__(self, view: LiveView) -> None:
        super().__init__()
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.view.log_line(self.format(record))
        except Exception:  # a log line must never stop the receiver
            self.handleError(record)


def summary(state: ReceiverState, result: RunResult) -> list[str]:
    """The summary printed at exit: per stream, then every file with its SHA-256."""
    lines = [f"stopped: {result.reason}"]
    headers = (
        "STREAM",
        "HELD",
        "RECEIVED",
        "RETRIEVED",
        "DUPS",
        "MISSING",
        "UNAVAILABLE",
        "NOT YET",
    )
    rows = []
    for stream in sorted(state.trackers, key=str):
        tracker, stats = state.trackers[stream], state.stream_stats(stream)
        unavailable = sum(last - first + 1 for (first, last), _r in tracker.unavailable)
        not_yet = sum(last - first + 1 for first, last in tracker.not_yet())
        rows.append(
            [
                str(stream),
                str(tracker.received_count),
                str(stats.received),
                str(stats.retrieved),
                str(stats.duplicates),
                str(tracker.missing_count),
                str(unavailable),
                str(not_yet),
            ]
        )
    lines += table(headers, rows) if rows else ["nothing received"]
    counters = state.counters
    if counters.refused_connections or counters.bad_datagrams or counters.protocol_errors:
        lines.append(
            f"refused connections {counters.refused_connections}, bad datagrams "
            f"{counters.bad_datagrams}, protocol errors {counters.protocol_errors}"
        )
    if counters.udp_buffer is not None:
        lines.append(
            f"udp: receive buffer {counters.udp_buffer} bytes; datagrams dropped at the socket "
            f"(buffer full): {counters.socket_drops}"
        )
    for reason, count in sorted(counters.refused_reasons.items()):
        lines.append(f"  refused: {reason}: {count}")
    if counters.unauthenticated:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(counters.unauthenticated.items()))
        lines.append(f"unauthenticated datagrams dropped: {reasons}")
    for handle in sorted(result.digests):
        for name, digest in sorted(result.digests[handle].items()):
            lines.append(f"{digest}  {state.out_dir / handle / name}")
    return lines
