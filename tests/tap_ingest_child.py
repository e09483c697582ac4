"""The server side of a tap link that the tap-journal crash test kills: batches in, acks out.

    python tests/tap_ingest_child.py DATA_DIR BATCHES

Runs the real server in-process on DATA_DIR (registry key :data:`KEY`),
asks the tap ingest where the tap's batches stand (as a tap's hello does),
then resends every batch after the last one stored, as a tap resends from
its spool, up to BATCHES: each through ``TapIngest.batch`` (checks,
journal, appends to two warrants' CmCC streams) and, once its records are
durable, reported as ``acked N``. Prints ``start N`` first (the first batch
it sends) and ``done`` at the end. The PDUs of batch ``n`` are a function
of ``n`` (:func:`batch_pdus`), so the test checks every record without
being told what was sent.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from delivery_support import TARGET, fast_config, synchronised

from mediation import pdu as P
from mediation.pdu import taplink as T
from mediation.server.app import MediationServer
from mediation.warrants.keys import RegistryKey

KEY = bytes(range(32))  # obviously fake registry key
TAP = "edge-1"
CASES = ("CASE-0001", "CASE-0002")
PER_CASE = 3  # PDUs per warrant per batch
WHEN = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def cc(case: str, n: int) -> bytes:
    """Content PDU ``n`` of ``case``: a packet to the target carrying ``n``."""
    import ipaddress
    import struct

    body = struct.pack("!HHHH", 40000, 53, 16, 0) + n.to_bytes(8, "big")
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), n & 0xFFFF, 0, 64, 17, 0,
        ipaddress.ip_address(TARGET).packed, ipaddress.ip_address("198.51.100.7").packed,
    )  # fmt: skip
    info = P.CorrelationInfo(P.ContentIdentifier.correlation(b"\x01"), case, "IAP-1")
    cc_header = P.CCDeliveryHeader(info, WHEN, P.PacketDirection.FROM_SUBJECT, n)
    return P.encode(P.CCApdu(payload=header + body, header=cc_header))


def batch_pdus(n: int) -> list[tuple[str, bytes]]:
    """Batch ``n``: the two cases' PDUs interleaved, ``(case, der)``."""
    out = []
    for i in range(PER_CASE):
        for case in CASES:
            out.append((case, cc(case, n * PER_CASE + i)))
    return out


async def main(data: Path, batches: int) -> None:
    server = MediationServer(
        data, RegistryKey(KEY), config=fast_config(), clock_reader=synchronised
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        taps = server.taps
        assert taps is not None
        ingest = taps.ingest
        first = await ingest.hello(TAP, 1 << 40) + 1  # a spool that was never lost
        print(f"start {first}", flush=True)
        for n in range(first, batches + 1):
            pdus = tuple(T.TapPdu("cmCC", WHEN, der) for _case, der in batch_pdus(n))
            result = await ingest.batch(taps.gate(TAP), T.PduBatch(n, pdus))
            assert result.complete and result.ack.accepted in (0, len(pdus)), result.ack
            for receipt in result.receipts:
                await receipt.durable()
            print(f"acked {n}", flush=True)
        print("done", flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
