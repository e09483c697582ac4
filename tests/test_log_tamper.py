"""Tampering with a stored stream is found, and named by its first bad sequence number."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from log_support import KEY, OTHER_KEY, OTHER_REGISTRY_KEY, key_file

from mediation import pdu as P
from mediation.log import (
    ContentKind,
    EvidenceLog,
    LogConfig,
    LogKey,
    StreamReport,
    WrongLogKey,
    load_public_key,
    verify_path,
    verify_stream,
)
from mediation.log import format as F
from mediation.log.keys import public_key_path
from mediation.log.segments import list_segments

HANDLE = "w-7a1b2c"
RECORDS = 300
# 50 records per checkpoint; four segments of 4 KiB.
CONFIG = LogConfig(segment_bytes=4096, checkpoint_records=50, checkpoint_interval=3600)


def payload(seq: int) -> bytes:
    return b"%06d" % seq * (1 + seq % 7)


@pytest.fixture(scope="module", params=["encrypted", "unencrypted"])
def reference(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A cleanly closed data directory with one CmII stream of 300 records.

    Every test runs on both formats: encrypted (version 2, what the server
    writes) and unencrypted (version 1, what older servers wrote).
    """
    data = tmp_path_factory.mktemp(request.param)
    key = KEY if request.param == "encrypted" else None

    async def build() -> None:
        async with EvidenceLog.open(data, CONFIG, key=key) as log:
            stream = await log.stream(HANDLE, P.StreamKind.CMII)
            for seq in range(RECORDS):
                await stream.append(payload(seq), ContentKind.CMII, P.ClockStatus.SYNCHRONISED)

    trio.run(build)
    return data


@pytest.fixture
def data(reference: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(reference, copy)
    return copy


def stream_dir(data: Path) -> Path:
    return data / "log" / HANDLE / "cmii"


def frames(path: Path) -> list[tuple[int, int, int, int]]:
    """(offset, total length, type, sequence or covered sequence) of every frame."""
    data, out = path.read_bytes(), []
    offset = F.decode_header(data).size
    while offset < len(data):
        length = struct.unpack_from(">I", data, offset)[0]
        kind, seq = struct.unpack_from(">BQ", data, offset + 8)
        out.append((offset, 8 + length, kind, seq))
        offset += 8 + length
    return out


def encrypted(data: Path) -> bool:
    _, path = list_segments(stream_dir(data))[0]
    return F.decode_header(path.read_bytes()).encrypted


def locate(data: Path, seq: int) -> tuple[Path, int, int]:
    """The segment, offset and frame length of data record ``seq``."""
    for _, path in list_segments(stream_dir(data)):
        for offset, length, kind, found in frames(path):
            if kind == F.TYPE_DATA and found == seq:
                return path, offset, length
    raise LookupError(seq)


def verify(data: Path, key: LogKey | None = KEY) -> StreamReport:
    return verify_stream(stream_dir(data), load_public_key(public_key_path(data)), key=key)


def splice(path: Path, start: int, stop: int, insert: bytes = b"") -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[:start] + insert + raw[stop:])


def test_the_untouched_log_verifies(data: Path) -> None:
    report = verify(data)
    assert report.complete, report.line()
    assert (report.records, report.first_seq, report.last_seq) == (RECORDS, 0, RECORDS - 1)
    assert report.checkpoints == 6 and report.unsigned == 0
    assert len(list_segments(stream_dir(data))) >= 4


def test_without_the_key_the_structure_is_checked_and_the_report_says_the_chain_is_not(
    data: Path,
) -> None:
    report = verify(data, key=None)
    assert report.ok and report.records == RECORDS and report.checkpoints == 6
    if encrypted(data):
        assert not report.complete and "no log key" in (report.chain_unchecked or "")
        assert "hash chain NOT checked" in report.line()
    else:
        assert report.complete and report.line().endswith(", ok")


def test_the_wrong_key_is_refused_clearly(data: Path) -> None:
    if not encrypted(data):
        assert verify(data, key=OTHER_KEY).complete  # nothing to decrypt: the key is unused
        return
    with pytest.raises(WrongLogKey, match="written with another log key"):
        verify(data, key=OTHER_KEY)


