"""The receiver's files, checked with the tools an agency will use on them.

tcpdump reads the pcap with the capture times, ``sha256sum -c`` passes on
every hash file, ``mediate decode`` reads the raw files, the JSON lines
parse; a restart appends after cutting a torn tail; ``--sort`` reorders.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from test_lea_serverside import UdpServer
from test_lea_support import (
    CMCC,
    CMII,
    HANDLE,
    PEER,
    SUBJECT,
    Receiver,
    capture_time,
    cc_record,
    config,
    raw_sequences,
    start,
    wait_until,
)

from mediation import durable
from mediation import pdu as P
from mediation.lea.cc_pcap import sort_pcap
from mediation.lea.state import ReceiverState
from mediation.pdu import fast

NOT_IP = b"this is not an IP packet"


def tcpdump(pcap: Path) -> list[str]:
    """Each packet's line: ``EPOCH.MICROS IP src.port > dst.port: UDP, length N``."""
    result = subprocess.run(
        ["tcpdump", "-r", str(pcap), "-tt", "-n"], capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def sha256sum_check(directory: Path) -> list[str]:
    hashes = sorted(p.name for p in directory.glob("*.sha256"))
    result = subprocess.run(
        ["sha256sum", "-c", *hashes], cwd=directory, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def stamp(seq: int) -> str:
    return f"{capture_time(seq).timestamp():.6f}"


async def receive_udp(out: Path, plan, **options: object) -> Receiver:
    """Run a UDP receiver, let ``plan(server)`` send, wait until all is held, stop."""
    receiver = Receiver(config(out, udp=("127.0.0.1", 0), **options))
    async with trio.open_nursery() as nursery:
        running = await start(nursery, receiver)
        wanted = await plan(UdpServer(running.bound.udp))
        for stream, count in wanted.items():
            await wait_until(
                lambda s=stream, c=count: (
                    receiver.state.trackers.get(s)
                    and receiver.state.trackers[s].received_count == c
                ),
                f"{count} envelopes of {stream}",
            )
        await running.stop()
    return receiver


async def test_every_output_verifies_with_the_agencys_tools(tmp_path: Path) -> None:
    out = tmp_path / "intercepts"

    async def plan(server: UdpServer) -> dict:
        await server.send(CMCC, 10)
        odd = server.senders[CMCC].envelope(cc_record(10, payload=NOT_IP), 0.0)
        await server.sock.sendto(server.sealer.seal(odd), server.target)
        await server.send(CMII, 6)
        return {CMCC: 11, CMII: 6}

    await receive_udp(out, plan)
    case = out / HANDLE

    lines = tcpdump(case / "cmcc.pcap")
    assert len(lines) == 10  # the non-IP payload is kept in cmcc.raw only
    for seq, line in enumerate(lines):
        assert line.startswith(f"{stamp(seq)} IP {SUBJECT}.{40000 + seq} > {PEER}.9000: UDP")

    checked = sha256sum_check(case)
    names = {"cmcc.pcap", "cmcc.raw", "cmii.raw", "cmii.jsonl", "gaps.json"}
    assert {line.split(":")[0] for line in checked} == names
    assert all(line.endswith(": OK") for line in checked)

    decoded = subprocess.run(
        [sys.executable, "-m", "mediation", "decode", str(case / "cmcc.raw")],
        capture_output=True,
        text=True,
        check=True,
    )
    objects = [json.loads(line) for line in decoded.stdout.splitlines()]
    assert len(objects) == 11
    assert raw_sequences(case / "cmii.raw") == list(range(6))

    jsonl = [json.loads(line) for line in (case / "cmii.jsonl").read_text().splitlines()]
    assert [j["sequenceNumber"] for j in jsonl] == list(range(6))
    assert all(j["clockStatus"] == "synchronised" and "mediationTime" in j for j in jsonl)

    report = json.loads((case / "gaps.json").read_text())
    assert report["notIpPackets"] == {"count": 1, "sequences": [10]}
    assert report["warrantHandle"] == HANDLE
    text = " ".join(p.name for p in case.iterdir()) + (case / "gaps.json").read_text()
    assert "CASE-0001" not in text and SUBJECT not in text  # names and reports: handle only


async def test_sort_rewrites_the_pcap_in_sequence_order(tmp_path: Path) -> None:
    out = tmp_path / "intercepts"

    async def plan(server: UdpServer) -> dict:
        sender = server.senders[CMCC]
        datagrams = [sender.envelope(cc_record(n), 0.0) for n in range(5)]
        for n in (3, 1, 4, 0, 2):
            await server.sock.sendto(server.sealer.seal(datagrams[n]), server.target)
        return {CMCC: 5}

    await receive_udp(out, plan, sort=True)
    case = out / HANDLE
    assert raw_sequences(case / "cmcc.raw") == [3, 1, 4, 0, 2]  # the evidence as it came
    assert [line.split()[0] for line in tcpdump(case / "cmcc.pcap")] == [stamp(n) for n in range(5)]
    sha256sum_check(case)
    assert not list(case.glob(".*"))  # no temporary files left


async def test_a_restart_appends_after_cutting_a_torn_tail(tmp_path: Path) -> None:
    out = tmp_path / "intercepts"

    async def first(server: UdpServer) -> dict:
        await server.send(CMCC, 5)
        return {CMCC: 5}

    await receive_udp(out, first)
    case = out / HANDLE
    # A run killed mid-write: half an envelope and half a pcap record.
    with (case / "cmcc.raw").open("ab") as raw:
        raw.write(b"\xa0\x81\x90\x30\x00")
    with (case / "cmcc.pcap").open("ab") as pcap:
        pcap.write(b"\x00" * 9)

    async def second(server: UdpServer) -> dict:
        sender = server.senders[CMCC]
        for n in range(10):
            data = sender.envelope(cc_record(n), 0.0)
            if n >= 3:  # 3 and 4 again: held already
                await server.sock.sendto(server.sealer.seal(data), server.target)
        return {CMCC: 10}

    receiver = await receive_udp(out, second)
    assert raw_sequences(case / "cmcc.raw") == list(range(10))
    assert [line.split()[0] for line in tcpdump(case / "cmcc.pcap")] == [
        stamp(n) for n in range(10)
    ]
    sha256sum_check(case)
    report = json.loads((case / "gaps.json").read_text())
    assert report["tornTailsCut"] == {"cmcc.raw": 5, "cmcc.pcap": 9}
    cc = report["streams"]["cmCC"]
    assert (cc["resumed"], cc["duplicates"], cc["received"], cc["held"]) == (5, 2, 5, 10)
    assert receiver.state.stream_stats(CMCC).duplicates == 2


def test_unavailable_ranges_of_an_earlier_run_are_not_asked_for_again(tmp_path: Path) -> None:
    case = tmp_path / HANDLE
    case.mkdir(mode=0o700)
    entry = {"unavailable": [{"first": 0, "last": 3, "reason": "past retention"}]}
    (case / "gaps.json").write_text(json.dumps({"streams": {"cmII": entry}}))
    state = ReceiverState(tmp_path)
    state.resume()
    tracker = state.trackers[CMII]
    tracker.add(5)
    assert tracker.retrievable() == [(4, 4)]
    assert tracker.unavailable == [((0, 3), "past retention")]
    assert oct(os.stat(case).st_mode & 0o777) == "0o700"
    assert P.StreamId(HANDLE, P.StreamKind.CMII) in state.trackers


def _raw_envelope(seq: int, content_der: bytes) -> bytes:
    return fast.encode_envelope_raw(CMCC, seq, capture_time(seq), "cmCC", content_der)


def test_sort_replaces_the_pcap_durably(tmp_path: Path, monkeypatch) -> None:
    synced: list[Path] = []
    real = durable.fsync_dir
    monkeypatch.setattr(durable, "fsync_dir", lambda d: (synced.append(Path(d)), real(d)))
    raw = tmp_path / "cmcc.raw"
    raw.write_bytes(b"".join(_raw_envelope(s, cc_record(s).payload) for s in (2, 1)))
    pcap = tmp_path / "cmcc.pcap"
    pcap.write_bytes(b"old")
    digest = sort_pcap(raw, pcap)
    assert tmp_path in synced  # the rename itself survives a power cut
    assert hashlib.sha256(pcap.read_bytes()).hexdigest() == digest
    assert [line.split()[0] for line in tcpdump(pcap)] == [stamp(1), stamp(2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cmcc.pcap",
        "cmcc.pcap.sha256",
        "cmcc.raw",
    ]


def test_sort_failing_half_way_leaves_the_old_pcap_and_no_temporary_file(tmp_path: Path) -> None:
    # The second envelope frames and has a sequence number, but its CC
    # content does not decode: sorting fails after writing the first packet.
    broken = _raw_envelope(2, b"\x30\x02\xa0\x00")
    raw = tmp_path / "cmcc.raw"
    raw.write_bytes(_raw_envelope(1, cc_record(1).payload) + broken)
    pcap = tmp_path / "cmcc.pcap"
    pcap.write_bytes(b"old")
    with pytest.raises(P.PDUError):
        sort_pcap(raw, pcap)
    assert pcap.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmcc.pcap", "cmcc.raw"]
