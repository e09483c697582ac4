"""A carrier with a server subprocess and a registered tap, for the tap-link tests."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import trio
from test_control_live import wait_for
from test_serve_process import Serve
from test_warrants_support import AGENCY, Carrier

from mediation.evidence.pcap import PcapReader, PcapWriter
from mediation.log import LOG_KEY_PURPOSE, ContentKind, EvidenceLog, LogKey
from mediation.log.config import LogConfig
from mediation.pdu import StreamKind
from mediation.tap.replay import replay_pcap
from mediation.warrants.access import KeyNeed, KeyOptions, open_registry
from mediation.warrants.keys import read_key_file
from mediation.warrants.model import CaseDetails, ContentLevel, Source, Target, TargetKind
from mediation.warrants.operations import add_warrant
from mediation.warrants.registry import load_snapshot

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "fixtures" / "sample" / "sample.pcap"
TARGET_MAC = "02:00:5e:00:53:01"
TAP = "edge-1"  # registered by Carrier.setup
CONFIG = (
    '[retrieval]\nlisten = ""\n[status]\nlog_interval = 30\n'
    '[taps]\ntls_listen = "127.0.0.1:0"\nudp_listen = "127.0.0.1:0"\nkeepalive = 1\n'
)
# Before the sample's capture times (2026-11-23), so its frames are in the window.
START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def add_tapped_warrant(
    carrier: Carrier,
    case_id: str = "CASE-TEST-0001",
    targets: tuple[Target, ...] = (Target(TargetKind.MAC, TARGET_MAC),),
    tap: str = TAP,
    content: ContentLevel = ContentLevel.FULL,
) -> str:
    details = CaseDetails(case_id, targets, (Source("tap", tap),), "IAP-TEST")
    now = dt.datetime.now(dt.UTC)
    with open_registry(carrier.data, KeyOptions(str(carrier.key)), KeyNeed.REQUIRED) as registry:
        end = now + dt.timedelta(days=1)
        return add_warrant(registry, AGENCY, details, content, START, end, now).handle


def serve(carrier: Carrier, name: str = "serve.log") -> Serve:
    config = carrier.tmp / "mediation.toml"
    config.write_text(CONFIG)
    return Serve(carrier, config, name)


def tap_port(server: Serve, key: str = "tls_listening") -> str:
    """The tap listener's address (the control socket answers before the listeners are up)."""

    def listening() -> str | None:
        return ((server.status() or {}).get("taps") or {}).get(key)

    return wait_for(listening, f"the tap listener ({key})")  # type: ignore[return-value]


def tap_command(carrier: Carrier, server_address: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "mediation", "tap", "run",
        "--credentials", str(carrier.tmp / f"{TAP}.tap"),
        "--server", server_address, "--correlation-epoch", "0", *extra,
    ]  # fmt: skip


def run_tap(carrier: Carrier, server_address: str, *extra: str, timeout: float = 60) -> str:
    """``mediate tap run --read SAMPLE --speed full``; its output (exit 0 asserted)."""
    if "--read" not in extra:
        extra = ("--read", str(SAMPLE), "--speed", "full", *extra)
    done = subprocess.run(
        tap_command(carrier, server_address, *extra),
        env={**os.environ, **carrier.env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def long_capture(path: Path, repeat: int, spacing_us: int = 400) -> Path:
    """The sample's frames ``repeat`` times over, ``spacing_us`` apart: a longer stream."""
    with PcapReader.open(SAMPLE) as reader:
        frames = [packet.data for packet in reader]
    first = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    with PcapWriter.open(path) as writer:
        for n in range(repeat * len(frames)):
            writer.write(frames[n % len(frames)], first + dt.timedelta(microseconds=n * spacing_us))
    return path


def expected(
    carrier: Carrier, handle: str, capture: Path = SAMPLE
) -> dict[StreamKind, list[bytes]]:
    """What the in-process path builds from the sample for this warrant."""
    key = read_key_file(carrier.key)
    [warrant] = [w for w in load_snapshot(carrier.data, key).warrants if w.handle == handle]
    out: dict[StreamKind, list[bytes]] = {StreamKind.CMII: [], StreamKind.CMCC: []}
    for item in replay_pcap(capture, [warrant]):
        out[StreamKind(item.kind)].append(item.der)
    return out


def stored(carrier: Carrier, handle: str) -> dict[StreamKind, list[bytes]]:
    """Every PDU in the warrant's log streams, decrypted, in order.

    The server's own records aside: notices, and the targets report
    (mediation/server/targets_record.py); what is left is what the tap sent.
    """
    from mediation.pdu.confirmation import is_targets_report

    key = LogKey(read_key_file(carrier.key).derive(LOG_KEY_PURPOSE))

    async def read() -> dict[StreamKind, list[bytes]]:
        out: dict[StreamKind, list[bytes]] = {}
        async with EvidenceLog.open(carrier.data, LogConfig(), key=key) as log:
            for kind in (StreamKind.CMII, StreamKind.CMCC):
                stream = await log.stream(handle, kind)
                cursor, records = stream.cursor(0), []
                while cursor.position <= stream.durable_seq:
                    records.extend(await cursor.read(256))
                out[kind] = [
                    r.payload
                    for r in records
                    if r.kind is not ContentKind.NOTICE and not is_targets_report(r.payload)
                ]
        return out

    return trio.run(read)


def notices(carrier: Carrier, handle: str) -> list[bytes]:
    key = LogKey(read_key_file(carrier.key).derive(LOG_KEY_PURPOSE))

    async def read() -> list[bytes]:
        async with EvidenceLog.open(carrier.data, LogConfig(), key=key) as log:
            stream = await log.stream(handle, StreamKind.CMII)
            cursor, records = stream.cursor(0), []
            while cursor.position <= stream.durable_seq:
                records.extend(await cursor.read(256))
            return [r.payload for r in records if r.kind is ContentKind.NOTICE]

    return trio.run(read)
