"""The evidence log encrypted at rest: nothing in clear, keys and nonces never reused."""

from __future__ import annotations

from pathlib import Path

import pytest
from log_support import KEY, OTHER_KEY

from mediation import pdu as P
from mediation.log import (
    ContentKind,
    EvidenceLog,
    LogConfig,
    LogCorrupted,
    LogError,
    LogKey,
    load_public_key,
    verify_stream,
)
from mediation.log import format as F
from mediation.log.crypto import SegmentCipher
from mediation.log.keys import public_key_path
from mediation.log.recovery import QUARANTINE
from mediation.log.segments import list_segments, load_index

HANDLE = "w-5e9c01"
SECRET = b"CASE-TEST-0001 target 02:00:5e:00:53:42 iap IAP-TEST-1"
CONFIG = LogConfig(segment_bytes=4096, ring_bytes=4096, index_interval=4)


def payload(seq: int) -> bytes:
    return SECRET + b" record %d" % seq


def stream_dir(data: Path) -> Path:
    return data / "log" / HANDLE / "cmcc"


def headers(data: Path) -> list[F.SegmentHeader]:
    return [F.decode_header(path.read_bytes()) for _, path in list_segments(stream_dir(data))]


def verify(data: Path, key: LogKey | None = KEY) -> str:
    report = verify_stream(stream_dir(data), load_public_key(public_key_path(data)), key=key)
    assert report.complete, report.line()
    return report.line()


async def append(data: Path, seqs: range, key: LogKey | None = KEY) -> None:
    async with EvidenceLog.open(data, CONFIG, key=key) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        assert stream.next_seq == seqs.start
        for seq in seqs:
            await stream.append(payload(seq), ContentKind.CMCC)
        await stream.wait_durable(seqs.stop - 1)


async def refused(data: Path, key: LogKey | None) -> LogError:
    """Why the stream does not open with ``key``."""
    async with EvidenceLog.open(data, CONFIG, key=key) as log:
        with pytest.raises(LogError) as caught:
            await log.stream(HANDLE, P.StreamKind.CMCC)
    return caught.value


async def read_all(data: Path, count: int, key: LogKey | None = KEY) -> list[bytes]:
    """Every record's payload, read back through a cursor from the segments."""
    async with EvidenceLog.open(data, CONFIG, key=key) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        cursor, records = stream.cursor(0), []
        while len(records) < count:
            records.extend(await cursor.read(64))
        return [r.payload for r in records]


async def test_no_plaintext_on_disk_and_the_records_read_back(tmp_path: Path) -> None:
    await append(tmp_path, range(100))
    assert all(h.encrypted for h in headers(tmp_path)) and len(headers(tmp_path)) > 2
    for path in stream_dir(tmp_path).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"CASE-TEST" not in data and b"02:00:5e" not in data, path.name
            assert b"IAP-TEST" not in data and b"record 1" not in data, path.name
    assert await read_all(tmp_path, 100) == [payload(seq) for seq in range(100)]
    assert "100 records 0..99" in verify(tmp_path)


async def test_recent_records_come_from_memory_without_decrypting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: SegmentCipher, stored: bytes) -> bytes:
        raise AssertionError("real-time delivery decrypted a record")

    monkeypatch.setattr(SegmentCipher, "open", refuse)
    async with EvidenceLog.open(tmp_path, CONFIG, key=KEY) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        for seq in range(5):
            last = await stream.append(payload(seq), ContentKind.CMCC)
        await last.durable()
        records = await stream.cursor(0).read(10)
    assert [r.payload for r in records] == [payload(seq) for seq in range(5)]


async def test_each_opening_writes_a_new_segment_under_a_new_salt(tmp_path: Path) -> None:
    await append(tmp_path, range(3))
    await append(tmp_path, range(3, 6))
    await append(tmp_path, range(6, 9))
    found = headers(tmp_path)
    assert [h.first_seq for h in found] == [0, 3, 6]
    assert len({h.salt for h in found}) == 3
    verify(tmp_path)


async def test_a_sequence_number_reused_after_a_torn_tail_is_under_a_new_key(
    tmp_path: Path,
) -> None:
    await append(tmp_path, range(10))
    [(_, path)] = list_segments(stream_dir(tmp_path))
    raw = path.read_bytes()
    header = F.decode_header(raw)
    offset = header.size
    for _ in range(9):  # to the start of record 9's frame
        offset = F.read_frame(raw, offset)[1]
    cut = offset + 20
    path.write_bytes(raw[:cut])  # record 9 torn: as a crash during its write leaves it
    async with EvidenceLog.open(tmp_path, CONFIG, key=KEY) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        assert stream.next_seq == 9 and len(stream.stats.torn) == 1
        await (await stream.append(b"another record 9", ContentKind.CMCC)).durable()
    # The torn record's ciphertext (nonce 9 under the old key) is in quarantine;
    # the new record 9 is in a new segment under a new salt, the old one untouched.
    assert path.stat().st_size == offset
    [torn] = (stream_dir(tmp_path) / QUARANTINE).iterdir()
    assert torn.read_bytes() == raw[offset:cut]
    old, new = headers(tmp_path)
    assert new.first_seq == 9 and new.salt != old.salt
    assert (await read_all(tmp_path, 10))[9] == b"another record 9"
    verify(tmp_path)


