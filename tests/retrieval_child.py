"""A server under hostile replay requests, in a process the test caps in memory.

    python tests/retrieval_child.py WORK_DIR

Runs a real :class:`MediationServer` (in this process) with one warrant of
10 stored CC records, and sends over its retrieval listener, one after the
other on one TLS connection: requests for 0..10**9, 0..2**63+5 and
0..2**64-1, then a request whose last number is 2**64 (one past the
SequenceNumber type, as raw DER). Prints one JSON line: per request the
ReplayResult (or how the connection ended), the traced memory peak while
the requests were answered, and whether the server still answers a plain
request afterwards on a new connection.

The test runs this under an address-space limit, so old code that sized
a request by its numbers dies here of MemoryError instead of taking the
machine's memory.
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delivery_agency import client_context
from delivery_support import Site, cc_pdu, make_cert, tls_endpoint

from mediation import pdu as P

STORED = 10
WIDE = (10**9, 2**63 + 5, 2**64 - 1)


def one_past_the_type(stream: P.StreamId) -> bytes:
    """A ReplayRequest for 0..2**64: its last INTEGER rewritten one above the bound."""
    good = P.encode(P.ReplayRequest(99, stream, (P.SequenceRange(0, 2**64 - 1),)))
    return good.replace(bytes.fromhex("810900" + "ff" * 8), bytes.fromhex("810901" + "00" * 8))


async def ask(address, cert, ca, requests: list[bytes]) -> list[object]:
    """Send each request on one connection and wait for its ReplayResult."""
    tcp = await trio.open_tcp_stream(*address)
    stream = trio.SSLStream(tcp, client_context(cert, ca), server_hostname=address[0])
    answers: list[object] = []
    buffer = b""
    try:
        await stream.do_handshake()
        for request in requests:
            await stream.send_all(request)
            with trio.fail_after(20):
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        answers.append("closed by the server")
                        return answers
                    buffer += data
                    done = [m for _o, m in P.decode_all(buffer) if isinstance(m, P.ReplayResult)]
                    if done:
                        buffer = b""
                        answers.append(done[0])
                        break
    except trio.BrokenResourceError:
        answers.append("closed by the server")
    finally:
        await trio.aclose_forcefully(stream)
    return answers


def result_json(answer: object) -> object:
    if not isinstance(answer, P.ReplayResult):
        return answer
    return {
        "delivered": answer.delivered,
        "unavailable": [[r.first, r.last] for r in answer.unavailable],
        "notYet": [[r.first, r.last] for r in answer.not_yet or ()],
        "reason": answer.reason,
    }


async def main(work: Path) -> None:
    site = Site(work)
    cert = make_cert(work / "certs", "agency receiver")
    handle = site.agency("AGENCY-A", tls_endpoint(9, ca=cert))
    warrant = site.warrant(handle)
    stream = P.StreamId(warrant.handle, P.StreamKind.CMCC)
    async with site.server() as server:
        for n in range(STORED):
            await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n))
        address = site.retrieval_address(server)
        with trio.fail_after(10):
            while server.streams_of_agency(handle)[stream].durable_seq < STORED - 1:
                await trio.sleep(0.01)
        requests = [
            P.encode(P.ReplayRequest(i + 1, stream, (P.SequenceRange(0, last),)))
            for i, last in enumerate(WIDE)
        ]
        tracemalloc.start()
        wide = await ask(address, cert, site.server_ca, requests)
        past = await ask(address, cert, site.server_ca, [one_past_the_type(stream)])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        after = await ask(
            address,
            cert,
            site.server_ca,
            [P.encode(P.ReplayRequest(7, stream, (P.SequenceRange(2, 3),)))],
        )
        out = {
            "wide": [result_json(a) for a in wide],
            "past_the_type": [result_json(a) for a in past],
            "after": [result_json(a) for a in after],
            "peak": peak,
            "failed": server.retrieval.failed,
        }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
