"""The confirmation record: whom the intercept followed, kept in the log and given to the agency."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trio
from confirmation_support import (
    SCRIPT,
    TARGETS,
    at,
    check_followed,
    frame_hash,
)
from delivery_agency import UdpAgency
from delivery_support import Site, fast_config, udp_endpoint, wait_until

from mediation import pdu as P
from mediation.evidence.confirmation import (
    address_periods,
    confirmation_records,
    read_stream,
)
from mediation.log import LOG_KEY_PURPOSE, LogCorrupted, LogKey
from mediation.log.evidence_log import stream_dir
from mediation.log.keys import load_public_key, public_key_path
from mediation.log.verify import verify_path
from mediation.pdu.confirmation import (
    FrameEvidence,
    cmii_message_tag,
    frame_message,
    parse_frame_message,
)
from mediation.tap.replay import Tap
from mediation.warrants.model import CaseDetails, ContentLevel, Stream
from mediation.warrants.operations import WarrantChanges, add_warrant, modify_warrant
from mediation.warrants.target_text import parse_target


def _add(site: Site, agency: str, content: ContentLevel) -> P.StreamId:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    details = CaseDetails("CASE-TEST-0001", tuple(parse_target(t) for t in TARGETS), (), "IAP-TEST")
    with site._registry() as registry:
        warrant = add_warrant(
            registry,
            agency,
            details,
            content,
            dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
            now + dt.timedelta(days=1),
            now,
        )
    return P.StreamId(warrant.handle, P.StreamKind.CMII)


def _modify(site: Site, handle: str, targets: tuple[str, ...] | None = None) -> None:
    now = dt.datetime.now(dt.UTC)
    if targets is None:  # another field: the end, a day later
        changes = WarrantChanges(end=now.replace(microsecond=0) + dt.timedelta(days=2))
    else:
        changes = WarrantChanges(targets=tuple(parse_target(t) for t in targets))
    with site._registry() as registry:
        modify_warrant(registry, handle, changes, now)


async def test_the_record_lists_every_change_and_the_agency_holds_the_same(tmp_path: Path) -> None:
    site = Site(tmp_path)
    udp = UdpAgency(interval=0.1)
    agency = site.agency("AGENCY-A", udp_endpoint(await udp.bind(), streams=(Stream.CMII,)))
    sid = _add(site, agency, ContentLevel.HEADERS)
    key = LogKey(site.key.derive(LOG_KEY_PURPOSE))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(udp.run)
        async with site.server(fast_config(report_interval=0.1)) as server:
            warrant = server.table.warrant(sid.warrant_handle)
            tap = Tap.for_warrant(warrant)
            for step, frame in SCRIPT:
                for pdu in tap.process(frame, at(step)):
                    assert await server.ingest(sid.warrant_handle, pdu.kind, pdu.der)
            _modify(site, sid.warrant_handle)  # not the targets: nothing recorded
            await server.reload()  # what `mediate modify` asks of a running server
            _modify(site, sid.warrant_handle, (*TARGETS, "192.0.2.99"))
            await server.reload()
            stream = server.intake.streams[sid]
            last = stream.next_seq - 1
            await wait_until(lambda: stream.durable_seq >= last)
            # The agency has every CmII record (notices, events, reports) ...
            await wait_until(lambda: len({e.sequence_number for e in udp.envelopes}) > last)
        nursery.cancel_scope.cancel()

    records = confirmation_records(site.data, key, sid.warrant_handle)
    check_followed(records, octets=False)  # headers only: hashes, not the frames
    targets = [r for r in records if r["event"] == "targets"]
    assert [(t["reason"], t["targets"]) for t in targets] == [
        ("already-active", sorted(TARGETS)),
        ("warrant-modified", sorted((*TARGETS, "192.0.2.99"))),
    ]
    assert records[0]["event"] == "warrantActive" and records[1]["event"] == "targets"
    # ... and the same events: each entry's record is the one the agency received.
    received = {e.sequence_number: e.content for e in udp.envelopes}
    stored = {
        r.seq: r.payload
        for r in read_stream(stream_dir(site.data, sid.warrant_handle, sid.kind), key)
    }
    for entry in records:
        if entry["source"] != "notice":
            assert received[entry["seq"]] == P.decode_cmii(stored[entry["seq"]])
    periods = address_periods(records)
    assert [(p["address"], p["end_reason"]) for p in periods] == [
        ("192.0.2.10", "address-changed"),
        ("192.0.2.11", "dhcp-release"),
        ("192.0.2.20", "address-changed"),
        ("192.0.2.21", "radius-stop user-request"),
    ]
    assert periods[0]["start"] == records[2]["time"] and periods[0]["session"] == "1"

    # After a restart the record is all still there, the targets recorded again.
    async with site.server(fast_config()) as server:
        stream = server.intake.streams[sid]
        await wait_until(lambda: stream.durable_seq == stream.next_seq - 1)
    again = confirmation_records(site.data, key, sid.warrant_handle)
    assert again[: len(records)] == records
    assert [r["reason"] for r in again[len(records) :] if r["event"] == "targets"] == [
        "already-active"
    ]
    # And the log it came from verifies: chain, checkpoints, signatures.
    reports = verify_path(site.data, load_public_key(public_key_path(site.data)), key)
    assert reports and all(r.complete for r in reports)


def test_a_full_content_warrant_keeps_the_frames_themselves(tmp_path: Path) -> None:
    """In-process: the tap's PDUs straight into a log, as ingest would store them."""
    from confirmation_support import stamp
    from test_tap_frames import warrant

    from mediation.log import ContentKind, EvidenceLog
    from mediation.log.config import LogConfig

    tap = Tap.for_warrant(warrant(*TARGETS, content=ContentLevel.FULL))
    key = LogKey(bytes(32))

    async def store() -> None:
        async with EvidenceLog.open(tmp_path, LogConfig(), key=key) as log:
            stream = await log.stream(tap.handle, P.StreamKind.CMII)
            for step, frame in SCRIPT:
                for pdu in tap.process(frame, at(step)):
                    if pdu.kind == "cmII":
                        await stream.append(pdu.der, ContentKind.CMII, P.ClockStatus.SYNCHRONISED)

    trio.run(store)
    records = confirmation_records(tmp_path, key, tap.handle)
    check_followed(records, octets=True)
    assert records[0]["time"] == stamp(at(1)) and records[0]["frames"][0]["sha256"] == frame_hash(1)


