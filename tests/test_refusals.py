"""The one policy for refusal log lines (mediation/refusals.py), and each user of it.

``Refusals`` is tested alone with an injected clock; then each place that
used its own policy before (the sealed-datagram openers of the server and
the receiver, logging at the 1st, 2nd, 4th, 8th... refusal; the control
listener, one line per 10 s) is shown to log a flood as one line per reason.
"""

from __future__ import annotations

import collections
import logging
import socket
import time
from pathlib import Path

import pytest
import trio

from mediation.lea.state import ReceiverState
from mediation.lea.udp import UdpDelivery
from mediation.protocol.sealed import DatagramSealer, Direction, SealKey
from mediation.refusals import MAX_REASONS, OTHER, Refusals
from mediation.server.config import DeliveryConfig
from mediation.server.control_listener import ControlSocket
from mediation.server.delivery_udp import UdpWorker
from mediation.server.status import EndpointRef
from mediation.warrants.model import Endpoint, Stream

LOGGER = "test.refusals.policy"
KEY = SealKey(1, bytes(range(32)))
WRONG_KEY = SealKey(1, bytes(32))  # the right key id, not the key


class FakeClock:
    """Monotonic seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def messages(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_one_line_per_reason_then_silence_then_one_summary(caplog) -> None:
    clock = FakeClock()
    refusals = Refusals(logging.getLogger(LOGGER), "probe: refused", interval=30.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        refusals.refuse("bad tag", "192.0.2.7")
        assert messages(caplog, LOGGER) == [
            "probe: refused 192.0.2.7: bad tag "
            "(further refusals for this reason: one line per 30 s)"
        ]
        for _ in range(1000):  # within the interval: counted, never logged
            clock.now += 0.02
            refusals.refuse("bad tag", "192.0.2.7")
            refusals.tick()
        assert len(caplog.records) == 1
        refusals.refuse("replayed")  # another reason: its own first line
        assert len(caplog.records) == 2
        clock.now = 530.0  # 30 s after the first "bad tag": its interval is over
        refusals.tick()
        assert len(caplog.records) == 3
        summary = caplog.records[-1].getMessage()
        assert summary == "probe: refused: 1000 more (bad tag) in the last 30 s; 1001 in all"
        refusals.tick()  # nothing more to say: "replayed" had no second refusal
        clock.now += 60.0
        refusals.tick()
        assert len(caplog.records) == 3
    assert refusals.counts == {"bad tag": 1001, "replayed": 1}


def test_the_summary_also_comes_with_the_next_refusal_after_the_interval(caplog) -> None:
    clock = FakeClock()
    refusals = Refusals(logging.getLogger(LOGGER), "probe: refused", interval=30.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            refusals.refuse("bad magic")
        clock.now += 45.0
        refusals.refuse("bad magic")  # no tick in between: this one closes the interval
    assert refusals.counts == {"bad magic": 4}
    said = messages(caplog, LOGGER)
    assert len(said) == 3
    assert said[1] == "probe: refused: 2 more (bad magic) in the last 45 s; 3 in all"
    assert said[2].startswith("probe: refused: bad magic (further")


def test_many_reasons_cost_bounded_lines_and_memory(caplog) -> None:
    clock = FakeClock()
    refusals = Refusals(logging.getLogger(LOGGER), "probe: refused", clock=clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for n in range(5000):
            refusals.refuse(f"reason {n}")
        refusals.flush()
    assert len(refusals.counts) == MAX_REASONS + 1
    assert refusals.counts[OTHER] == 5000 - MAX_REASONS
    assert refusals.total == 5000
    # One first line per kept reason and for "other", and one summary for "other".
    assert len(caplog.records) == MAX_REASONS + 2
    assert "4967 more (other)" in caplog.records[-1].getMessage()


def test_counts_go_into_the_given_dict_and_exc_info_onto_the_logged_line(caplog) -> None:
    clock = FakeClock()
    fixed = dict.fromkeys(("too_long", "busy"), 0)  # the control listener's way
    counter: collections.Counter[str] = collections.Counter()  # the receiver's way
    logger = logging.getLogger(LOGGER)
    in_fixed = Refusals(logger, "a", clock=clock, counts=fixed)
    in_counter = Refusals(logger, "b", clock=clock, counts=counter)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(2):
            try:
                raise ValueError("boom")
            except ValueError:
                in_fixed.refuse("busy", exc_info=True)
        in_counter.refuse("bad tag")
    assert fixed == {"too_long": 0, "busy": 2} and in_fixed.counts is fixed
    assert counter == {"bad tag": 1}
    assert [bool(r.exc_info) and r.exc_info[0] for r in caplog.records] == [ValueError, False]


# Each user of the policy: a flood is one line per reason, everything counted.


def test_the_receiver_logs_a_flood_of_forgeries_once(tmp_path: Path, caplog) -> None:
    """Before: a line at the 1st, 2nd, 4th... forgery (8 lines for 200)."""
    forger = DatagramSealer(WRONG_KEY, Direction.SERVER_TO_AGENCY, time.time_ns() // 1000)
    state = ReceiverState(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        delivery = UdpDelivery(sock, state, 1.0, [KEY])
        with caplog.at_level(logging.WARNING, logger="mediation.lea"):
            for n in range(200):
                delivery.receive(forger.seal(b"forged %d" % n), ("192.0.2.9", 5000), 0.0)
    state.close()
    assert state.counters.unauthenticated == {"bad tag": 200}
    refused = [m for m in messages(caplog, "mediation.lea") if "refused" in m]
    assert refused == [
        "udp: datagram refused 192.0.2.9: bad tag (further refusals for this reason: "
        "one line per 60 s)"
    ]


async def test_the_server_logs_a_flood_of_forged_reports_once_a_minute(autojump_clock, caplog):
    """Before: a line at the 1st, 2nd, 4th... forged report; now trio's clock paces them."""
    ref = EndpointRef("a-1b2c3d", 1, "udp", "0123456789abcdef")
    endpoint = Endpoint(
        "udp", "192.0.2.1", 5000, (Stream.CMII,), udp_key_id=KEY.key_id, udp_key=KEY.key
    )
    worker = UdpWorker(ref, endpoint, DeliveryConfig())
    forger = DatagramSealer(WRONG_KEY, Direction.AGENCY_TO_SERVER, time.time_ns() // 1000)
    name = "mediation.server.delivery"
    with caplog.at_level(logging.WARNING):
        for n in range(200):
            worker._report(forger.seal(b"forged %d" % n), trio.current_time())
            await trio.sleep(0.1)
        await trio.sleep(60)
        worker._report(forger.seal(b"one more"), trio.current_time())
    said = [r.getMessage() for r in caplog.records if r.name.startswith(name)]
    assert worker.refusals() == {"bad tag": 201}
    assert len(said) == 3
    assert said[0].startswith(f"{ref.label}: report refused: bad tag (further")
    assert said[1].startswith(f"{ref.label}: report refused: 199 more (bad tag) in the last ")
    assert said[1].endswith("; 200 in all")
    assert said[2] == said[0]


async def test_the_control_listener_logs_a_flood_of_bad_requests_once(tmp_path: Path, caplog):
    """Before: its own limiter, one line per 10 s for all reasons together."""
    path = tmp_path / "control.sock"
    control = await ControlSocket.bind(path)

    async def handler(message: dict) -> dict:
        return {"ok": True}

    def flood() -> None:
        for _ in range(30):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5.0)
                sock.connect(str(path))
                sock.sendall(b"not json\n")
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass

    with caplog.at_level(logging.WARNING, logger="mediation.server.control"):
        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve, handler)
            await trio.to_thread.run_sync(flood)
            nursery.cancel_scope.cancel()
    assert control.counters.to_json()["refused"]["not_json"] == 30
    said = messages(caplog, "mediation.server.control")
    assert said == [
        "control request refused: not_json (further refusals for this reason: one line per 60 s)"
    ]
