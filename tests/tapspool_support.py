"""The tap link's test doubles: the spool in memory, and a server side that acks every batch."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import trio

from mediation.pdu import taplink as T
from mediation.protocol.taplink import TapLinkServer


class MemorySpool:
    """What the link needs of a spool, in memory: the batches appended, in order.

    Args:
        batches: batches already spooled (say, before the connection).
        ahead: whether the link may send a batch before its append returns
            (the real spool's "Sending ahead"); off: each batch waits for it.
    """

    def __init__(self, batches: list[bytes] | None = None, *, ahead: bool = False) -> None:
        self.batches: list[bytes] = [] if batches is None else batches
        self.acked = 0
        self.overflow = None
        self.sends_ahead = ahead

    @property
    def last_id(self) -> int:
        return len(self.batches)

    def ahead(self, size: int) -> int | None:
        return len(self.batches) + 1 if self.sends_ahead else None

    @property
    def durable(self) -> int:
        return len(self.batches)  # appended whole, in a worker thread: durable at once

    def quick(self, size: int) -> bool:
        return False  # every append in a worker thread, as the tests expect

    def sync_written(self) -> int:
        return len(self.batches)

    def append(self, payload: bytes, first: dt.datetime, last: dt.datetime) -> int:
        self.batches.append(payload)
        return len(self.batches)

    def pending(self) -> Any:
        return [(i + 1, b) for i, b in enumerate(self.batches) if i + 1 > self.acked]

    def ack(self, upto: int) -> None:
        assert upto <= len(self.batches), "acknowledged before it was spooled"
        self.acked = max(self.acked, upto)

    def ack_in_memory(self, upto: int) -> bool:
        self.ack(upto)
        return True

    def clear_overflow(self) -> None:
        pass


async def acking_server(
    listener: trio.SocketListener, on_batch: Callable[[T.PduBatch], None] | None = None
) -> None:
    """The server's side of a tap link, one connection: accept the hello, ack every batch.

    Args:
        listener: where the tap connects.
        on_batch: called with each batch as it is read, before its ack.
    """
    stream = await listener.accept()
    machine = TapLinkServer(trio.current_time())
    while data := await stream.receive_some(1 << 20):
        for message in machine.receive_data(data, trio.current_time()):
            if isinstance(message, T.TapHello):
                machine.accept(0, trio.current_time())
            elif isinstance(message, T.PduBatch):
                if on_batch is not None:
                    on_batch(message)
                machine.send_ack(T.BatchAck(message.batch_id, 1), trio.current_time())
        await stream.send_all(machine.data_to_send())