def test_a_flipped_bit_is_named(data: Path) -> None:
    path, offset, length = locate(data, 123)
    raw = bytearray(path.read_bytes())
    raw[offset + length - 3] ^= 0x04
    path.write_bytes(bytes(raw))
    report = verify(data)
    assert report.fault is not None and report.fault.seq == 123
    assert "checksum mismatch" in report.fault.reason


def test_a_changed_record_with_a_forged_checksum_fails_the_chain(data: Path) -> None:
    path, offset, length = locate(data, 123)
    raw = bytearray(path.read_bytes())
    raw[offset + length - 1] ^= 0x01
    body = bytes(raw[offset + 8 : offset + length])
    raw[offset + 4 : offset + 8] = struct.pack(">I", zlib.crc32(body))
    path.write_bytes(bytes(raw))
    report = verify(data)
    if encrypted(data):
        # The record's AES-GCM tag fails: the record itself is named.
        assert report.fault is not None and report.fault.seq == 123, report.line()
        assert "does not decrypt" in report.fault.reason
        # Without the key only the checkpoints could tell, and they are not comparable.
        assert verify(data, key=None).fault is None
    else:
        # The checkpoint for 149 no longer matches; 100..149 is what it vouched for.
        assert report.fault is not None and report.fault.seq == 100
        assert "100..149 was altered" in report.fault.reason


@pytest.mark.parametrize("reference", ["encrypted"], indirect=True)
def test_a_flipped_ciphertext_bit_with_a_forged_checksum_is_named(data: Path) -> None:
    assert encrypted(data)
    path, offset, length = locate(data, 77)
    raw = bytearray(path.read_bytes())
    raw[offset + 8 + 9 + 5] ^= 0x20  # inside the ciphertext, not the tag
    body = bytes(raw[offset + 8 : offset + length])
    raw[offset + 4 : offset + 8] = struct.pack(">I", zlib.crc32(body))
    path.write_bytes(bytes(raw))
    report = verify(data)
    assert report.fault is not None and report.fault.seq == 77
    assert "does not decrypt" in report.fault.reason


@pytest.mark.parametrize("reference", ["encrypted"], indirect=True)
def test_a_record_moved_to_another_sequence_number_does_not_decrypt(data: Path) -> None:
    assert encrypted(data)
    path, offset, length = locate(data, 60)
    _, next_offset, next_length = locate(data, 61)
    raw = path.read_bytes()
    # Record 61's ciphertext under record 60's clear type and sequence number.
    body = raw[offset + 8 : offset + 8 + 9] + raw[next_offset + 8 + 9 : next_offset + next_length]
    frame = struct.pack(">II", len(body), zlib.crc32(body)) + body
    splice(path, offset, offset + length, frame)
    report = verify(data)
    assert report.fault is not None and report.fault.seq == 60, report.line()
    assert "does not decrypt" in report.fault.reason


def test_a_deleted_record_is_named(data: Path) -> None:
    path, offset, length = locate(data, 57)
    splice(path, offset, offset + length)
    report = verify(data)
    assert report.fault is not None and report.fault.seq == 57
    assert "missing" in report.fault.reason


def test_a_duplicated_record_is_named(data: Path) -> None:
    path, offset, length = locate(data, 57)
    copy = path.read_bytes()[offset : offset + length]
    splice(path, offset + length, offset + length, copy)
    report = verify(data)
    assert report.fault is not None and report.fault.seq == 58
    assert "found record 57 again" in report.fault.reason


def test_swapped_records_are_named(data: Path) -> None:
    path, a, a_len = locate(data, 57)
    _, b, b_len = locate(data, 58)
    assert b == a + a_len, "57 and 58 are adjacent in one segment"
    raw = path.read_bytes()
    splice(path, a, b + b_len, raw[b : b + b_len] + raw[a : a + a_len])
    report = verify(data)
    assert report.fault is not None and report.fault.seq == 57


