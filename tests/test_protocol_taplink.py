"""The tap link's machines, byte by byte (mediation/protocol/taplink.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from mediation.pdu import taplink as T
from mediation.protocol.errors import ProtocolError
from mediation.protocol.taplink import State, TapLinkServer, TapLinkTap, UpstreamLoss

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
HELLO = T.TapHello("edge-1", 3, 2)
PDUS = T.encode_pdus([("cmII", NOW, b"\x30\x00")])


def connected(window: int = 8) -> tuple[TapLinkTap, TapLinkServer]:
    tap, server = TapLinkTap(HELLO, 0.0, window=window), TapLinkServer(0.0, keepalive=5)
    hello = tap.data_to_send()
    assert hello == T.encode(HELLO)
    for octet in hello:  # any split, even one octet at a time
        server.receive_data(bytes([octet]), 0.0)
    assert server.hello == HELLO
    server.accept(2, 0.0)
    server.send_warrants(T.WarrantSet(1, ()), 0.0)
    answer = server.data_to_send()
    assert answer == T.encode(T.ServerHello(2, 5)) + T.encode(T.WarrantSet(1, ()))
    assert tap.receive_data(answer, 0.0) == [T.ServerHello(2, 5), T.WarrantSet(1, ())]
    assert tap.state is State.READY and tap.last_stored == 2 and tap.interval == 5
    return tap, server


def test_batches_flow_within_the_window_and_acks_free_it() -> None:
    tap, server = connected(window=2)
    tap.send_batch(3, PDUS, 1.0)
    tap.send_batch(4, PDUS, 1.0)
    assert not tap.can_send()
    with pytest.raises(ValueError, match="window"):
        tap.send_batch(5, PDUS, 1.0)
    sent = tap.data_to_send()
    assert sent == T.batch_message(3, PDUS) + T.batch_message(4, PDUS)
    batches = server.receive_data(sent, 1.0)
    assert [b.batch_id for b in batches] == [3, 4]  # type: ignore[union-attr]
    server.send_ack(T.BatchAck(3, 1), 1.5)
    assert tap.receive_data(server.data_to_send(), 1.5) == [T.BatchAck(3, 1)]
    assert tap.can_send() and list(tap.in_flight) == [4]


def test_ids_must_increase_on_both_sides() -> None:
    tap, server = connected()
    tap.send_batch(3, PDUS, 1.0)
    with pytest.raises(ValueError, match="increase"):
        tap.send_batch(3, PDUS, 1.0)
    server.receive_data(T.batch_message(7, PDUS), 1.0)
    with pytest.raises(ProtocolError, match="increase"):
        server.receive_data(T.batch_message(7, PDUS), 1.0)


def test_an_ack_of_a_batch_not_the_oldest_in_flight_is_a_protocol_error() -> None:
    tap, _server = connected()
    tap.send_batch(3, PDUS, 1.0)
    tap.send_batch(4, PDUS, 1.0)
    with pytest.raises(ProtocolError, match="not the oldest"):
        tap.receive_data(T.encode(T.BatchAck(4, 1)), 1.0)


@pytest.mark.parametrize(
    "first",
    [T.batch_message(1, PDUS), T.encode(T.Keepalive(1)), T.encode(T.BatchAck(1, 0))],
)
def test_nothing_but_a_hello_comes_first(first: bytes) -> None:
    with pytest.raises(ProtocolError):
        TapLinkServer(0.0).receive_data(first, 0.0)


def test_a_second_hello_and_server_messages_from_a_tap_are_refused() -> None:
    _tap, server = connected()
    with pytest.raises(ProtocolError, match="second TapHello"):
        server.receive_data(T.encode(HELLO), 1.0)
    _tap, server = connected()
    with pytest.raises(ProtocolError, match="from a tap"):
        server.receive_data(T.encode(T.WarrantSet(2, ())), 1.0)


def test_keepalives_when_quiet_answered_at_once_and_silence_is_death() -> None:
    tap, server = connected()
    server.tick(4.9)
    assert server.data_to_send() == b""
    server.tick(5.0)
    ping = server.data_to_send()
    assert ping == T.encode(T.Keepalive(1))
    assert tap.receive_data(ping, 5.0) == []  # answered by the machine, not the owner
    assert tap.data_to_send() == T.encode(T.KeepaliveAnswer(1))
    server.receive_data(T.encode(T.KeepaliveAnswer(1)), 5.1)
    server.tick(35.0)
    with pytest.raises(ProtocolError, match="silent"):
        server.tick(35.2)


def test_close_ends_the_link() -> None:
    tap, server = connected()
    tap.close("done")
    assert server.receive_data(tap.data_to_send(), 1.0) == [T.Close("done")]
    assert server.state is State.CLOSED
    with pytest.raises(ProtocolError, match="after close"):
        server.receive_data(b"\xa5\x03\x80\x01\x01", 1.0)


def test_upstream_loss_counts_gaps_per_session_and_forgives_late_ones() -> None:
    loss = UpstreamLoss()
    assert [loss.observe(b"s1", n) for n in (1, 2, 5, 6)] == [0, 0, 2, 0]
    assert loss.lost == 2
    assert loss.observe(b"s1", 4) == 0 and loss.lost == 1  # reordered, not lost
    assert loss.observe(b"s2", 3) == 2 and loss.lost == 3  # a restarted tap: a new session
