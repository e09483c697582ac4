"""Retrieval under hostile numbers and heavy use: bounded, survivable, "not yet" told from "never".

- a real server answers requests for 0..10**9, 0..2**63+5 and 0..2**64-1
  with what it has and "not yet" for the rest, in flat memory, and lives;
- the per-connection budget ends in "not yet, ask on a new connection";
- the real receiver (``mediate receive --fetch``) reports "not yet" past
  the stream's end and fetches it once stored; out-of-range ``--fetch``
  is one line, exit 2;
- the receiver's Retriever asks again for "not yet" and fills the gap,
  while "never" stays never.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from delivery_agency import client_context
from delivery_support import HOST, Site, cc_pdu, make_cert, tls_endpoint
from test_lea_serverside import UdpServer
from test_lea_serverside import serve_retrieval as serve_from_machines
from test_lea_support import (
    CMCC,
    HANDLE,
    Receiver,
    config,
    make_pki,
    raw_sequences,
    record_for,
    retrieval_options,
    start,
    wait_until,
)

from mediation import pdu as P
from mediation.protocol import RetrievalLimits
from mediation.server.config import RetrievalConfig, ServerConfig

TESTS = Path(__file__).resolve().parent
MEMORY_CAP = 3 * 2**30  # address space for the child: plenty for a server, not for 8 GB


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def test_wide_requests_leave_the_server_alive_and_its_memory_flat(tmp_path: Path) -> None:
    """Old code: 0..10**9 allocated 8 GB (here: MemoryError), past 2**63 OverflowError;
    either ended the whole server."""
    run = subprocess.run(
        [sys.executable, str(TESTS / "retrieval_child.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_cap_memory,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.splitlines()[-1])
    end = "beyond the stream's end (stored up to 9)"
    assert out["wide"] == [
        {"delivered": 10, "unavailable": [], "notYet": [[10, last]], "reason": end}
        for last in (10**9, 2**63 + 5, 2**64 - 1)
    ]
    # One past the SequenceNumber type cannot be decoded: that connection is
    # refused (closed, logged); the server answers the next one as before.
    assert out["past_the_type"] == ["closed by the server"]
    assert out["after"] == [{"delivered": 2, "unavailable": [], "notYet": [], "reason": None}]
    assert out["peak"] < 8 * 2**20 and out["failed"] == 0


async def _ask(address, cert, ca, stream: P.StreamId, ranges) -> list[object]:
    """On one connection, each request in turn: its ReplayResult, or "closed"."""
    tcp = await trio.open_tcp_stream(*address)
    tls = trio.SSLStream(tcp, client_context(cert, ca), server_hostname=address[0])
    answers: list[object] = []
    try:
        await tls.do_handshake()
        for n, (first, last) in enumerate(ranges, 1):
            request = P.ReplayRequest(n, stream, (P.SequenceRange(first, last),))
            await tls.send_all(P.encode(request))
            buffer = b""
            with trio.fail_after(10):
                while not any(isinstance(m, P.ReplayResult) for _o, m in P.decode_all(buffer)):
                    data = await tls.receive_some(65536)
                    if not data:
                        return [*answers, "closed"]
                    buffer += data
            answers += [m for _o, m in P.decode_all(buffer) if isinstance(m, P.ReplayResult)]
    finally:
        await trio.aclose_forcefully(tls)
    return answers


async def test_the_connection_budget_is_enforced_and_answered_not_yet(tmp_path: Path) -> None:
    limits = RetrievalConfig(listen=f"{HOST}:0", request_records=3, connection_records=5)
    site = Site(tmp_path)
    cert = make_cert(tmp_path / "certs", "agency receiver")
    handle = site.agency("AGENCY-A", tls_endpoint(9, ca=cert))
    warrant = site.warrant(handle)
    stream = P.StreamId(warrant.handle, P.StreamKind.CMCC)
    async with site.server(ServerConfig(retrieval=limits)) as server:
        for n in range(10):
            await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n))
        with trio.fail_after(10):
            while server.streams_of_agency(handle)[stream].durable_seq < 9:
                await trio.sleep(0.01)
        address = site.retrieval_address(server)
        first = await _ask(address, cert, site.server_ca, stream, [(0, 9), (3, 9), (5, 9)])
        fresh = await _ask(address, cert, site.server_ca, stream, [(5, 9)])
        # Counted as each connection ends (the server notices the close).
        with trio.fail_after(10):
            while server.retrieval.limited < 4:
                await trio.sleep(0.01)
        status = server._status()["retrieval"]
        limited, failed = server.retrieval.limited, server.retrieval.failed

    got = [(r.delivered, r.not_yet, r.limited) for r in first]
    assert got == [
        (3, (P.SequenceRange(3, 9),), P.ReplayLimit.REQUEST),
        (2, (P.SequenceRange(5, 9),), P.ReplayLimit.CONNECTION),
        (0, (P.SequenceRange(5, 9),), P.ReplayLimit.CONNECTION),  # spent: nothing read
    ]
    assert all(r.unavailable == () for r in first)  # "not yet", never "unavailable"
    assert "connection limit of 5 records" in first[2].reason
    # A new connection has a new budget.
    assert [(r.delivered, r.not_yet) for r in fresh] == [(3, (P.SequenceRange(8, 9),))]
    assert limited == 4 and failed == 0
    assert (status["limited"], status["failed"]) == (4, 0)  # as `mediate status` shows


# The real receiver -------------------------------------------------------------------

MEDIATE = [sys.executable, "-m", "mediation"]


@pytest.mark.parametrize(
    "span", ["0-99999999999999999999", "0-9300000000000000000", "1" * 5000, "5-1099511627785"]
)
def test_fetch_ranges_out_of_bounds_are_one_line_exit_2(span: str, tmp_path: Path) -> None:
    """Old code: 0-9300000000000000000 (past 2**63) died with an OverflowError traceback."""
    run = subprocess.run(
        [
            *MEDIATE,
            *("receive", "--fetch", f"w-3f9a1c/cmii:{span}", "--retrieve-from", "127.0.0.1:9"),
            *("--out", str(tmp_path / "out")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(TESTS.parent)},
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("mediate: error: --fetch: ")
    assert "18446744073709551615" in run.stderr or "1099511627776" in run.stderr


async def test_fetch_past_the_end_is_not_yet_then_fetched_once_stored(tmp_path: Path) -> None:
    """Old code wrote 10..20 into gaps.json as unavailable ("not stored") for good."""
    site = Site(tmp_path)
    certs = tmp_path / "receiver"
    subprocess.run(
        [*MEDIATE, "receive", "make-cert", "--out", str(certs)], check=True, capture_output=True
    )
    cert_pem = (certs / "agency-cert.pem").read_text()
    handle = site.agency("AGENCY-A", tls_endpoint(9, ca=_pem(cert_pem)))
    warrant = site.warrant(handle)
    out = tmp_path / "intercepts"
    async with site.server() as server:
        for n in range(10):
            await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n))
        host, port = site.retrieval_address(server)
        argv = [*MEDIATE, "receive", "--fetch", f"{warrant.handle}/cmcc:5-20"]
        argv += ["--retrieve-from", f"{host}:{port}", "--cert", str(certs / "agency-cert.pem")]
        argv += ["--key", str(certs / "agency-key.pem"), "--server-ca", str(site.server_ca)]
        argv += ["--out", str(out), "-q"]
        # Past 2**63 (inside the type): old code connected, then died of OverflowError.
        huge = [a.replace(":5-20", ":0-9300000000000000000") for a in argv]
        refused = await trio.run_process(
            huge, capture_stdout=True, capture_stderr=True, check=False
        )
        first = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        report = json.loads((out / warrant.handle / "gaps.json").read_text())["streams"]["cmCC"]
        for n in range(10, 21):
            await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n))
        second = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.decode().count("\n") == 1
    assert refused.stderr.decode().startswith("mediate: error: --fetch: ")
    assert first.returncode == 0, first.stderr
    assert "fetch complete; 11 not yet (ask again later)" in first.stdout.decode()
    assert report["unavailable"] == []
    assert report["notYet"] == [
        {"first": 10, "last": 20, "reason": "beyond the stream's end (stored up to 9)"}
    ]
    assert second.returncode == 0, second.stderr
    again = json.loads((out / warrant.handle / "gaps.json").read_text())["streams"]["cmCC"]
    assert again["notYet"] == [] and again["unavailable"] == []
    assert sorted(raw_sequences(out / warrant.handle / "cmcc.raw")) == list(range(5, 21))


def _pem(text: str):
    """An object with the ``cert_pem`` that ``tls_endpoint(ca=...)`` registers."""

    class Pem:
        cert_pem = text

    return Pem()


async def test_the_receiver_asks_again_for_not_yet_and_fills_it_while_never_stays(
    tmp_path: Path,
) -> None:
    """UDP loses 10..12 and 4; the log has 4 nowhere (never) and 10..12 not yet, later yes."""
    out, pki = tmp_path / "intercepts", make_pki(tmp_path / "pki")
    log = {CMCC: {n: record_for(CMCC, n) for n in range(30) if n not in (4, 10, 11, 12)}}
    async with trio.open_nursery() as nursery:
        port, connections = await serve_from_machines(
            nursery, pki, log, reason="past retention", never={4}
        )
        options = retrieval_options(pki, port)
        running = await start(nursery, Receiver(config(out, udp=("127.0.0.1", 0), **options)))
        server = UdpServer(running.bound.udp)
        nursery.start_soon(server.read_reports)
        await server.send(CMCC, 30, drop={4, 10, 11, 12})
        tracker = running.receiver.state.trackers
        await wait_until(lambda: tracker[CMCC].not_yet() == [(10, 12)], "the not-yet answer")
        assert tracker[CMCC].unavailable == [((4, 4), "past retention")]
        for n in (10, 11, 12):  # stored at last (the disk came back)
            log[CMCC][n] = record_for(CMCC, n)
        await wait_until(lambda: tracker[CMCC].missing() == [(4, 4)], "10..12 asked again")
        await running.stop()
        nursery.cancel_scope.cancel()
    cc = json.loads((out / HANDLE / "gaps.json").read_text())["streams"]["cmCC"]
    assert cc["missing"] == [[4, 4]] and cc["notYet"] == []
    assert cc["unavailable"] == [{"first": 4, "last": 4, "reason": "past retention"}]
    assert sorted(raw_sequences(out / HANDLE / "cmcc.raw")) == [n for n in range(30) if n != 4]
    asked = [e.ranges for c in connections for e in c.events if hasattr(e, "ranges")]
    assert sum((4, 4) in ranges for ranges in asked) == 1  # never: asked once only


async def test_the_receiver_reconnects_when_the_connection_budget_is_spent(tmp_path: Path) -> None:
    """Each connection gets 5 records, then "not yet, ask on a new connection"."""
    out, pki = tmp_path / "intercepts", make_pki(tmp_path / "pki")
    log = {CMCC: {n: record_for(CMCC, n) for n in range(30)}}
    limits = RetrievalLimits(connection_records=5)
    async with trio.open_nursery() as nursery:
        port, connections = await serve_from_machines(nursery, pki, log, limits=limits)
        options = retrieval_options(pki, port)
        running = await start(nursery, Receiver(config(out, udp=("127.0.0.1", 0), **options)))
        server = UdpServer(running.bound.udp)
        nursery.start_soon(server.read_reports)
        await server.send(CMCC, 30, drop=set(range(5, 25)))
        tracker = running.receiver.state.trackers
        await wait_until(lambda: tracker[CMCC].missing() == [], "20 fetched, 5 at a time")
        await running.stop()
        nursery.cancel_scope.cancel()
    assert len(connections) >= 4  # one budget of 5 per connection
    cc = json.loads((out / HANDLE / "gaps.json").read_text())["streams"]["cmCC"]
    assert (cc["retrieved"], cc["unavailable"], cc["notYet"]) == (20, [], [])


@pytest.mark.parametrize(
    "key", ["request_records", "request_bytes", "connection_records", "connection_bytes"]
)
def test_retrieval_limits_in_the_config_are_read_and_a_bad_one_named(key: str) -> None:
    from mediation.errors import UsageError
    from mediation.server.config_file import parse_config

    assert getattr(parse_config({"retrieval": {key: 7}}).retrieval, key) == 7
    with pytest.raises(UsageError, match=f"config \\[retrieval\\] {key}: must be a whole number"):
        parse_config({"retrieval": {key: 0}})
