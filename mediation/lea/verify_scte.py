"""What ``mediate receive verify`` can check of SCTE datagrams (``cmcc.scte``).

SCTE delivery carries no checkpoints, so the server's signed hash chain
cannot prove these records (retrieved envelopes of the same stream, in
``cmcc.raw``, are proven as usual). What the agency *can* check, with its
UDP key file (``--udp-key``), is that every datagram kept is still exactly
what arrived authenticated: each tag verifies under the endpoint's SCTE
key, and each CCC id is the one of this directory's warrant handle. An
edited, added or moved record fails; one removed shows as a gap only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mediation.lea.cc_pcap import scan_scte
from mediation.lea.outputs import SCTE_FILE
from mediation.protocol import scte


@dataclasses.dataclass
class ScteCheck:
    """What the check found in one warrant's ``cmcc.scte``."""

    handle: str
    records: int = 0
    first: int | None = None
    last: int | None = None
    checked: bool = False  # tags checked (a key was given)
    fault: str | None = None

    @property
    def ok(self) -> bool:
        return self.fault is None

    def line(self) -> str:
        """One line for people, like the checkpoint check's (handles only)."""
        held = f"{self.records} SCTE datagrams"
        if self.records:
            held += f" {self.first}..{self.last}"
        if self.fault is not None:
            verdict = f"FAULT: {self.fault}"
        elif not self.checked:
            verdict = "tags not checked (give --udp-key); no checkpoints in SCTE"
        else:
            verdict = "every tag verifies; no checkpoints in SCTE (not chain-verified)"
        return f"{self.handle}/cmcc.scte: {held}, {verdict}"


def check_scte(case_dir: Path, udp_keys: list[bytes]) -> ScteCheck | None:
    """Check ``case_dir/cmcc.scte`` (None if there is none).

    Args:
        case_dir: one warrant's output directory (named by its handle).
        udp_keys: the endpoint UDP keys; empty: only count the records.
    """
    path = case_dir / SCTE_FILE
    if not path.is_file():
        return None
    check = ScteCheck(case_dir.name, checked=bool(udp_keys))
    keys = [scte.scte_key(k) for k in udp_keys]
    wanted = {scte.ccc_id(k, case_dir.name): k for k in keys}
    sequences: set[int] = set()
    good = 0
    for sequence, _when, datagram, end in scan_scte(path):
        fault = _fault(datagram, wanted) if keys else None
        if fault is not None:
            check.fault = f"{SCTE_FILE}: record at octet {good}: {fault}"
            break
        sequences.add(sequence)
        good = end
    else:
        if good < path.stat().st_size:
            check.fault = f"{SCTE_FILE}: torn record at octet {good}"
    if sequences:
        check.records, check.first, check.last = len(sequences), min(sequences), max(sequences)
    return check


def _fault(datagram: bytes, wanted: dict[int, bytes]) -> str | None:
    """Why a kept datagram is not an authentic one of this warrant, or None."""
    key = wanted.get(int.from_bytes(datagram[:4], "big")) if len(datagram) >= 4 else None
    if key is None:
        return "CCC id is not this warrant's under the keys given"
    try:
        scte.open_datagram(key, datagram)
    except scte.ScteRefused as exc:
        return str(exc)
    return None
