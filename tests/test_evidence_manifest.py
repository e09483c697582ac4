"""The signed manifest of capture files: lines, chain, signatures, the writer."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mediation.evidence.manifest import (
    ManifestError,
    ManifestWriter,
    canonical,
    line_digest,
    verify_manifest,
)
from mediation.log.keys import LogSigner


def _fields(n: int) -> dict[str, object]:
    return {
        "file": f"cmcc-{n * 10:020d}.pcap",
        "stream": "cmcc",
        "format": "pcap",
        "size": 24 + n,
        "sha256": hashlib.sha256(str(n).encode()).hexdigest(),
        "first_seq": n * 10,
        "last_seq": n * 10 + 9,
        "first_time": "2026-11-23T00:11:00.500000Z",
        "last_time": "2026-11-23T00:12:00.000000Z",
        "complete": True,
    }


@pytest.fixture
def signer() -> LogSigner:
    return LogSigner(Ed25519PrivateKey.generate())


def _written(tmp_path: Path, signer: LogSigner, count: int = 3) -> Path:
    path = tmp_path / "manifest.jsonl"
    writer = ManifestWriter(path, signer)
    for n in range(count):
        writer.append(_fields(n))
    writer.close()
    return path


def test_written_lines_verify_and_chain(tmp_path: Path, signer: LogSigner) -> None:
    path = _written(tmp_path, signer)
    data = path.read_bytes()
    report = verify_manifest(data, signer.public)
    assert report.ok, report.faults
    lines = data.splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert first["prev"] == ""
    assert second["prev"] == hashlib.sha256(lines[0]).hexdigest() == line_digest(lines[0])
    assert first["key_id"] == signer.key_id.hex()
    # The signature is over the canonical JSON without "sig", as documented.
    unsigned = {k: v for k, v in first.items() if k != "sig"}
    message = json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()
    assert message == canonical(first)
    signer.public.verify(base64.b64decode(first["sig"]), message)
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_edited_field_fails_its_signature_and_the_next_lines_chain(
    tmp_path: Path, signer: LogSigner
) -> None:
    lines = _written(tmp_path, signer).read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["size"] += 1
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    report = verify_manifest(b"".join(lines), signer.public)
    problems = [(f.line, f.problem) for f in report.faults]
    assert (2, "signature does not verify") in problems
    assert (3, "chain broken: prev is not the previous line's SHA-256") in problems
    assert report.faults[0].file == entry["file"]


def test_a_dropped_or_reordered_line_breaks_the_chain(tmp_path: Path, signer: LogSigner) -> None:
    lines = _written(tmp_path, signer).read_bytes().splitlines(keepends=True)
    dropped = verify_manifest(lines[0] + lines[2], signer.public)
    assert [(f.line, f.problem) for f in dropped.faults] == [
        (2, "chain broken: prev is not the previous line's SHA-256")
    ]
    swapped = verify_manifest(lines[1] + lines[0] + lines[2], signer.public)
    assert {f.line for f in swapped.faults} == {1, 2, 3}


def test_another_key_is_named(tmp_path: Path, signer: LogSigner) -> None:
    data = _written(tmp_path, signer).read_bytes()
    other = Ed25519PrivateKey.generate().public_key()
    report = verify_manifest(data, other)
    assert {f.problem for f in report.faults} == {"signed with another key (key_id)"}


def test_a_forged_line_signed_by_another_key_is_found(tmp_path: Path, signer: LogSigner) -> None:
    path = _written(tmp_path, signer, count=1)
    forger = LogSigner(Ed25519PrivateKey.generate())
    writer = ManifestWriter(path, forger)  # chains correctly, signs with the wrong key
    writer.append(_fields(5))
    writer.close()
    report = verify_manifest(path.read_bytes(), signer.public)
    assert [(f.line, f.problem) for f in report.faults] == [(2, "signed with another key (key_id)")]


def test_cut_last_line_and_junk_are_faults(tmp_path: Path, signer: LogSigner) -> None:
    data = _written(tmp_path, signer).read_bytes()
    cut = verify_manifest(data[:-10], signer.public)
    assert any("cut short" in f.problem for f in cut.faults)
    junk = verify_manifest(data + b"hello\n", signer.public)
    assert [(f.line, f.problem) for f in junk.faults] == [(4, "not JSON")]


def test_writer_refuses_a_second_entry_for_a_file(tmp_path: Path, signer: LogSigner) -> None:
    path = _written(tmp_path, signer, count=1)
    writer = ManifestWriter(path, signer)
    with pytest.raises(ManifestError, match="has a manifest entry already"):
        writer.append(_fields(0))
    writer.close()
    assert len(path.read_bytes().splitlines()) == 1


def test_writer_cuts_a_torn_line_and_chains_on(tmp_path: Path, signer: LogSigner) -> None:
    path = _written(tmp_path, signer, count=2)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"complete":tru')  # a crash mid-append
    writer = ManifestWriter(path, signer)
    assert writer.torn == len(b'{"complete":tru')
    writer.append(_fields(7))
    writer.close()
    assert verify_manifest(path.read_bytes(), signer.public).ok


def test_writer_refuses_a_manifest_that_is_not_one(tmp_path: Path, signer: LogSigner) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b"not json\n")
    with pytest.raises(ManifestError, match="line 1: not a manifest line"):
        ManifestWriter(path, signer)


def test_sign_refuses_a_bad_field(tmp_path: Path, signer: LogSigner) -> None:
    writer = ManifestWriter(tmp_path / "manifest.jsonl", signer)
    with pytest.raises(ValueError, match="stream: must be cmii or cmcc"):
        writer.append({**_fields(0), "stream": "video"})
    writer.close()
