"""The evidence log's on-disk format, re-derived from its documentation.

An independent verifier must be able to rebuild every value from
docs/evidence-log.md alone: these tests compute them with hashlib, struct
and zlib directly and compare with what the log writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from log_support import KEY

from mediation import pdu as P
from mediation.log import ContentKind, EvidenceLog, LogConfig, LogKey, load_public_key
from mediation.log import format as F
from mediation.log.keys import key_id, public_key_path, raw_public, verify_signature
from mediation.log.segments import list_segments

STREAM = P.StreamId("w-3f9a1c", P.StreamKind.CMII)
T0 = dt.datetime(2026, 11, 23, 0, 11, 0, 500000, tzinfo=dt.UTC)
RAW_KEY = hashlib.sha256(b"mediation format test log key").digest()


def test_genesis_and_chain_are_as_documented() -> None:
    expected = hashlib.sha256(b"mediation-log-genesis-v1\x00" + b"\x08w-3f9a1c" + b"\x00").digest()
    assert F.genesis(STREAM) == expected
    body = struct.pack(">BQqBB", 1, 0, F.to_us(T0), 0, 0) + b"payload"
    assert F.chain_next(expected, body) == hashlib.sha256(expected + body).digest()


def test_header_round_trip_and_damage() -> None:
    prev = bytes(range(32))
    header = F.encode_header(STREAM, 4096, prev)
    assert len(header) == F.HEADER_V1_SIZE == 88
    assert header[:8] == b"MLOGSEG1"
    assert F.decode_header(header) == F.SegmentHeader(STREAM, 4096, prev)
    assert F.decode_header(header).size == 88
    damaged = bytearray(header)
    damaged[50] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        F.decode_header(bytes(damaged))
    with pytest.raises(ValueError, match="magic"):
        F.decode_header(b"X" * 88)
    with pytest.raises(ValueError, match="88"):
        F.decode_header(header[:40])


def test_frame_errors_say_torn_or_damaged() -> None:
    record = F.LogRecord(7, F.to_us(T0), ContentKind.NOTICE, P.ClockStatus.UNSYNCHRONISED, b"abc")
    frame = F.encode_data(record)
    length, crc = struct.unpack(">II", frame[:8])
    assert length == 19 + 3 and crc == zlib.crc32(frame[8:])
    body, end = F.read_frame(frame, 0)
    assert end == len(frame) and F.decode_data(body) == record
    with pytest.raises(F.FrameError) as cut:
        F.read_frame(frame[:-1], 0)
    assert cut.value.torn
    flipped = bytearray(frame)
    flipped[-1] ^= 0x10
    with pytest.raises(F.FrameError) as bad:
        F.read_frame(bytes(flipped), 0)
    assert not bad.value.torn and "checksum" in bad.value.reason


@pytest.mark.parametrize("handle", ["", "../x", "a" * 33, "w/1", ".hidden", "w 1"])
def test_unsafe_handles_are_refused(handle: str) -> None:
    with pytest.raises(ValueError, match="handle"):
        F.check_handle(handle)


def test_times_are_microseconds_since_the_epoch() -> None:
    assert F.to_us(F.EPOCH) == 0
    assert F.from_us(F.to_us(T0)) == T0
    with pytest.raises(ValueError):
        F.to_us(T0.replace(tzinfo=None))


def test_encrypted_header_round_trip_and_damage() -> None:
    prev, salt, check = bytes(range(32)), bytes(range(100, 132)), bytes(range(200, 216))
    header = F.encode_header(STREAM, 4096, prev, salt, check)
    assert len(header) == F.HEADER_V2_SIZE == 136
    assert header[8:10] == b"\x00\x02" and header[84:116] == salt and header[116:132] == check
    assert struct.unpack(">I", header[132:]) == (zlib.crc32(header[:132]),)
    decoded = F.decode_header(header + b"frames follow")
    assert decoded == F.SegmentHeader(STREAM, 4096, prev, 2, salt, check)
    assert decoded.encrypted and decoded.size == 136
    damaged = bytearray(header)
    damaged[100] ^= 1  # the salt is covered by the CRC
    with pytest.raises(ValueError, match="checksum"):
        F.decode_header(bytes(damaged))
    with pytest.raises(ValueError, match="136"):
        F.decode_header(header[:100])
    unknown = bytearray(header)
    unknown[9] = 3
    with pytest.raises(ValueError, match="version 3"):
        F.decode_header(bytes(unknown))


def _open_documented(data: bytes, body: bytes) -> bytes:
    """Decrypt a version 2 data record body from docs/evidence-log.md alone."""
    salt, stream = data[84:116], b"\x08w-3f9a1c\x00"
    check = HKDF(hashes.SHA256(), 16, salt, b"mediation-log-key-check-v2\x00" + stream)
    assert check.derive(RAW_KEY) == data[116:132]
    kdf = HKDF(hashes.SHA256(), 32, salt, b"mediation-log-segment-v2\x00" + stream)
    aead = AESGCM(kdf.derive(RAW_KEY))
    return body[:9] + aead.decrypt(bytes(4) + body[1:9], body[9:], body[:9])


@pytest.mark.parametrize("encrypted", [True, False], ids=["version-2", "version-1"])
async def test_written_records_and_checkpoints_match_the_documented_layout(
    tmp_path: Path, encrypted: bool
) -> None:
    config = LogConfig(checkpoint_records=3)
    key = LogKey(RAW_KEY) if encrypted else None
    async with EvidenceLog.open(tmp_path, config, key=key) as log:
        stream = await log.stream("w-3f9a1c", P.StreamKind.CMII)
        for i in range(3):
            await stream.append(b"pdu-%d" % i, ContentKind.CMII, P.ClockStatus.SYNCHRONISED, T0)
        last = await stream.append(b"notice", ContentKind.NOTICE, P.ClockStatus.UNKNOWN, T0)
        await last.durable()
    public = load_public_key(public_key_path(tmp_path))
    [(first, path)] = list_segments(tmp_path / "log" / "w-3f9a1c" / "cmii")
    data = path.read_bytes()
    assert first == 0 and path.name == "00000000000000000000.seg"
    assert data[44:52] == bytes(8) and data[52:84] == F.genesis(STREAM)
    assert data[8:10] == (b"\x00\x02" if encrypted else b"\x00\x01")
    offset = 136 if encrypted else 88
    assert struct.unpack(">I", data[offset - 4 : offset]) == (zlib.crc32(data[: offset - 4]),)
    chain, seen = F.genesis(STREAM), []
    while offset < len(data):
        length, crc = struct.unpack_from(">II", data, offset)
        body = data[offset + 8 : offset + 8 + length]
        assert zlib.crc32(body) == crc  # over the body as stored: the ciphertext
        if body[0] == 1 and encrypted:
            assert b"pdu-" not in body and b"notice" not in body
            body = _open_documented(data, body)
        if body[0] == 1:
            seq, received, kind, clock = struct.unpack_from(">QqBB", body, 1)
            assert received == F.to_us(T0)
            seen.append((seq, kind, clock, body[19:]))
            chain = hashlib.sha256(chain + body).digest()
        else:
            assert body[0] == 2 and length == 145
            last_seq, when = struct.unpack_from(">Qq", body, 1)
            assert body[17:49] == chain and body[49:81] == key_id(public)
            message = (
                b"mediation-log-checkpoint-v1\x00\x08w-3f9a1c\x00"
                + struct.pack(">Qq", last_seq, when)
                + chain
            )
            public.verify(body[81:145], message)  # raises if the signature is wrong
            seen.append(("checkpoint", last_seq))
        offset += 8 + length
    assert seen == [
        (0, 0, 0, b"pdu-0"),
        (1, 0, 0, b"pdu-1"),
        (2, 0, 0, b"pdu-2"),
        ("checkpoint", 2),
        (3, 2, 2, b"notice"),
        ("checkpoint", 3),  # written at close: nothing is left unsigned
    ]


async def test_checkpoint_travels_as_a_chain_checkpoint_pdu(tmp_path: Path) -> None:
    async with EvidenceLog.open(tmp_path, LogConfig(checkpoint_records=2), key=KEY) as log:
        stream = await log.stream("w-3f9a1c", P.StreamKind.CMCC)
        for _ in range(2):
            appended = await stream.append(b"cc", ContentKind.CMCC)
        await appended.durable()
        checkpoint = stream.latest_checkpoint
        assert checkpoint is not None
        pdu = checkpoint.to_pdu()
        public = log.signer.public
    decoded = P.decode(P.encode(pdu))
    assert decoded == pdu
    assert decoded.stream == P.StreamId("w-3f9a1c", P.StreamKind.CMCC)
    assert decoded.last_sequence == 1
    assert decoded.key_id == hashlib.sha256(raw_public(public)).digest()
    # An agency rebuilds the signed message from the PDU's fields alone.
    message = F.checkpoint_message(
        decoded.stream, decoded.last_sequence, F.to_us(decoded.checkpoint_time), decoded.chain_hash
    )
    assert verify_signature(public, decoded.signature, message)


async def test_signing_key_is_private_and_published(tmp_path: Path) -> None:
    async with EvidenceLog.open(tmp_path, key=KEY) as log:
        first_id = log.signer.key_id
    key = tmp_path / "keys" / "log-signing.ed25519"
    assert key.stat().st_mode & 0o777 == 0o600
    assert public_key_path(tmp_path).read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    async with EvidenceLog.open(tmp_path, key=KEY) as log:
        assert log.signer.key_id == first_id  # reused, not replaced
    assert key_id(load_public_key(public_key_path(tmp_path))) == first_id