def test_no_stream_is_an_empty_record(tmp_path: Path) -> None:
    assert confirmation_records(tmp_path, LogKey(bytes(32)), "w-000001") == []


def test_damage_before_the_end_is_refused_but_a_torn_tail_ends_the_read(tmp_path: Path) -> None:
    from test_tap_frames import warrant

    from mediation.log import ContentKind, EvidenceLog
    from mediation.log.config import LogConfig

    tap = Tap.for_warrant(warrant(*TARGETS, content=ContentLevel.HEADERS))
    key = LogKey(bytes(32))

    async def store(steps: list) -> None:
        async with EvidenceLog.open(tmp_path, LogConfig(), key=key) as log:
            stream = await log.stream(tap.handle, P.StreamKind.CMII)
            for step, frame in steps:
                for pdu in tap.process(frame, at(step)):
                    if pdu.kind == "cmII":
                        await stream.append(pdu.der, ContentKind.CMII, P.ClockStatus.SYNCHRONISED)

    trio.run(store, SCRIPT[:5])
    directory = stream_dir(tmp_path, tap.handle, P.StreamKind.CMII)
    [segment] = sorted(directory.glob("*.seg"))
    whole = len(confirmation_records(tmp_path, key, tap.handle))
    with segment.open("ab") as f:
        f.write(b"\x00\x00\x01\x00torn")  # a tail a running server has not finished
    assert len(confirmation_records(tmp_path, key, tap.handle)) == whole
    trio.run(store, SCRIPT[5:])  # reopening cuts the tail, a new segment follows
    assert len(sorted(directory.glob("*.seg"))) == 2
    data = bytearray(segment.read_bytes())
    data[-40] ^= 0xFF  # a changed bit in the first segment, now before the end
    segment.write_bytes(bytes(data))
    with pytest.raises(LogCorrupted):
        confirmation_records(tmp_path, key, tap.handle)


