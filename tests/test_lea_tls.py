"""`mediate receive` over TLS: mutual TLS, acks, resume after disconnects, refusals.

The test plays the mediation server: a StreamSender connecting out to the
receiver's listener with the identity certificate a test CA issued, as
the server will.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from test_lea_serverside import ServerConnection, connect_out
from test_lea_support import (
    CMCC,
    CMII,
    HANDLE,
    Pki,
    Receiver,
    cc_record,
    cmii_record,
    issue,
    make_ca,
    make_pki,
    raw_envelopes,
    start,
    tls_config,
    wait_until,
)

from mediation.lea.tls import fingerprint_pem_file
from mediation.protocol import StreamSender
from mediation.refusals import BUSY, MAX_CONNECTIONS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def envelopes(sender: StreamSender, stream, first: int, last: int) -> bytes:
    make = cc_record if stream == CMCC else cmii_record
    return b"".join(sender.send(stream, make(n)) for n in range(first, last + 1))


async def test_tls_resumes_after_a_disconnect_and_stores_every_pdu_once_in_order(
    tmp_path: Path, pki: Pki
) -> None:
    out = tmp_path / "intercepts"
    sender = StreamSender({CMCC: 0, CMII: 0})
    async with trio.open_nursery() as nursery:
        running = await start(nursery, Receiver(tls_config(out, pki)))
        port = running.bound.tls[1]
        tracker = running.receiver.state.trackers

        # Connection 1: 0..19 acknowledged; 20..29 stored, but the link
        # fails before their acknowledgement reaches the server.
        stream = await connect_out(port, pki.server_client_context())
        sender.resume(trio.current_time())
        first = ServerConnection(sender, stream)
        async with trio.open_nursery() as inner:
            inner.start_soon(lambda: first.run(close=False))
            await first.write(envelopes(sender, CMCC, 0, 19) + envelopes(sender, CMII, 0, 4))
            await first.wait_acked(CMCC, 20)
            await first.wait_acked(CMII, 5)
            unacked = envelopes(sender, CMCC, 20, 29)
            inner.cancel_scope.cancel()  # stop reading: those acks are never seen
        await stream.send_all(unacked)
        await wait_until(lambda: tracker[CMCC].highest == 29, "20..29 stored")
        await trio.aclose_forcefully(stream)

        # Connection 2: resume from the first unacknowledged (20), marked redelivered.
        stream = await connect_out(port, pki.server_client_context())
        sender.resume(trio.current_time())
        assert sender.next_sequence(CMCC) == 20
        second = ServerConnection(sender, stream)
        nursery.start_soon(second.run)
        await second.write(envelopes(sender, CMCC, 20, 59) + envelopes(sender, CMII, 5, 9))
        await second.wait_acked(CMCC, 60)
        await second.wait_acked(CMII, 10)
        await running.stop()
        nursery.cancel_scope.cancel()

    cc = raw_envelopes(out / HANDLE / "cmcc.raw")
    assert [e.sequence_number for e in cc] == list(range(60))  # all, once, in order
    assert not any(e.redelivered for e in cc)  # the redelivered copies were duplicates
    report = json.loads((out / HANDLE / "gaps.json").read_text())["streams"]
    assert report["cmCC"]["duplicates"] == 10 and report["cmCC"]["missingCount"] == 0
    assert report["cmII"]["duplicates"] == 0 and report["cmII"]["held"] == 10
    lines = [json.loads(x) for x in (out / HANDLE / "cmii.jsonl").read_text().splitlines()]
    assert [line["sequenceNumber"] for line in lines] == list(range(10))
    assert all(line["stream"] == {"warrantHandle": HANDLE, "kind": "cmII"} for line in lines)
    assert all(not line["redelivered"] and not line["retrieved"] for line in lines)
    assert {line["content"]["type"] for line in lines} >= {"CompletenessNotice"}


async def attempt(port: int, context) -> None:
    """Connect as the server would and try to deliver; the receiver should hang up."""
    try:
        stream = await connect_out(port, context)
        sender = StreamSender({CMCC: 0})
        sender.resume(trio.current_time())
        await stream.send_all(envelopes(sender, CMCC, 0, 2))
        with trio.fail_after(5):
            while await stream.receive_some(65536):
                pass
    except trio.BrokenResourceError:
        pass  # refused during the handshake (TLS 1.2) or at the first read (TLS 1.3)


async def test_a_wrong_or_missing_server_certificate_is_refused_and_nothing_written(
    tmp_path: Path, pki: Pki
) -> None:
    out = tmp_path / "intercepts"
    other_ca, other_key = make_ca(tmp_path, "other-ca")
    issue(tmp_path, "impostor", other_ca, other_key)
    impostor = (tmp_path / "impostor.pem", tmp_path / "impostor.key")
    async with trio.open_nursery() as nursery:
        running = await start(nursery, Receiver(tls_config(out, pki)))
        port, counters = running.bound.tls[1], running.receiver.state.counters
        await attempt(port, pki.server_client_context(identity=impostor))
        await wait_until(lambda: counters.refused_connections == 1, "the impostor refused")
        await attempt(port, pki.anonymous_client_context())
        await wait_until(lambda: counters.refused_connections == 2, "no certificate refused")
        await running.stop()
        nursery.cancel_scope.cancel()
    assert not out.exists() or list(out.iterdir()) == []  # nothing written for anyone


async def test_idle_connections_past_the_limit_are_refused_busy_and_counted(
    tmp_path: Path, pki: Pki
) -> None:
    """Each connection waiting for its handshake holds OpenSSL's buffers: at most 64."""
    extra = 5
    async with trio.open_nursery() as nursery:
        running = await start(nursery, Receiver(tls_config(tmp_path / "intercepts", pki)))
        port, counters = running.bound.tls[1], running.receiver.state.counters
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
        idle += [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(extra)]
        await wait_until(lambda: counters.refused_reasons.get(BUSY) == extra, "busy refusals")
        assert counters.refused_connections == extra
        for stream in idle:
            await stream.aclose()
        # The slots come back: the server is served again.
        sender = StreamSender({CMCC: 0})
        sender.resume(trio.current_time())
        stream = await connect_out(port, pki.server_client_context())
        await stream.send_all(envelopes(sender, CMCC, 0, 2))
        state = running.receiver.state
        tracker = state.trackers.get  # the stream's tracker exists from its first envelope
        await wait_until(lambda: tracker(CMCC) and tracker(CMCC).received_count == 3, "delivery")
        await stream.aclose()
        await running.stop()
        nursery.cancel_scope.cancel()


