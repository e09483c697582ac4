"""`mediate tap run`'s refusals: one line naming the option, exit 2, nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_warrants_support import Carrier


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    return carrier


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "-i: give -i IFACE (live capture) or --read FILE (a pcap file)"),
        (("--read", "nowhere.pcap"), "--read: nowhere.pcap is not a readable file"),
        (("--read", "{pcap}", "--batch", "0"), "--batch: must be 1 to 65536 PDUs, got 0"),
        (
            ("--read", "{pcap}", "--spool-limit", "10"),
            "--spool-limit: must be at least 65536 bytes, got 10",
        ),
        (("--read", "{pcap}", "--server", "nowhere"), "--server"),
        (("--read", "{pcap}", "--linger", "0"), "--linger: must be 1 to 200 milliseconds, got 0"),
        (("--read", "{pcap}", "--linger", "nan"), "--linger: must be 1 to 200 milliseconds"),
        (
            ("--read", "{pcap}", "--workers", "2"),
            "--workers: applies to live capture only: give -i IFACE, or drop it",
        ),
        (("-i", "lo", "--workers", "0"), "--workers: must be 1 to 64, got 0"),
        (("-i", "lo", "--workers", "65"), "--workers: must be 1 to 64, got 65"),
    ],
)
def test_each_refusal_is_one_line(carrier: Carrier, extra: tuple[str, ...], message: str) -> None:
    pcap = Path(__file__).resolve().parents[1] / "fixtures" / "sample" / "sample.pcap"
    extra = tuple(str(pcap) if e == "{pcap}" else e for e in extra)
    run = carrier("tap", "run", "--credentials", str(carrier.tmp / "edge-1.tap"), *extra)
    assert run.code == 2
    assert run.err.startswith(f"mediate: error: {message}") and run.err.count("\n") == 1
    assert not (carrier.tmp / "edge-1.tap.spool").exists()


def test_credentials_that_are_not_a_tap_file_are_refused(carrier: Carrier) -> None:
    missing = carrier("tap", "run", "--credentials", "absent.tap", "--read", "x")
    assert missing.code == 2 and "--credentials: absent.tap does not exist" in missing.err
    other = carrier.tmp / "other.tap"
    other.write_text("name = 1\n")
    wrong = carrier("tap", "run", "--credentials", str(other), "--read", "x")
    assert wrong.code == 2 and "is not a tap credentials file (KeyError)" in wrong.err


@pytest.mark.parametrize(
    ("speed", "message"),
    [
        ("fast", "--speed: must be recorded, full or 1 to 10000000 frames a second, got 'fast'"),
        ("0", "--speed: must be recorded, full or 1 to"),
        ("nan", "--speed: must be recorded, full or 1 to"),
        ("1e9", "--speed: must be recorded, full or 1 to"),
    ],
)
def test_a_speed_that_is_not_one_is_refused_with_one_line(
    carrier: Carrier, speed: str, message: str
) -> None:
    test_each_refusal_is_one_line(carrier, ("--read", "{pcap}", "--speed", speed), message)


async def test_speed_n_paces_the_replay_and_stamps_each_frame_when_it_goes() -> None:
    """``--speed N``: N frames a second, each with the time it is replayed, not its recorded one."""
    import datetime as dt
    import time

    from mediation.evidence.pcap import PcapReader
    from mediation.tap.file_replay import Pace, replay_file

    class Client:
        fixed = None  # not the seed form

        def __init__(self) -> None:
            self.times: list[tuple[dt.datetime, dt.datetime]] = []
            self.steps = 0

        async def frames(
            self, frames: list[tuple[bytes, dt.datetime]], *_args: object, **_kw: object
        ) -> None:
            self.steps += 1
            self.times += [(when, dt.datetime.now(dt.UTC)) for _data, when in frames]

    pcap = Path(__file__).resolve().parents[1] / "fixtures" / "sample" / "sample.pcap"
    with PcapReader.open(pcap) as reader:
        recorded = [packet.time for packet in reader]
    client = Client()
    began = time.monotonic()
    await replay_file(client, pcap, Pace(rate=400.0))
    took = time.monotonic() - began
    assert len(client.times) == len(recorded) > 20
    assert took >= (len(recorded) - 1) / 400.0 - 0.002  # paced, not as fast as it can
    assert client.steps < len(recorded)  # frames due together go together
    for (when, seen), old in zip(client.times, recorded, strict=True):
        assert when.tzinfo is dt.UTC and abs((seen - when).total_seconds()) < 0.5
        assert when != old
    stamps = [when for when, _seen in client.times]
    assert stamps == sorted(stamps)