def test_frame_messages_round_trip_and_strangers_are_not_frames() -> None:
    when = dt.datetime(2026, 11, 23, 0, 11, 0, 5, tzinfo=dt.UTC)
    evidence = FrameEvidence("dhcp", "ack", when, "ab" * 32, 3, "frame", b"\x01\x02\x03")
    assert parse_frame_message(frame_message(evidence)) == evidence
    link = P.InterceptedSignalingMessage(P.SignalingMessageType.OTHER, "link-layer frame src=x")
    assert parse_frame_message(link) is None
    forged = frame_message(evidence).message.replace("ab" * 32, "zz" * 32)
    assert (
        parse_frame_message(P.InterceptedSignalingMessage(P.SignalingMessageType.OTHER, forged))
        is None
    )
    with pytest.raises(ValueError, match="what"):
        frame_message(FrameEvidence("dhcp", "a b", when, "ab" * 32, 3))
    assert cmii_message_tag(b"\x30\x00") is None and cmii_message_tag(b"") is None


# The carrier's path: `mediate serve`, `mediate tap run --read`, `mediate confirm` --------


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from test_warrants_support import Carrier

    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    return carrier


def _stop(server) -> None:
    """SIGTERM, as an operator stops it: the log closes with its checkpoints."""
    import signal

    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0, server.log.read_text()


def test_mediate_confirm_on_a_tapped_intercept_while_the_server_runs(carrier, tmp_path) -> None:
    import json

    from confirmation_support import USER, write_capture
    from taplink_support import add_tapped_warrant, run_tap, serve, tap_port
    from test_control_live import wait_for

    from mediation.warrants.model import Target, TargetKind

    capture = write_capture(tmp_path / "scripted.pcap")
    targets = (Target(TargetKind.MAC, TARGETS[0]), Target(TargetKind.USER, USER))
    handle = add_tapped_warrant(carrier, targets=targets)
    server = serve(carrier)
    try:
        run_tap(carrier, tap_port(server), "--read", str(capture), "--speed", "full")
        # While the server runs (it holds the log's locks): read as files, all there.
        records = json.loads(carrier.ok("confirm", handle, "--json"))["records"]
        check_followed(records, octets=True)  # a full-content warrant: the frames too
        carrier.ok("modify", handle, "--add-target", "192.0.2.99")

        def modified() -> bool:
            got = json.loads(carrier.ok("confirm", handle, "--json"))["records"]
            return any(r.get("reason") == "warrant-modified" for r in got)

        wait_for(modified, "the modified targets in the record", 30)
        text = carrier.ok("confirm", handle)
    finally:
        _stop(server)
    assert f"{handle}: how the target was identified" in text
    assert f"DHCP session-start 192.0.2.10/24 {TARGETS[0]} session=1" in text
    assert f"sha256 {frame_hash(1)}" in text and "RADIUS access-ended user-test-1" in text
    assert "targets (warrant-modified): 02:00:5e:00:53:01, 192.0.2.99, user:user-test-1" in text
    assert "  192.0.2.11  dhcp 02:00:5e:00:53:01 session 2: " in text
    # A restart: the record is still all there, and the log verifies whole.
    _stop(serve(carrier, "serve-2.log"))
    after = json.loads(carrier.ok("confirm", handle, "--json"))
    check_followed(after["records"], octets=True)
    reasons = [r["reason"] for r in after["records"] if r["event"] == "targets"]
    assert reasons == ["already-active", "warrant-modified", "already-active"]
    assert carrier("log", "verify").code == 0
    # Nothing of the case in clear on disk: the targets and events are encrypted.
    for name, data in carrier.files().items():
        assert b"user-test-1" not in data and b"192.0.2.99" not in data, name
    assert "user-test-1" not in (carrier.tmp / "serve.log").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("confirm", "CASE-TEST-0001"), "HANDLE: must be a handle like w-3f9a1c"),
        (("confirm", "w-ffffff"), "HANDLE: no warrant w-ffffff in this registry"),
    ],
)
def test_each_refusal_is_one_line(carrier, argv, message) -> None:
    run = carrier(*argv)
    assert run.code == 2 and run.out == ""
    assert run.err.count("\n") == 1 and message in run.err, run.err


def test_without_the_key_it_is_refused(carrier) -> None:
    handle = carrier.add()
    carrier.without_key_env()
    run = carrier("confirm", handle)
    assert run.code == 2 and run.err.count("\n") == 1 and "key" in run.err, run.err


def test_a_warrant_never_active_here_has_an_empty_record(carrier) -> None:
    import json

    handle = carrier.add()
    assert "no CmII records here" in carrier.ok("confirm", handle)
    assert json.loads(carrier.ok("confirm", handle, "--json"))["records"] == []
