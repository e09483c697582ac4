"""The tap's link loop when the tap is stopped just as the connection breaks."""

from __future__ import annotations

import trio

from mediation.tap.link import TapClient


async def _breaks_as_it_is_cancelled() -> None:
    """A connection whose receiver sees the server close while the tap is being stopped."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
        try:
            await trio.sleep_forever()
        finally:
            raise trio.BrokenResourceError("server closed the connection")


async def test_stopping_while_the_link_breaks_ends_cleanly() -> None:
    # Regression: `except Exception` let BaseExceptionGroup([Cancelled, BrokenResourceError])
    # through, and `mediate tap run` ended with a traceback when stopped with its server.
    client = object.__new__(TapClient)
    client._connection = _breaks_as_it_is_cancelled  # type: ignore[method-assign]
    client.connected = False
    with trio.move_on_after(5) as stopped:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run_link)
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert not stopped.cancelled_caught
