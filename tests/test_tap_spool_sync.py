"""Spool records written in the event loop and synced behind it (mediation/tap/spool_sync.py).

``TapSpool.append(..., sync=False)`` writes a record without its sync;
``sync_written`` (the syncer's thread) makes every record written so far
durable; the link trusts an acknowledgement only up to ``durable``. Real
spools in temporary directories; the link over TCP on loopback.
"""

from __future__ import annotations

import datetime as dt
import errno
import threading
import types
from pathlib import Path

import pytest
import trio
import trio.testing
from tapspool_support import acking_server

from mediation.tap.link import TapClient
from mediation.tap.spool import TapSpool
from mediation.tap.spool_sync import SpoolSyncer

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
KEY = bytes(range(32))


def _payload(i: int, size: int = 300) -> bytes:
    return i.to_bytes(4, "big") * (size // 4)


def test_unsynced_records_are_durable_after_sync_written_and_read_back(tmp_path: Path) -> None:
    with TapSpool.open(tmp_path, KEY, 1 << 20, reserve=True) as spool:
        assert not spool.quick(300)  # no segment yet: the first append creates one
        assert spool.append(_payload(1), WHEN, WHEN) == 1
        assert spool.durable == 1
        assert spool.quick(300)
        for i in range(2, 5):
            assert spool.append(_payload(i), WHEN, WHEN, sync=False) == i
        assert spool.durable == 1  # written, not synced
        assert [b for b, _ in spool.pending()] == [1, 2, 3, 4]
        assert spool.sync_written() == 4 == spool.durable
        spool.append(_payload(5), WHEN, WHEN, sync=False)
    with TapSpool.open(tmp_path, KEY, 1 << 20, reserve=True) as spool:  # close synced 5
        assert spool.durable == spool.last_id >= 5
        assert list(spool.pending()) == [(i, _payload(i)) for i in range(1, 6)]


def test_a_segment_roll_syncs_the_records_before_it(tmp_path: Path) -> None:
    with TapSpool.open(tmp_path, KEY, 64 * 1024, reserve=True) as spool:
        spool.append(_payload(1, 3000), WHEN, WHEN)
        batch = 1
        while spool.quick(3000):  # segments of 8 KiB (a limit / 8)
            batch = spool.append(_payload(batch + 1, 3000), WHEN, WHEN, sync=False)
        assert batch > 1 and spool.durable == 1
        rolled = spool.append(_payload(batch + 1, 3000), WHEN, WHEN)  # a roll: synced first
        assert rolled == batch + 1 and spool.durable == rolled
        assert len(list(tmp_path.glob("*.seg"))) == 2


def test_syncs_in_another_thread_while_appending_keep_every_record(tmp_path: Path) -> None:
    seen: list[int] = []
    stop = threading.Event()
    with TapSpool.open(tmp_path, KEY, 1 << 24, reserve=True) as spool:
        spool.append(_payload(1), WHEN, WHEN)

        def syncing() -> None:
            while not stop.is_set():
                seen.append(spool.sync_written())

        thread = threading.Thread(target=syncing)
        thread.start()
        try:
            for i in range(2, 301):
                assert spool.append(_payload(i), WHEN, WHEN, sync=not spool.quick(300)) == i
        finally:
            stop.set()
            thread.join()
        assert seen == sorted(seen)  # durable never goes back
        assert spool.sync_written() == 300
    with TapSpool.open(tmp_path, KEY, 1 << 24, reserve=True) as spool:
        assert list(spool.pending()) == [(i, _payload(i)) for i in range(1, 301)]


async def test_until_waits_for_the_sync_thread_and_raises_its_error(tmp_path: Path) -> None:
    with TapSpool.open(tmp_path, KEY, 1 << 20, reserve=True) as spool:
        spool.append(_payload(1), WHEN, WHEN)
        syncer = SpoolSyncer(spool, trio.lowlevel.current_trio_token())
        try:
            batch = spool.append(_payload(2), WHEN, WHEN, sync=False)
            syncer.written()
            with trio.fail_after(10):
                await syncer.until(batch)
            assert spool.durable == batch
        finally:
            syncer.stop()

    class Failing:
        durable = 0

        def sync_written(self) -> int:
            raise OSError(errno.EIO, "the disk said no")

    failing = SpoolSyncer(Failing(), trio.lowlevel.current_trio_token())
    failing.written()
    with trio.fail_after(10), pytest.raises(OSError, match="the disk said no"):
        await failing.until(1)


class _GatedSpool(TapSpool):
    """A real spool whose syncs wait for ``gate`` (a slow disk)."""

    gate: threading.Event

    def sync_written(self) -> int:
        self.gate.wait(10)
        return super().sync_written()


class _AckTrace:
    """The tap's trace hooks; ``acked_read`` is set once an ack is read."""

    def __init__(self) -> None:
        self.acked_read = trio.Event()
        self.acks: list[int] = []

    def sealed(self, *args: object) -> None:
        pass

    def sent(self, batches: list[int]) -> None:
        pass

    def acked(self, upto: int) -> None:
        self.acks.append(upto)
        self.acked_read.set()


async def test_an_ack_is_trusted_only_once_its_batch_is_durable(tmp_path: Path) -> None:
    spool = _GatedSpool.open(tmp_path, KEY, 1 << 20, reserve=True)
    spool.gate = threading.Event()
    trace = _AckTrace()
    credentials = types.SimpleNamespace(name="edge-test")
    tap = TapClient(credentials, spool, ("127.0.0.1", 0), None, trace=trace)  # type: ignore[arg-type]
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    read: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(acking_server, listeners[0], lambda b: read.append(b.batch_id))
            nursery.start_soon(tap.run_timer)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            spool.gate.set()  # the hello's sync
            nursery.start_soon(tap._speak, stream)
            with trio.fail_after(30):
                await tap._acked.wait()  # the server's hello: connected
                spool.gate.clear()
                await tap.add("cmCC", WHEN, b"\x04\x01a")  # creates the segment: synced
                await tap.flush()
                while spool.acked < 1:
                    tap._acked = trio.Event()
                    await tap._acked.wait()
                trace.acked_read = trio.Event()
                await tap.add("cmCC", WHEN, b"\x04\x01b")  # written, its sync held
                await tap.flush()
                assert spool.durable == 1
                await trace.acked_read.wait()  # the server has it and said so
                await trio.testing.wait_all_tasks_blocked()
                assert trace.acks[-1] == 2 and spool.acked == 1  # not trusted yet
                spool.gate.set()
                while spool.acked < 2:
                    tap._acked = trio.Event()
                    await tap._acked.wait()
            assert spool.durable == 2 and read == [1, 2]
            nursery.cancel_scope.cancel()
    finally:
        spool.close()


class _FailingSpool(TapSpool):
    """A real spool whose syncs fail (the disk said no)."""

    def sync_written(self) -> int:
        raise OSError(errno.EIO, "the spool's disk said no")


async def test_a_failed_sync_stops_the_next_flush_as_a_failed_append_does(tmp_path: Path) -> None:
    spool = _FailingSpool.open(tmp_path, KEY, 1 << 20, reserve=True)
    credentials = types.SimpleNamespace(name="edge-test")
    tap = TapClient(credentials, spool, ("127.0.0.1", 0), None)  # type: ignore[arg-type]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tap.run_timer)
            await trio.testing.wait_all_tasks_blocked()
            for der in (b"\x04\x01a", b"\x04\x01b"):  # a new segment (synced), then written
                await tap.add("cmCC", WHEN, der)
                await tap.flush()
            assert tap._syncer is not None
            with trio.fail_after(10), pytest.raises(OSError, match="said no"):
                await tap._syncer.until(2)
            await tap.add("cmCC", WHEN, b"\x04\x01c")
            with pytest.raises(OSError, match="said no"):
                await tap.flush()
            nursery.cancel_scope.cancel()
    finally:
        spool.close()