async def test_a_pinned_fingerprint_is_enforced_on_top_of_the_ca(tmp_path: Path, pki: Pki) -> None:
    out = tmp_path / "intercepts"
    right = fingerprint_pem_file(pki.server_cert, "--server-fingerprint")
    wrong = "0" * 64
    async with trio.open_nursery() as nursery:
        pinned = await start(
            nursery,
            Receiver(tls_config(out / "wrong", pki, trust=pki.trust(server_fingerprint=wrong))),
        )
        await attempt(pinned.bound.tls[1], pki.server_client_context())
        counters = pinned.receiver.state.counters
        await wait_until(lambda: counters.refused_connections == 1, "the pin to refuse")
        await pinned.stop()

        good = await start(
            nursery,
            Receiver(tls_config(out / "right", pki, trust=pki.trust(server_fingerprint=right))),
        )
        sender = StreamSender({CMCC: 0})
        stream = await connect_out(good.bound.tls[1], pki.server_client_context())
        sender.resume(trio.current_time())
        connection = ServerConnection(sender, stream)
        nursery.start_soon(connection.run)
        await connection.write(envelopes(sender, CMCC, 0, 2))
        await connection.wait_acked(CMCC, 3)
        await good.stop()
        nursery.cancel_scope.cancel()
    assert not (out / "wrong" / HANDLE).exists()
    assert [e.sequence_number for e in raw_envelopes(out / "right" / HANDLE / "cmcc.raw")] == [
        0,
        1,
        2,
    ]


async def test_reading_goes_on_during_an_fsync_and_no_ack_goes_out_before_it(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer task fsyncs then acks; the reader never waits for the disk."""
    import threading

    from mediation.lea import state as state_module

    release = threading.Event()
    real = state_module._fsync_all

    def slow_fsync(fds: list[int]) -> None:
        release.wait(20)  # the disk is slow until the test says otherwise
        real(fds)

    monkeypatch.setattr(state_module, "_fsync_all", slow_fsync)
    out = tmp_path / "intercepts"
    sender = StreamSender({CMCC: 0})
    try:
        async with trio.open_nursery() as nursery:
            running = await start(nursery, Receiver(tls_config(out, pki)))
            tracker = running.receiver.state.trackers
            stream = await connect_out(running.bound.tls[1], pki.server_client_context())
            sender.resume(trio.current_time())
            connection = ServerConnection(sender, stream)
            nursery.start_soon(connection.run)
            await connection.write(envelopes(sender, CMCC, 0, 69))  # an ack is due at 64
            await wait_until(lambda: CMCC in tracker and tracker[CMCC].highest == 69, "0..69")
            await connection.write(envelopes(sender, CMCC, 70, 99))  # while the fsync hangs
            await wait_until(lambda: tracker[CMCC].highest == 99, "70..99 read meanwhile")
            assert connection.acked == {}  # nothing acknowledged before it is on disk
            release.set()
            await connection.wait_acked(CMCC, 100)
            await running.stop()
            nursery.cancel_scope.cancel()
    finally:
        release.set()
    assert [e.sequence_number for e in raw_envelopes(out / HANDLE / "cmcc.raw")] == list(range(100))