def test_a_truncated_record_is_named(data: Path) -> None:
    path, offset, length = locate(data, 200)
    splice(path, offset + length // 2, path.stat().st_size)
    report = verify(data)
    assert report.fault is not None and report.fault.seq == 200
    assert "cut short" in report.fault.reason


def test_a_deleted_segment_is_named(data: Path) -> None:
    segments = list_segments(stream_dir(data))
    first, path = segments[1]
    path.unlink()
    report = verify(data)
    assert report.fault is not None and report.fault.seq == first
    assert "missing" in report.fault.reason


def test_a_forged_signature_or_another_key_is_named(data: Path, tmp_path: Path) -> None:
    path = next(
        p
        for _, p in list_segments(stream_dir(data))
        if any(kind == F.TYPE_CHECKPOINT for _, _, kind, _ in frames(p))
    )
    offset, length, _, covered = next(f for f in frames(path) if f[2] == F.TYPE_CHECKPOINT)
    raw = bytearray(path.read_bytes())
    raw[offset + length - 1] ^= 0x80  # last byte of the signature
    body = bytes(raw[offset + 8 : offset + length])
    raw[offset + 4 : offset + 8] = struct.pack(">I", zlib.crc32(body))
    path.write_bytes(bytes(raw))
    report = verify(data)
    assert report.fault is not None and report.fault.seq == covered - 49
    assert "signature" in report.fault.reason
    stranger = Ed25519PrivateKey.generate().public_key()
    other = verify_stream(stream_dir(data), stranger, key=KEY)
    assert other.fault is not None and "another key" in other.fault.reason


async def test_retention_removal_is_lawful_and_its_journal_is_checked(data: Path) -> None:
    end = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    async with EvidenceLog.open(data, CONFIG, key=KEY) as log:
        assert await log.apply_retention(HANDLE, end, end.replace(year=2031)) == []
        [result] = await log.apply_retention(
            HANDLE, end.replace(year=2031, day=2), end.replace(year=2031)
        )
    assert (result.first, result.last, result.records) == (0, RECORDS - 1, RECORDS)
    assert list_segments(stream_dir(data)) == []
    report = verify(data)
    assert report.ok and report.removed == RECORDS and report.records == 0
    assert f"0..{RECORDS - 1} removed by retention" in report.line()
    # The sequence continues: numbers are never reused.
    async with EvidenceLog.open(data, CONFIG, key=KEY) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMII)
        assert stream.next_seq == RECORDS
        await (await stream.append(b"after", ContentKind.CMII)).durable()
    assert verify(data).ok
    journal = stream_dir(data) / "retention.jsonl"
    lines = journal.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["last"] += 1  # claim one more record was removed
    lines[2] = json.dumps(entry)
    journal.write_text("\n".join(lines) + "\n")
    report = verify(data)
    assert report.fault is not None and "retention journal entry 3" in report.fault.reason


def test_mediate_log_verify_prints_one_line_per_stream_and_fails_on_a_fault(
    data: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIATION_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # no default key file either

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mediation.cli.main", "log", "verify", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)

    keyed = str(key_file(tmp_path))
    ok = run(str(data), "--key-file", keyed)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{HANDLE}/cmii: {RECORDS} records 0..{RECORDS - 1}, ")
    assert ok.stdout.rstrip().endswith("6 checkpoints, ok")
    bare = run(str(data))
    wrong = run(str(data), "--key-file", str(key_file(tmp_path / "other", OTHER_REGISTRY_KEY)))
    if encrypted(data):
        assert bare.returncode == 3, bare.stderr
        assert "6 checkpoints, no fault found, hash chain NOT checked" in bare.stdout
        assert "--key-file" in bare.stderr
        assert wrong.returncode == 2
        assert wrong.stderr.startswith("mediate: error: --key-file: ")
        assert "another log key" in wrong.stderr and wrong.stderr.count("\n") == 1
    else:
        assert bare.returncode == 0 and wrong.returncode == 0
    path, offset, _ = locate(data, 250)
    raw = bytearray(path.read_bytes())
    raw[offset + 20] ^= 0xFF
    path.write_bytes(bytes(raw))
    bad = run(
        str(stream_dir(data)), "--public-key", str(public_key_path(data)), "--key-file", keyed
    )
    assert bad.returncode == 1
    assert "FAULT at sequence 250: checksum mismatch" in bad.stdout
    missing = run(str(data), "--public-key", str(data / "nope.pub"))
    assert missing.returncode == 2
    assert missing.stderr.startswith("mediate: error: --public-key: ")


def test_a_whole_data_directory_is_walked(data: Path) -> None:
    reports = verify_path(data, load_public_key(public_key_path(data)), KEY)
    assert [r.stream for r in reports] == [f"{HANDLE}/cmii"]
