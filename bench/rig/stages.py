"""Capture-to-agency latency by stage (``bench/e2e.py --stages``), without touching the wire.

Per CmII line at an agency: its capture time stamp (the PDU's own), the
server's ``mediationTime`` (the log's receive time: the tap batch read,
checked and its journal line begun) and the agency's ``receivedTime``.
Per tap batch, from the tap's trace (mediation/tap/trace.py,
``MEDIATION_TAP_TRACE``): sealed, spooled, its TLS write returned, its
acknowledgement read. A PDU is put in its batch by its capture time (a
batch holds the PDUs captured from its first to its last time stamp,
batches in capture order). Stages:

    batching    capture -> batch sealed (linger, the replay's step)
    spool       sealed -> spooled (the spool's thread: AES-GCM, write, fdatasync)
    to send     sealed -> TLS write returned (the spool's write unless sent ahead
                of it, the window, the sender's turn)
    to server   sent -> the server's receive time (TCP, the server's read and ingest)
    durable     server -> the tap read its ack (group commit, fdatasync, ack)
    deliver     server -> the agency's arrival, per agency (commit, delivery, receiver)

The slowest 1% (each agency's PDUs at or over its p99) are broken down
too (:func:`slowest`): where the tail's milliseconds are, on average.
"""

from __future__ import annotations

import bisect
import dataclasses
from pathlib import Path

STAGES = ("batching", "spool", "to send", "to server", "durable", "deliver udp", "deliver tls")


@dataclasses.dataclass
class Batch:
    first: float
    last: float
    sealed: float
    spooled: float
    pdus: int = 0
    sent: float | None = None
    acked: float | None = None


def read_trace(path: Path) -> list[Batch]:
    """The tap's batches in batch order, each with its times (epoch seconds)."""
    batches: dict[int, Batch] = {}
    sends: dict[int, float] = {}  # the first send of each (a batch sent ahead: before its B)
    acks: list[tuple[int, float]] = []
    try:
        text = path.read_text(encoding="ascii")
    except OSError:
        return []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "B" and len(fields) == 7:
            first, last, sealed, spooled = (int(f) / 1e6 for f in fields[3:7])
            batches[int(fields[1])] = Batch(first, last, sealed, spooled, int(fields[2]))
        elif fields[0] == "S" and len(fields) == 3:
            sends.setdefault(int(fields[1]), int(fields[2]) / 1e6)
        elif fields[0] == "A" and len(fields) == 3:
            acks.append((int(fields[1]), int(fields[2]) / 1e6))
    order = sorted(batches)
    for number in order:
        batches[number].sent = sends.get(number)
    acks.sort(key=lambda a: a[1])
    i = 0
    for upto, when in acks:  # each batch: the first ack read that covers it
        while i < len(order) and order[i] <= upto:
            batches[order[i]].acked = when
            i += 1
    return [batches[b] for b in order]


def breakdown(
    batches: list[Batch], stamps: dict[str, list[tuple[float, float | None, float]]], since: float
) -> dict[str, list[float]]:
    """Per stage, its duration (s) for each PDU captured at or after ``since``.

    Args:
        batches: from :func:`read_trace`.
        stamps: per agency (``udp``, ``tls``), (capture, server, arrival) epoch seconds.
        since: leave out PDUs captured before this (the tap's start).
    """
    out: dict[str, list[float]] = {name: [] for name in (*STAGES, "total")}
    firsts = [b.first for b in batches]
    for agency, rows in stamps.items():
        for captured, server, arrived in rows:
            if captured < since:
                continue
            out["total"].append(arrived - captured)
            if server is not None:
                out[f"deliver {agency}"].append(arrived - server)
            if agency != "tls":  # the tap side once per PDU (both agencies get it)
                continue
            i = bisect.bisect_right(firsts, captured + 1e-6) - 1
            if i < 0 or captured > batches[i].last + 1e-6:
                continue
            batch = batches[i]
            out["batching"].append(batch.sealed - captured)
            out["spool"].append(batch.spooled - batch.sealed)
            if batch.sent is not None:
                out["to send"].append(batch.sent - batch.sealed)
                if server is not None:
                    out["to server"].append(server - batch.sent)
            if batch.acked is not None and server is not None:
                out["durable"].append(batch.acked - server)
    return out


TAIL_PARTS = ("batching", "to send", "to server", "deliver", "durable")


def slowest(
    batches: list[Batch], stamps: dict[str, list[tuple[float, float | None, float]]], since: float
) -> dict[str, tuple[int, float, dict[str, float]]]:
    """Per agency, its PDUs at or over its p99: (count, mean total, mean of each part), in s.

    The parts follow one PDU: batching, to send and to server (the tap and
    the link, up to the server's time stamp), then deliver (server ->
    agency) and, beside it, durable (server -> the tap read the ack). A PDU
    whose batch is not in the trace is left out.
    """
    firsts = [b.first for b in batches]
    out: dict[str, tuple[int, float, dict[str, float]]] = {}
    for agency, rows in stamps.items():
        parts: list[tuple[float, ...]] = []
        for captured, server, arrived in rows:
            if captured < since or server is None:
                continue
            i = bisect.bisect_right(firsts, captured + 1e-6) - 1
            if i < 0 or captured > batches[i].last + 1e-6:
                continue
            b = batches[i]
            if b.sent is None or b.acked is None:
                continue
            parts.append((arrived - captured, b.sealed - captured, b.sent - b.sealed,
                          server - b.sent, arrived - server, b.acked - server))  # fmt: skip
        if not parts:
            continue
        parts.sort()
        tail = parts[min(len(parts) - 1, int(len(parts) * 0.99)) :]
        means = [sum(p[k] for p in tail) / len(tail) for k in range(len(TAIL_PARTS) + 1)]
        out[agency] = (len(tail), means[0], dict(zip(TAIL_PARTS, means[1:], strict=True)))
    return out


def report_slowest(tails: dict[str, tuple[int, float, dict[str, float]]]) -> str:
    """One line per agency: the slowest 1%'s mean total and parts, in ms."""
    lines = []
    for agency, (count, total, parts) in tails.items():
        shown = "  ".join(f"{name} {value * 1e3:.1f}" for name, value in parts.items())
        lines.append(f"      slowest 1% ({agency}, n={count}): mean {total * 1e3:.1f} ms = {shown}")
    return "\n".join(lines)


def report(stages: dict[str, list[float]], batches: list[Batch], seconds: float) -> str:
    """Lines: per stage median / p99 / mean ms, and the batch rate and size."""
    lines = []
    for name, values in stages.items():
        if not values:
            continue
        values.sort()
        median = values[len(values) // 2]
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        mean = sum(values) / len(values)
        lines.append(
            f"      {name:<12} med {median * 1e3:6.1f}  p99 {p99 * 1e3:6.1f}  "
            f"mean {mean * 1e3:6.1f} ms  (n={len(values)})"
        )
    if batches and seconds > 0:
        sizes = sorted(b.last - b.first for b in batches)
        pdus = sum(b.pdus for b in batches) / len(batches)
        lines.append(
            f"      tap batches {len(batches) / seconds:,.0f}/s, {pdus:.1f} PDUs each, capture "
            f"span per batch med {sizes[len(sizes) // 2] * 1e3:.1f} ms"
        )
    return "\n".join(lines)
