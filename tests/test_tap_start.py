"""The tap's start (mediation/tap/runner.py ``_ready``, TapClient.prepare): compiled before capture.

Driven on trio's mock clock with the client's own state; the link is not
connected (nothing listens on the documentation address), so what is
tested is the order: compile, link, then capture or replay.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import test_tap_frames as F
import trio

from mediation.errors import UsageError
from mediation.pdu import taplink as T
from mediation.pdu.schema import compiled
from mediation.tap import runner
from mediation.tap.link import TapClient
from mediation.tap.runner import LINK_WAIT, RunSettings

NOW = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def warrant(*targets: str) -> T.TapWarrant:
    return T.TapWarrant("w-0a0001", "CASE-TEST-0001", "IAP-TEST", "full", NOW - DAY, NOW + DAY,
                        targets)  # fmt: skip


class Recording(TapClient):
    """A client that notes, at each compile, whether capture could already have begun."""

    def __init__(self, fixed: Any = None) -> None:
        super().__init__(None, None, ("192.0.2.1", 4433), None, fixed=fixed)  # type: ignore[arg-type]
        self.prepared_before_ready: list[bool] = []

    async def prepare(self) -> None:
        self.prepared_before_ready.append(not self.warrants_ready.is_set())
        await super().prepare()


def settings(source: Path | None, connect_wait: float = 60.0) -> RunSettings:
    return RunSettings(address=("192.0.2.1", 4433), source=source, connect_wait=connect_wait)


async def test_a_warrant_set_is_ready_only_once_compiled_for() -> None:
    """A warrant following DHCP: the reference codec is compiled before capture may begin."""
    client = Recording()
    compiled.cache_clear()
    await client._on_message(T.WarrantSet(1, (warrant(F.TARGET_MAC),)), None)  # type: ignore[arg-type]
    assert client.prepared_before_ready == [True]
    assert client.warrants_ready.is_set() and compiled.cache_info().currsize == 1


async def test_a_warrant_without_followers_compiles_nothing() -> None:
    """Header reports and CC are written by hand: an address target needs no compile."""
    client = Recording()
    compiled.cache_clear()
    await client._on_message(T.WarrantSet(1, (warrant("192.0.2.10"),)), None)  # type: ignore[arg-type]
    assert client.warrants_ready.is_set() and compiled.cache_info().currsize == 0


async def test_without_a_warrant_set_the_server_form_stops_naming_the_server(
    autojump_clock: Any,
) -> None:
    with pytest.raises(UsageError, match=r"no warrant set from 192\.0\.2\.1:4433 in time"):
        await runner._ready(Recording(), settings(Path("x.pcap"), connect_wait=3.0), False)
    assert trio.current_time() == pytest.approx(3.0)


async def test_the_seed_form_replays_into_the_spool_after_the_link_wait(
    autojump_clock: Any,
) -> None:
    """Its tap is known: compiled at once, the link waited for a bounded time, then replay."""
    from test_tap_seed import CONFIG

    from mediation.tap.seed import seed_tap

    client = Recording(fixed=(seed_tap(CONFIG), None, None))
    assert client.taps  # capture needs no warrant set
    await runner._ready(client, settings(Path("x.pcap")), True)
    assert trio.current_time() == pytest.approx(LINK_WAIT)
    assert client.prepared_before_ready == [True]


async def test_the_seed_forms_live_capture_begins_at_once(autojump_clock: Any) -> None:
    from test_tap_seed import CONFIG

    from mediation.tap.seed import seed_tap

    client = Recording(fixed=(seed_tap(CONFIG), None, None))
    await runner._ready(client, settings(None), True)
    assert trio.current_time() == 0.0
    assert client.prepared_before_ready == [True]
