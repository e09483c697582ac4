"""When the tap sends a batch (docs/tap-link.md): at once when quiet, large when busy.

The tap client's timer is driven on trio's mock clock with an in-memory
spool; the link's state is set as the connection would set it. The spool
is written from a worker thread, which the mock clock does not wait for:
so the tests read when a batch was sealed from the client's counters.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import trio
from tapspool_support import MemorySpool

from mediation.pdu.taplink import encode_pdu
from mediation.tap.batching import BATCH_SECONDS, LINGER_SECONDS, PIPELINE_BYTES
from mediation.tap.link import TapClient

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def client(spool: MemorySpool, *, connected: bool) -> TapClient:
    tap = TapClient(None, spool, ("192.0.2.1", 4433), None)  # type: ignore[arg-type]
    tap.connected = connected
    tap._last_sent = spool.last_id  # everything spooled is sent: the link is free
    return tap


async def sent(tap: TapClient, spool: MemorySpool, der: bytes) -> None:
    """One PDU as a burst of its own; whatever it sealed counts as sent (the link is free)."""
    await tap.add("cmCC", WHEN, der)
    tap._last_sent = spool.last_id


async def run(tap: TapClient, body: Any) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tap.run_timer)
        await body()
        nursery.cancel_scope.cancel()


async def test_a_lone_burst_goes_at_once(autojump_clock: Any) -> None:
    """A burst with no other in sight (the last came long ago) is not held: waiting
    would add nothing to its batch. (It waited a 5 ms linger before.)"""
    spool = MemorySpool()
    tap = client(spool, connected=True)

    async def body() -> None:
        await sent(tap, spool, b"\x04\x01a")
        assert tap.counters.batches == 1 and trio.current_time() == 0.0
        await trio.sleep(1.0)
        await sent(tap, spool, b"\x04\x01b")
        assert tap.counters.batches == 2

    await run(tap, body)


async def learn(tap: TapClient, spool: MemorySpool, gap: float) -> None:
    """Bursts ``gap`` apart until the tap expects the next one ``gap`` away; then
    nothing open (flushed, sent)."""
    for _ in range(30):
        await sent(tap, spool, b"\x04\x01r")
        await trio.sleep(gap)
    await tap.flush()
    tap._last_sent = spool.last_id
    # The spool appends in a worker thread, and the mock clock jumps (to the
    # timer's deadline) while the loop waits for it: the gaps the tap saw were
    # only near ``gap``. Pin the rhythm the bursts set, as if none had jumped.
    tap._burst_gap, tap._last_burst = gap, trio.current_time() - gap


async def test_bursts_in_a_rhythm_share_a_batch_sealed_by_the_last_that_fits(
    autojump_clock: Any,
) -> None:
    """Bursts every 5 ms (a replay's steps) with a 12 ms linger: the batch waits for
    the bursts expected within the linger; the one after which the next would come
    too late seals it at once, so the last burst of a batch never waits."""
    spool = MemorySpool()
    tap = client(spool, connected=True)
    step = 0.005
    assert 2 * step < LINGER_SECONDS < 3 * step

    async def body() -> None:
        await learn(tap, spool, step)
        before = tap.counters.batches
        await sent(tap, spool, b"\x04\x01d")  # opens a batch; the next burst due in 5 ms
        await trio.sleep(step)
        await sent(tap, spool, b"\x04\x01e")  # open 5 ms, + 5 < 12: wait for it
        assert tap.counters.batches == before and tap._pending_count == 2
        await trio.sleep(step)
        await sent(tap, spool, b"\x04\x01f")  # open 10 ms, + 5 > 12: seal now
        assert tap.counters.batches == before + 1 and tap._pending_count == 0

    await run(tap, body)


async def test_a_batch_never_waits_longer_than_the_linger(autojump_clock: Any) -> None:
    """The bursts stop: the timer seals the open batch at the linger."""
    spool = MemorySpool()
    tap = client(spool, connected=True)

    async def body() -> None:
        await learn(tap, spool, 0.001)
        opened = trio.current_time()
        for _ in range(3):
            await sent(tap, spool, b"\x04\x01g")
            await trio.sleep(0.001)
        await trio.sleep(opened + LINGER_SECONDS - 0.0005 - trio.current_time())
        assert tap._pending_count == 3
        await trio.sleep(0.001)
        assert tap._pending_count == 0

    await run(tap, body)


async def test_a_busy_link_lets_the_batch_fill_up_to_the_time_bound(autojump_clock: Any) -> None:
    spool = MemorySpool()
    tap = client(spool, connected=True)
    tap._last_sent = -1  # a spooled batch is not yet sent: the link is busy
    spool.batches.append(b"older")

    async def body() -> None:
        for _ in range(50):  # a PDU every 2 ms: each would be its own batch on a free link
            await tap.add("cmCC", WHEN, b"\x04\x01c")
            await trio.sleep(0.002)
        assert tap.counters.batches == 0
        assert tap._pending_count == 50
        await trio.sleep(BATCH_SECONDS)
        assert tap.counters.batches == 1

    await run(tap, body)


async def test_a_link_that_frees_up_takes_the_open_batch(autojump_clock: Any) -> None:
    spool = MemorySpool()
    tap = client(spool, connected=False)

    async def body() -> None:
        await tap.add("cmCC", WHEN, b"\x04\x01d")
        await trio.sleep(0.05)
        assert tap.counters.batches == 0  # no connection: keep filling
        tap.connected = True
        await trio.sleep(LINGER_SECONDS * 2)
        assert tap.counters.batches == 1

    await run(tap, body)


async def test_a_full_batch_goes_at_once_whatever_the_link(autojump_clock: Any) -> None:
    spool = MemorySpool()
    tap = client(spool, connected=False)
    tap.batch_pdus = 4

    async def body() -> None:
        for _ in range(9):
            await tap.add("cmCC", WHEN, b"\x04\x01e")
        assert tap.counters.batches == 2  # two full; the ninth PDU waits
        assert tap._pending_count == 1
        await trio.sleep(BATCH_SECONDS * 1.5)
        assert tap.counters.batches == 3

    await run(tap, body)


async def test_a_full_window_makes_the_link_busy(autojump_clock: Any) -> None:
    """The window is counted in octets unacknowledged (it was two batches): while the
    open batch would not fit, it grows instead of going."""
    import types

    spool = MemorySpool()
    spool.batches += [b"one", b"two"]  # sent, not yet acknowledged
    tap = client(spool, connected=True)
    in_flight = {1: tap.window_bytes - 4, 2: 4}  # what the connection's machine holds
    tap._machine = types.SimpleNamespace(in_flight=in_flight)  # type: ignore[assignment]

    async def body() -> None:
        await tap.add("cmCC", WHEN, b"\x04\x01f")
        await trio.sleep(0.05)
        assert tap.counters.batches == 0  # the window is full: the batch grows instead
        del in_flight[1]  # the server acknowledged the large one
        spool.acked = 1
        await trio.sleep(LINGER_SECONDS * 2)
        assert tap.counters.batches == 1

    await run(tap, body)


async def test_two_in_flight_hold_a_small_batch_back_but_not_a_large_one(
    autojump_clock: Any,
) -> None:
    """With two batches unacknowledged a small open batch grows (each batch costs the
    server a journal write); one of PIPELINE_BYTES goes at the linger without waiting
    for their acks (throughput does not wait on the server's fdatasync)."""
    import types

    spool = MemorySpool()
    spool.batches += [b"one", b"two"]
    tap = client(spool, connected=True)
    in_flight = {1: 3, 2: 3}
    tap._machine = types.SimpleNamespace(in_flight=in_flight)  # type: ignore[assignment]
    record = b"\x04\x82\x10\x00" + bytes(0x1000)  # a 4 KiB PDU

    async def body() -> None:
        await tap.add("cmCC", WHEN, b"\x04\x01g")
        await trio.sleep(0.05)
        assert tap.counters.batches == 0  # small: it waits for an ack
        for _ in range(PIPELINE_BYTES // len(record) + 1):
            await tap.add("cmCC", WHEN, record)
        await trio.sleep(LINGER_SECONDS * 2)
        assert tap.counters.batches == 1  # large enough: it goes, two still in flight
        assert len(in_flight) == 2

    await run(tap, body)


async def test_a_busy_taps_batch_goes_once_it_is_worth_sending_not_at_the_linger(
    autojump_clock: Any,
) -> None:
    """Bursts every millisecond (a busy tap) would share a batch for the whole 12 ms
    linger; once the open batch holds PIPELINE_BYTES and at most one batch is in
    flight it goes with the burst that filled it: waiting would only add latency
    (at 16,000 PDUs/s the linger was the p99's largest part). With two in flight
    it keeps growing until the linger, as before. (No timer task: the seal is the
    burst's, and the mock clock then only moves with the bursts.)"""
    import types

    spool = MemorySpool()
    tap = client(spool, connected=True)
    record = b"\x04\x82\x40\x00" + bytes(0x4000)  # a 16 KiB PDU: 4 fill PIPELINE_BYTES
    needed = -(-PIPELINE_BYTES // len(record))
    in_flight: dict[int, int] = {}
    tap._machine = types.SimpleNamespace(in_flight=in_flight)  # type: ignore[assignment]

    async def fill() -> tuple[int, float]:
        """Bursts of one PDU a millisecond until a batch is sealed: (PDUs, ms open)."""
        opened, before = trio.current_time(), tap.counters.batches
        for count in range(1, 4 * needed):
            await sent(tap, spool, record)
            if tap.counters.batches > before:
                return count, (trio.current_time() - opened) * 1e3
            await trio.sleep(0.001)
        raise AssertionError("no batch sealed")

    async def body() -> None:
        await learn(tap, spool, 0.001)
        count, ms = await fill()
        assert count in (needed, needed + 1) and ms < LINGER_SECONDS * 1e3 / 2
        in_flight.update({1: 3, 2: 3})  # two unacknowledged: the old rule, the linger
        count, ms = await fill()
        assert count > needed and ms >= LINGER_SECONDS * 1e3 - 1

    await body()


async def test_a_lone_pdu_goes_at_the_linger_with_one_in_flight(autojump_clock: Any) -> None:
    import types

    spool = MemorySpool()
    spool.batches += [b"one"]
    tap = client(spool, connected=True)
    tap._machine = types.SimpleNamespace(in_flight={1: 3})  # type: ignore[assignment]

    async def body() -> None:
        await tap.add("cmCC", WHEN, b"\x04\x01h")
        await trio.sleep(LINGER_SECONDS * 2)
        assert tap.counters.batches == 1

    await run(tap, body)


async def test_a_flush_returns_only_once_an_earlier_flush_has_spooled_its_batch() -> None:
    """The end of a replay: ``drained`` flushes, then waits for acknowledgements. If the
    timer's flush was still writing the last batch, the old code found nothing pending
    and nothing unacknowledged, and the tap exited with the batch never sent."""
    import threading

    import trio.testing

    entered, release = threading.Event(), threading.Event()

    class SlowSpool(MemorySpool):
        def append(self, payload: bytes, first: dt.datetime, last: dt.datetime) -> int:
            entered.set()
            release.wait(10)
            return super().append(payload, first, last)

    spool = SlowSpool()
    tap = client(spool, connected=True)
    await tap.add_chunk(encode_pdu("cmCC", WHEN, b"\x04\x01a"), 1, WHEN, WHEN)  # no burst
    seen: list[int] = []

    async def second_flush() -> None:
        await tap.flush()
        seen.append(spool.last_id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tap.flush)  # the timer's, writing the batch
        await trio.to_thread.run_sync(entered.wait, 10)
        nursery.start_soon(second_flush)  # drained's
        await trio.testing.wait_all_tasks_blocked()
        assert seen == []  # it waits for the batch being written
        release.set()
    assert seen == [1]
