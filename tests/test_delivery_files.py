"""Capture-to-disk (``agency add --files DIR``): files, hashes, manifest, rotation, restart.

In-process servers (``delivery_support.Site``) fed through the tap core
or built PDUs; tcpdump, tshark and sha256sum read what they wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from delivery_support import TARGET, Site, cc_pdu, fast_config, wait_until
from taplink_support import SAMPLE, START

from mediation import pdu as P
from mediation.evidence.manifest import MANIFEST, ManifestWriter, verify_manifest
from mediation.evidence.pcap import LINKTYPE_RAW, PcapReader, PcapWriter
from mediation.lea import rawfile
from mediation.log.format import ContentKind, LogRecord
from mediation.log.keys import load_or_create_signer, load_public_key, public_key_path
from mediation.server.app import MediationServer
from mediation.server.capture_files import OpenSet, WarrantFiles, part_name
from mediation.server.capture_recover import enter_incomplete
from mediation.server.config import FilesConfig
from mediation.tap.replay import Tap
from mediation.warrants.model import (
    CaseDetails,
    ContentLevel,
    Endpoint,
    Stream,
    Target,
    TargetKind,
)
from mediation.warrants.operations import add_warrant, remove_agency

TSHARK = shutil.which("tshark")
TCPDUMP = shutil.which("tcpdump")
needs_tools = pytest.mark.skipif(not (TSHARK and TCPDUMP), reason="needs tshark and tcpdump")
BOTH = (Stream.CMII, Stream.CMCC)


def files_endpoint(directory: Path, streams: tuple[Stream, ...] = BOTH) -> Endpoint:
    directory.mkdir(mode=0o700, exist_ok=True)
    return Endpoint("files", str(directory), 0, streams)


def config(**files: object) -> object:
    return fast_config().__class__(
        **{**fast_config().__dict__, "files": FilesConfig(**files)}  # type: ignore[arg-type]
    )


def manifest(site: Site, directory: Path) -> list[dict]:
    """The manifest's entries, after checking every line with the server's public key."""
    data = (directory / MANIFEST).read_bytes()
    report = verify_manifest(data, load_public_key(public_key_path(site.data)))
    assert report.ok, report.faults
    return list(report.entries)


def sha256sum_ok(directory: Path) -> int:
    """``sha256sum -c`` over every hash file in ``directory``; how many files it checked."""
    hashes = sorted(p.name for p in directory.glob("*.sha256"))
    done = subprocess.run(
        ["sha256sum", "-c", *hashes], cwd=directory, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return len(hashes)


def files_rows(server: MediationServer) -> list:
    return [r for r in server.delivery_rows() if r.endpoint.transport == "files"]


async def written(server: MediationServer) -> None:
    """Wait until the files endpoint has written everything appended."""
    await wait_until(
        lambda: files_rows(server) and all(r.delivered == r.appended for r in files_rows(server))
    )


def _ranges(entries: list[dict], fmt: str) -> list[tuple[int, int]]:
    return [(e["first_seq"], e["last_seq"]) for e in entries if e["format"] == fmt]


def _contiguous(ranges: list[tuple[int, int]], end: int) -> bool:
    expected = 0
    for first, last in ranges:
        if first != expected:
            return False
        expected = last + 1
    return expected == end


@needs_tools
async def test_sample_capture_lands_in_pcap_jsonl_and_ber_that_tools_read(tmp_path: Path) -> None:
    site = Site(tmp_path)
    out = tmp_path / "capture"
    agency = site.agency("AGENCY-TEST-FILES", files_endpoint(out))
    now = dt.datetime.now(dt.UTC)
    details = CaseDetails("CASE-TEST-0001", (Target(TargetKind.ADDRESS, TARGET),), (), "IAP-TEST")
    with site._registry() as registry:
        warrant = add_warrant(
            registry, agency, details, ContentLevel.FULL, START, now + dt.timedelta(days=1), now
        )
    tap = Tap.for_warrant(warrant)
    sent_cc: list[tuple[bytes, dt.datetime]] = []
    cmii = 0
    async with site.server(config()) as server:
        with PcapReader.open(SAMPLE) as capture:
            for packet in capture:
                for item in tap.process(packet.data, packet.time):
                    receipt = await server.ingest(warrant.handle, item.kind, item.der, item.time)
                    assert receipt is not None
                    if item.kind == "cmCC":
                        apdu = P.decode(item.der)
                        sent_cc.append((apdu.payload, apdu.header.time_stamp))
                    else:
                        cmii += 1
        await written(server)
    directory = out / warrant.handle
    assert directory.stat().st_mode & 0o777 == 0o700
    entries = manifest(site, directory)
    names = sorted(e["file"] for e in entries)
    assert names == [
        "cmcc-00000000000000000000.pcap",
        "cmii-00000000000000000000.ber",
        "cmii-00000000000000000000.jsonl",
    ]
    assert all(e["complete"] for e in entries)
    assert sha256sum_ok(directory) == 3
    assert not list(directory.glob(".*.part"))
    pcap = directory / "cmcc-00000000000000000000.pcap"
    # Exactly the packets the tap sent, with their capture times.
    with PcapReader.open(pcap) as reader:
        assert reader.linktype == LINKTYPE_RAW
        got = [(p.data, p.time) for p in reader]
    assert got == sent_cc and len(got) > 10
    fields = ["-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len"]
    tshark = subprocess.run(
        [TSHARK, "-r", str(pcap), *fields], capture_output=True, text=True, check=True
    )
    rows = [line.split("\t") for line in tshark.stdout.splitlines()]
    assert [int(n) for _t, n in rows] == [len(data) for data, _ in sent_cc]
    assert [round(float(t), 6) for t, _n in rows] == [w.timestamp() for _d, w in sent_cc]
    dump = subprocess.run(
        [TCPDUMP, "-n", "-r", str(pcap)], capture_output=True, text=True, check=True
    )
    assert len(dump.stdout.splitlines()) == len(sent_cc)
    assert "192.0.2.10" in dump.stdout
    # CmII: the same envelopes in BER and as JSON lines (notices included).
    entry = {e["file"]: e for e in entries}["cmii-00000000000000000000.ber"]
    messages, torn = rawfile.scan(directory / entry["file"])
    assert torn == 0 and [m.sequence for m in messages] == list(range(entry["last_seq"] + 1))
    lines = (directory / "cmii-00000000000000000000.jsonl").read_text().splitlines()
    assert [json.loads(line)["sequenceNumber"] for line in lines] == [m.sequence for m in messages]
    assert len(messages) >= cmii  # the tap's CmII PDUs, and the server's notices


async def test_rotation_by_size_closes_contiguous_files(tmp_path: Path) -> None:
    site = Site(tmp_path)
    out = tmp_path / "capture"
    agency = site.agency("AGENCY-TEST-FILES", files_endpoint(out, (Stream.CMCC,)))
    warrant = site.warrant(agency, case_id="CASE-TEST-0001")
    async with site.server(config(rotate_bytes=1024)) as server:
        for n in range(60):
            assert await server.ingest(warrant.handle, "cmCC", cc_pdu(payload=100, n=n))
        await written(server)
    directory = out / warrant.handle
    entries = manifest(site, directory)
    ranges = _ranges(entries, "pcap")
    assert len(ranges) > 3 and _contiguous(ranges, 60)
    sizes = [e["size"] for e in entries]
    assert all(size >= 1024 for size in sizes[:-1]) and all(s < 1024 + 200 for s in sizes)
    assert sha256sum_ok(directory) == len(entries)
    assert not (directory / "cmii-00000000000000000000.jsonl").exists()  # streams: cmcc only


async def test_rotation_by_time_closes_an_idle_file(tmp_path: Path) -> None:
    site = Site(tmp_path)
    out = tmp_path / "capture"
    agency = site.agency("AGENCY-TEST-FILES", files_endpoint(out, (Stream.CMCC,)))
    warrant = site.warrant(agency, case_id="CASE-TEST-0001")
    directory = out / warrant.handle
    async with site.server(config(rotate_seconds=0.3)) as server:
        for n in range(3):
            assert await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n))
        # No more records come: the file is closed by its age alone.
        await wait_until(lambda: (directory / "cmcc-00000000000000000000.pcap").exists())
        assert [(e["first_seq"], e["last_seq"]) for e in manifest(site, directory)] == [(0, 2)]
        assert await server.ingest(warrant.handle, "cmCC", cc_pdu(n=3))
        await wait_until(lambda: (directory / "cmcc-00000000000000000003.pcap").exists())
    assert _ranges(manifest(site, directory), "pcap") == [(0, 2), (3, 3)]


async def test_restart_goes_on_after_the_manifest_and_rebuilds_the_open_file(
    tmp_path: Path,
) -> None:
    site = Site(tmp_path)
    out = tmp_path / "capture"
    agency = site.agency("AGENCY-TEST-FILES", files_endpoint(out))
    warrant = site.warrant(agency, case_id="CASE-TEST-0001")
    directory = out / warrant.handle
    async with site.server(config()) as server:
        for n in range(10):
            assert await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n))
        await written(server)
    first = {e["file"]: e for e in manifest(site, directory)}
    assert first["cmcc-00000000000000000000.pcap"]["last_seq"] == 9
    # What a crash leaves: a half-written open file (no manifest line), and
    # a CmII set whose JSON-lines file has its line but whose BER file has not.
    (directory / part_name("cmcc-00000000000000000010.pcap")).write_bytes(b"\xd4\xc3\xb2")
    async with site.server(config()) as server:
        for n in range(10, 15):
            assert await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n))
        await written(server)
    entries = manifest(site, directory)
    assert _ranges(entries, "pcap") == [(0, 9), (10, 14)]
    assert len({e["file"] for e in entries}) == len(entries)  # never two lines for a file
    assert sha256sum_ok(directory) == len(entries)
    assert not list(directory.glob(".*.part"))
    with PcapReader.open(directory / "cmcc-00000000000000000010.pcap") as reader:
        assert [p.data[1:9] for p in reader] == [n.to_bytes(8, "big") for n in range(10, 15)]


async def test_a_set_cut_between_its_lines_is_finished_once(tmp_path: Path) -> None:
    site = Site(tmp_path)
    out = tmp_path / "capture"
    agency = site.agency("AGENCY-TEST-FILES", files_endpoint(out, (Stream.CMII,)))
    warrant = site.warrant(agency, case_id="CASE-TEST-0001")
    directory = out / warrant.handle
    async with site.server(config()) as server:
        await written(server)
    entries = manifest(site, directory)
    ber = {e["file"]: e for e in entries}["cmii-00000000000000000000.ber"]
    # Undo the BER file's line and name: as if the crash came right after the JSON line.
    lines = (directory / MANIFEST).read_bytes().splitlines(keepends=True)
    kept = [line for line in lines if b'"format":"ber"' not in line]
    (directory / MANIFEST).write_bytes(b"".join(kept))
    os.rename(directory / ber["file"], directory / part_name(ber["file"]))
    (directory / (ber["file"] + ".sha256")).unlink()
    async with site.server(config()) as server:
        await written(server)
    after = manifest(site, directory)
    files = [e["file"] for e in after]
    assert files.count(ber["file"]) == 1 and len(set(files)) == len(files)
    again = {e["file"]: e for e in after}[ber["file"]]
    assert (again["first_seq"], again["sha256"]) == (ber["first_seq"], ber["sha256"])
    assert sha256sum_ok(directory) == len(after)


def test_an_open_file_the_log_lost_is_kept_marked_incomplete(tmp_path: Path) -> None:
    signer = load_or_create_signer(tmp_path / "data")
    files = WarrantFiles(tmp_path / "capture", "w-00abcd", signer)
    part = files.directory / part_name("cmcc-00000000000000000040.pcap")
    when = dt.datetime(2026, 11, 23, 0, 11, tzinfo=dt.UTC)
    with PcapWriter.open(part, linktype=LINKTYPE_RAW) as writer:
        for n in range(3):
            writer.write(b"\x45" + bytes(19 + n), when + dt.timedelta(seconds=n))
    with part.open("ab") as handle:
        handle.write(b"\x01\x02\x03")  # a torn record
    entry = enter_incomplete(files, part)
    assert entry is not None
    assert (entry["first_seq"], entry["last_seq"], entry["complete"]) == (40, 42, False)
    assert entry["first_time"] == "2026-11-23T00:11:00.000000Z"
    assert entry["last_time"] == "2026-11-23T00:11:02.000000Z"
    files.manifest.close()
    report = verify_manifest((files.directory / MANIFEST).read_bytes(), signer.public)
    assert report.ok
    assert sha256sum_ok(files.directory) == 1
    # An empty one holds nothing to keep.
    empty = files.directory / part_name("cmcc-00000000000000000050.pcap")
    empty.write_bytes(b"")
    files = WarrantFiles(tmp_path / "capture", "w-00abcd", signer)
    assert enter_incomplete(files, empty) is None and not empty.exists()
    assert ManifestWriter(files.directory / MANIFEST, signer).files.keys() == {entry["file"]}


@pytest.mark.parametrize("sync_over", [4096, math.inf])
def test_an_open_set_is_synced_as_it_grows_past_the_threshold(
    tmp_path: Path, sync_over: float
) -> None:
    # The server writes a set's files from the log a batch at a time and
    # flushes after each: past the threshold that flush fsyncs too, so the
    # 64 MiB of a set reach the disk as they come, not in one burst at its
    # close (which held up the log's own syncs on the same disk).
    directory = tmp_path / "capture" / "w-00abcd"
    directory.mkdir(parents=True)
    sid = P.StreamId("w-00abcd", P.StreamKind.CMCC)
    files = OpenSet(directory, sid, 0)
    for n in range(40):
        when = 1_790_000_000_000_000 + n
        der = cc_pdu(n=n, payload=200)
        files.write(LogRecord(n, when, ContentKind.CMCC, P.ClockStatus.SYNCHRONISED, der))
    hashed = files.files[0].hashed
    assert hashed.size > 40 * 200 and hashed.unsynced == hashed.size  # nothing synced yet
    files.flush(sync_over)
    part = directory / part_name("cmcc-00000000000000000000.pcap")
    assert part.stat().st_size == hashed.size  # handed to the kernel either way
    assert hashed.unsynced == (0 if sync_over == 4096 else hashed.size)
    files.abandon()


async def test_a_removed_endpoint_closes_its_open_files(tmp_path: Path) -> None:
    site = Site(tmp_path)
    out = tmp_path / "capture"
    udp = Endpoint("udp", "127.0.0.1", 9, (Stream.CMII,))
    agency = site.agency("AGENCY-TEST-FILES", udp, files_endpoint(out, (Stream.CMCC,)))
    warrant = site.warrant(agency, case_id="CASE-TEST-0001")
    directory = out / warrant.handle
    async with site.server(config()) as server:
        for n in range(4):
            assert await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n))
        await written(server)
        assert not (directory / "cmcc-00000000000000000000.pcap").exists()  # still open
        with site._registry() as registry:
            remove_agency(registry, agency, (str(out), 0), dt.datetime.now(dt.UTC))
        await server.reload()
        await wait_until(lambda: (directory / "cmcc-00000000000000000000.pcap").exists())
        assert not files_rows(server)
    assert _ranges(manifest(site, directory), "pcap") == [(0, 3)]
    assert sha256sum_ok(directory) == 1


async def test_a_full_disk_is_an_error_state_and_writing_resumes_when_space_returns(
    tmp_path: Path,
) -> None:
    from tmpfs_support import mount, small_tmpfs

    site = Site(tmp_path)
    with small_tmpfs(tmp_path, "64k") as disk:
        out = disk / "capture"
        agency = site.agency("AGENCY-TEST-FILES", files_endpoint(out, (Stream.CMCC,)))
        warrant = site.warrant(agency, case_id="CASE-TEST-0001")
        directory = out / warrant.handle
        async with site.server(config(rotate_bytes=8192)) as server:
            for n in range(120):  # about 120 KiB of pcap: twice the disk
                assert await server.ingest(warrant.handle, "cmCC", cc_pdu(payload=1000, n=n))
            await wait_until(lambda: files_rows(server)[0].state == "error")
            row = files_rows(server)[0]
            assert row.last_error == "No space left on device"
            assert row.acknowledged < 120
            assert mount("-o", "remount,size=4m", str(disk)).returncode == 0
            await wait_until(lambda: files_rows(server)[0].delivered == 120, seconds=90)
            assert files_rows(server)[0].state == "writing"
        entries = manifest(site, directory)
        assert _contiguous(_ranges(entries, "pcap"), 120)
        assert sha256sum_ok(directory) == len(entries)
        assert not list(directory.glob(".*.part"))


async def test_a_record_a_format_cannot_hold_marks_that_file_incomplete(tmp_path: Path) -> None:
    site = Site(tmp_path)
    out = tmp_path / "capture"
    agency = site.agency("AGENCY-TEST-FILES", files_endpoint(out, (Stream.CMCC,)))
    warrant = site.warrant(agency, case_id="CASE-TEST-0001")
    apdu = P.decode(cc_pdu(n=1))
    not_ip = P.encode(P.CCApdu(payload=b"\x00" * 30, header=apdu.header))
    async with site.server(config()) as server:
        for der in (cc_pdu(n=0), not_ip, cc_pdu(n=2)):
            assert await server.ingest(warrant.handle, "cmCC", der)
        await written(server)
    directory = out / warrant.handle
    [entry] = manifest(site, directory)
    assert (entry["first_seq"], entry["last_seq"], entry["complete"]) == (0, 2, False)
    with PcapReader.open(directory / entry["file"]) as reader:
        assert len(list(reader)) == 2
    # An edited capture file fails its hash file.
    path = directory / entry["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    check = subprocess.run(
        ["sha256sum", "-c", entry["file"] + ".sha256"], cwd=directory, capture_output=True
    )
    assert check.returncode != 0 and b"FAILED" in check.stdout
