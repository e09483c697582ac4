"""The views in an export bundle, rebuilt from its records and compared.

``cmcc.pcap``, ``cmii.jsonl``, ``notices.jsonl`` and ``checkpoints.txt``
are derived from the raw envelopes and checkpoint messages, which the
signed checkpoints prove. So they are checked by making them again, with
the receiver's own writer (``lea.outputs.CaseOutputs``, as the exporter
made them), and comparing: a changed packet or line is named.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mediation import pdu
from mediation.evidence import export as X
from mediation.evidence.pcap import PcapError, PcapReader
from mediation.lea import rawfile
from mediation.lea.files import sha256_of
from mediation.lea.outputs import CHECKPOINT_FILE, JSONL_FILE, PCAP_FILE, CaseOutputs, raw_name
from mediation.log import format as F
from mediation.pdu import fast

DERIVED = (PCAP_FILE, JSONL_FILE, X.NOTICES_FILE, X.CHECKPOINTS_TXT)


def compare_derived(case: Path, handle: str) -> list[tuple[str, str]]:
    """Rebuild the views of ``case`` (a bundle's ``HANDLE/``) in a scratch directory; compare.

    Returns:
        ``(file name, problem)`` for each view that is missing or differs.

    Raises:
        rawfile.RawFileError, pdu.PDUError, ValueError: the raw files cannot
            be read (their own check reports that).
    """
    out = []
    with tempfile.TemporaryDirectory() as scratch:
        rebuilt = _rebuild(case, Path(scratch), handle)
        for name in DERIVED:
            ours, theirs = rebuilt / name, case / name
            if not ours.exists() and not theirs.exists():
                continue
            if not theirs.exists():
                out.append((name, "missing"))
            elif not ours.exists() or sha256_of(ours) != sha256_of(theirs):
                out.append((name, f"{_difference(ours, theirs)} differs from the signed records"))
    return out


def _rebuild(case: Path, scratch: Path, handle: str) -> Path:
    outputs = CaseOutputs(scratch, handle)
    lines = []
    try:
        for kind in pdu.StreamKind:
            path = case / raw_name(kind)
            if not path.is_file():
                continue
            messages, _torn = rawfile.scan(path)
            for data in rawfile.read_in_order(path, messages):
                envelope = fast.decode_envelope(data)
                outputs.store(envelope, data, retrieved=False, at=envelope.mediation_time)
        cps = case / CHECKPOINT_FILE
        if cps.is_file():
            messages, _torn = rawfile.scan(cps)
            for data in rawfile.read_in_order(cps, messages):
                cp = pdu.decode(data)
                if isinstance(cp, pdu.ChainCheckpoint):
                    lines.append(X.checkpoint_line(_checkpoint(cp)))
    finally:
        outputs.close()
    rebuilt = scratch / handle
    (rebuilt / X.CHECKPOINTS_TXT).write_text("".join(lines))
    (rebuilt / X.NOTICES_FILE).write_bytes(X.notices_of(rebuilt / JSONL_FILE))
    return rebuilt


def _checkpoint(cp: pdu.ChainCheckpoint) -> F.Checkpoint:
    return F.Checkpoint(
        cp.stream,
        cp.last_sequence,
        F.to_us(cp.checkpoint_time),
        cp.chain_hash,
        cp.key_id,
        cp.signature,
    )


def _difference(ours: Path, theirs: Path) -> str:
    """Where two versions of a derived file first differ: a packet or a line."""
    if not ours.exists():
        return "the file"
    if ours.suffix == ".pcap":
        try:
            with PcapReader.open(ours) as a, PcapReader.open(theirs) as b:
                for x, y in zip(a, b, strict=False):
                    if (x.data, x.time_ns) != (y.data, y.time_ns):
                        return f"packet {x.number}"
        except PcapError as exc:
            return f"the file ({exc})"
        return "the number of packets"
    with ours.open("rb") as mine, theirs.open("rb") as yours:
        for n, (x, y) in enumerate(zip(mine, yours, strict=False), start=1):
            if x != y:
                return f"line {n}"
    return "the number of lines"