async def test_a_segment_without_records_gets_a_new_salt_before_it_is_appended_to(
    tmp_path: Path,
) -> None:
    await append(tmp_path, range(3))
    [(_, path)] = list_segments(stream_dir(tmp_path))
    raw = path.read_bytes()
    path.write_bytes(raw[: -(F.FRAME_SIZE + F.CHECKPOINT.size)])  # unsigned tail, as a crash
    # Reopening signs the tail at once, in a new segment holding only that checkpoint.
    await append(tmp_path, range(3, 3))
    first, second = headers(tmp_path)
    assert second.first_seq == 3
    second_path = list_segments(stream_dir(tmp_path))[1][1]
    frames = second_path.read_bytes()[second.size :]
    # Reopened again: that segment has no record, so it is kept, under a new salt.
    await append(tmp_path, range(3, 5))
    again = headers(tmp_path)
    assert [h.first_seq for h in again] == [0, 3]
    assert again[1].salt not in (first.salt, second.salt)
    assert second_path.read_bytes()[again[1].size :].startswith(frames)  # checkpoint kept
    assert await read_all(tmp_path, 5) == [payload(seq) for seq in range(5)]
    verify(tmp_path)


async def test_an_unencrypted_log_is_read_and_continued_encrypted(tmp_path: Path) -> None:
    await append(tmp_path, range(20), key=None)
    assert not any(h.encrypted for h in headers(tmp_path))
    assert SECRET in b"".join(p.read_bytes() for _, p in list_segments(stream_dir(tmp_path)))
    verify(tmp_path, key=None)  # version 1: everything checked without a key
    await append(tmp_path, range(20, 30))
    versions = [h.version for h in headers(tmp_path)]
    assert versions[0] == 1 and versions[-1] == 2
    assert await read_all(tmp_path, 30) == [payload(seq) for seq in range(30)]
    assert "30 records 0..29" in verify(tmp_path)


async def test_opening_with_the_wrong_key_or_none_is_refused_clearly(tmp_path: Path) -> None:
    await append(tmp_path, range(3))
    wrong = str(await refused(tmp_path, OTHER_KEY))
    assert wrong.startswith(f"{HANDLE}/cmcc: 00000000000000000000.seg: written with another")
    assert "give the registry key of the server that wrote it" in wrong
    missing = str(await refused(tmp_path, None))
    assert missing == f"{HANDLE}/cmcc: 00000000000000000000.seg is encrypted: give the log key"
    verify(tmp_path)  # refused before anything was written


async def test_a_record_that_does_not_decrypt_stops_recovery_instead_of_being_cut(
    tmp_path: Path,
) -> None:
    await append(tmp_path, range(3))
    [(_, path)] = list_segments(stream_dir(tmp_path))
    raw = bytearray(path.read_bytes())
    offset = F.decode_header(raw).size
    body, _stop = F.read_frame(raw, offset)
    raw[offset + F.FRAME_SIZE + 12] ^= 1  # record 0's ciphertext, with a forged CRC
    body = bytes(raw[offset + F.FRAME_SIZE : offset + F.FRAME_SIZE + len(body)])
    raw[offset + 4 : offset + 8] = F.zlib.crc32(body).to_bytes(4, "big")
    path.write_bytes(bytes(raw))
    error = await refused(tmp_path, KEY)
    assert isinstance(error, LogCorrupted) and "sequence 0 does not decrypt" in str(error)
    assert path.read_bytes() == bytes(raw) and not (stream_dir(tmp_path) / QUARANTINE).exists()


def test_the_log_key_is_never_shown_and_must_be_32_bytes() -> None:
    assert repr(KEY) == "LogKey(<hidden>)"
    with pytest.raises(ValueError, match="32 bytes"):
        LogKey(b"short")


async def test_a_cursor_starting_inside_an_encrypted_segment_reads_from_the_index(
    tmp_path: Path,
) -> None:
    """The sparse index's offsets are frame boundaries in the encrypted format too.

    Regression: the writer counted an encrypted record as 9 + 16 octets
    beyond its payload instead of the whole metadata plus the tag, so every
    index entry after a segment's first record pointed inside a frame and a
    cursor starting there (a resume, a retrieval) read a "bad frame".
    """
    await append(tmp_path, range(100))
    for _, path in list_segments(stream_dir(tmp_path)):
        index = path.with_name(path.name[:20] + F.INDEX_SUFFIX)
        data = path.read_bytes()
        for seq, offset in load_index(index) or []:
            length, _crc = F.FRAME.unpack_from(data, offset)
            body = data[offset + F.FRAME_SIZE : offset + F.FRAME_SIZE + length]
            assert F.body_seq(memoryview(body)) == seq, (path.name, seq, offset)
    async with EvidenceLog.open(tmp_path, CONFIG, key=KEY) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        for start in range(0, 100, 7):
            records = await stream.cursor(start).read(3)
            expected = [payload(s) for s in range(start, min(start + 3, 100))]
            assert [r.payload for r in records] == expected
