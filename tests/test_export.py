"""``mediate export`` and ``mediate verify``: a bundle a court checks with standard tools.

A scripted intercept (a registered warrant; CmII reports, completeness
notices and CC packets appended to the real, encrypted evidence log with
known receive times) is exported through the CLI; the bundle verifies, its
README's sha256sum and openssl commands succeed as written, and each kind
of tampering is found and named.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from test_lea_support import cc_record, cmii_record
from test_warrants_support import Carrier, Run, error_line

from mediation.cli.main import main
from mediation.evidence import readme
from mediation.evidence.export import SIG_FILE, SUMS_FILE, sums_text
from mediation.evidence.manifest import ManifestWriter
from mediation.lea import rawfile
from mediation.log import LOG_KEY_PURPOSE, EvidenceLog, LogConfig, LogKey
from mediation.log.keys import load_or_create_signer, public_key_path
from mediation.pdu import ClockStatus, StreamKind
from mediation.warrants.access import KeyNeed, KeyOptions, open_registry
from mediation.warrants.model import CaseDetails, ContentLevel, Target, TargetKind
from mediation.warrants.operations import add_warrant

T0 = dt.datetime(2026, 11, 23, 0, 0, 0, tzinfo=dt.UTC)
CC_COUNT, CMII_COUNT = 45, 12  # checkpoints every 10 records: the last ones are closed at 44/11
CASE = "CASE-TEST-0001"


class Intercept:
    """A carrier's data directory with one warrant and its records in the log."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.carrier = Carrier(tmp_path, monkeypatch)
        self.carrier.setup()
        self.tmp = tmp_path
        options = KeyOptions(str(self.carrier.key))
        with open_registry(self.carrier.data, options, KeyNeed.REQUIRED, lock=True) as registry:
            details = CaseDetails(CASE, (Target(TargetKind.ADDRESS, "192.0.2.10"),))
            end = T0 + dt.timedelta(days=30)
            warrant = add_warrant(
                registry, "AGENCY-TEST-1", details, ContentLevel.FULL, T0, end, T0
            )
            self.handle = warrant.handle
            self.log_key = LogKey(registry.key.derive(LOG_KEY_PURPOSE))  # type: ignore[union-attr]
        trio.run(self._write)
        self.public_pem = public_key_path(self.carrier.data)

    async def _write(self) -> None:
        config = LogConfig(checkpoint_records=10, checkpoint_interval=1000.0)
        async with EvidenceLog.open(self.carrier.data, config, key=self.log_key) as log:
            for kind, count, make in (
                (StreamKind.CMII, CMII_COUNT, cmii_record),
                (StreamKind.CMCC, CC_COUNT, cc_record),
            ):
                stream = await log.stream(self.handle, kind)
                for n in range(count):
                    record = make(n)
                    when = T0 + dt.timedelta(minutes=n)  # minute n: for --from/--to
                    kind_ = record.kind.name  # protocol's ContentKind -> the log's
                    await stream.append(
                        record.payload, _log_kind(kind_), ClockStatus.SYNCHRONISED, when
                    )

    def export(self, out: Path, *extra: str) -> str:
        return self.carrier.ok("export", self.handle, "--out", str(out), *extra)


def _log_kind(name: str):  # type: ignore[no-untyped-def]
    from mediation.log import ContentKind

    return {"CMII": ContentKind.CMII, "CMCC": ContentKind.CMCC, "NOTICE": ContentKind.NOTICE}[name]


@pytest.fixture
def intercept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Intercept:
    return Intercept(tmp_path, monkeypatch)


@pytest.fixture
def bundle(intercept: Intercept) -> Path:
    out = intercept.tmp / "bundle"
    intercept.export(out)
    return out


class Exported:
    """A bundle made once per module (for tests that only verify it), with the trusted key."""

    def __init__(self, handle: str, public_pem: Path, bundle: Path) -> None:
        self.handle = handle
        self.public_pem = public_pem
        self.bundle = bundle

    @staticmethod
    def carrier(*argv: str) -> Run:
        """``mediate verify`` needs no data directory, key or environment."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
        return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    tmp = tmp_path_factory.mktemp("pristine")
    with pytest.MonkeyPatch.context() as monkeypatch:
        intercept = Intercept(tmp, monkeypatch)
        intercept.export(tmp / "bundle")
        trusted = tmp / "trusted.pub"
        shutil.copy(intercept.public_pem, trusted)
    return Exported(intercept.handle, trusted, tmp / "bundle")


@pytest.fixture
def exported(pristine: Exported, tmp_path: Path) -> Exported:
    """A copy of the module's bundle, to change."""
    shutil.copytree(pristine.bundle, tmp_path / "bundle")
    return Exported(pristine.handle, pristine.public_pem, tmp_path / "bundle")


def verify(intercept: Intercept | Exported, path: Path, *extra: str) -> tuple[int, str]:
    run = intercept.carrier("verify", str(path), *extra)
    return run.code, run.out + run.err


def resign(bundle: Path, key: Ed25519PrivateKey | None = None) -> None:
    """Rebuild SHA256SUMS after an edit (what a careful forger does), signed with ``key``."""
    sums = sums_text(bundle)
    (bundle / SUMS_FILE).write_bytes(sums)
    if key is not None:
        (bundle / SIG_FILE).write_bytes(key.sign(sums))


def test_a_bundle_verifies_complete_and_names_files_by_handle_only(
    intercept: Intercept, bundle: Path
) -> None:
    handle = intercept.handle
    names = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    for name in ("README.txt", "SHA256SUMS", "SHA256SUMS.sig", "bundle.json", "audit.jsonl"):
        assert name in names
    for name in ("cmii.raw", "cmcc.raw", "checkpoints.raw", "cmcc.pcap", "cmii.jsonl"):
        assert f"{handle}/{name}" in names
    assert not any(CASE in name for name in names)
    summary = json.loads((bundle / "bundle.json").read_text())
    assert summary["streams"]["cmcc"]["first"] == 0
    assert summary["streams"]["cmcc"]["last"] == CC_COUNT - 1
    assert summary["streams"]["cmii"]["last"] == CMII_COUNT - 1
    # Decrypted: the case id is in the PDUs of the bundle (it is evidence).
    assert b"CASE-0001" in (bundle / handle / "cmcc.raw").read_bytes()
    # Notices: odd CmII records are completeness notices.
    notices = (bundle / handle / "notices.jsonl").read_text().splitlines()
    assert len(notices) == CMII_COUNT // 2
    audit = [json.loads(line) for line in (bundle / "audit.jsonl").read_text().splitlines()]
    assert audit and all(e["handle"] == handle for e in audit)
    # The decrypted log checks with the log's own verifier and the public key alone.
    run = intercept.carrier(
        "log", "verify", str(bundle / "log"), "--public-key", str(bundle / "log-signing.pub.pem")
    )
    assert run.code == 0, run
    assert f"{handle}/cmcc: {CC_COUNT} records 0..{CC_COUNT - 1}" in run.out
    code, out = verify(intercept, bundle, "--key", str(intercept.public_pem))
    assert code == 0, out
    assert "COMPLETE" in out
    # The export itself is audited, by handle.
    trail = (intercept.carrier.data / "audit" / "audit.log").read_text()
    assert json.loads(trail.splitlines()[-1])["command"] == "export"


def test_the_readme_commands_succeed_as_written(exported: Exported) -> None:
    intercept, bundle = exported, exported.bundle
    text = (bundle / "README.txt").read_text()
    commands = [readme.SUMS_CHECK, readme.SIG_CHECK, *readme.checkpoint_commands(intercept.handle)]
    for command in commands:
        assert command in text
        run = subprocess.run(command, shell=True, cwd=bundle, capture_output=True, text=True)
        assert run.returncode == 0, (command, run.stdout, run.stderr)
    assert "Signature Verified Successfully" in run.stdout
    # And they fail on a forgery: a changed signature of the checkpoint.
    forged = bundle / intercept.handle / "checkpoints.txt"
    line = forged.read_text().splitlines()[0].split(" ")
    signature = bytearray(base64.b64decode(line[5]))
    signature[0] ^= 1
    line[5] = base64.b64encode(bytes(signature)).decode()
    forged.write_text(" ".join(line) + "\n")
    run = subprocess.run(
        " && ".join(readme.checkpoint_commands(intercept.handle)),
        shell=True,
        cwd=bundle,
        capture_output=True,
    )
    assert run.returncode != 0


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="no tcpdump")
def test_tcpdump_reads_every_packet(exported: Exported) -> None:
    intercept, bundle = exported, exported.bundle
    pcap = bundle / intercept.handle / "cmcc.pcap"
    run = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == CC_COUNT
    assert "192.0.2.10" in run.stdout


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _swap_first_two(path: Path) -> None:
    messages, _torn = rawfile.scan(path)
    data = path.read_bytes()
    a, b = messages[0], messages[1]
    first = data[a.offset : a.offset + a.length]
    second = data[b.offset : b.offset + b.length]
    path.write_bytes(second + first + data[b.offset + b.length :])


def _edit_record(path: Path) -> None:
    data = path.read_bytes()
    assert data.count(b"packet 3\xa0") == 1  # the end of record 3, then record 4
    path.write_bytes(data.replace(b"packet 3\xa0", b"packet 8\xa0"))


def _edit_log_record(path: Path, crc: bool) -> None:
    """Change record 3's payload in a segment; with ``crc``, make its frame check again."""
    import zlib

    from mediation.log import format as F

    data = bytearray(path.read_bytes())
    offset = F.decode_header(data).size
    while offset < len(data):
        body, stop = F.read_frame(data, offset)
        if bytes(body).endswith(b"packet 3"):
            data[stop - 1] = ord("8")
            if crc:
                start = offset + F.FRAME_SIZE
                data[offset + 4 : start] = zlib.crc32(data[start:stop]).to_bytes(4, "big")
            path.write_bytes(bytes(data))
            return
        offset = stop
    raise AssertionError("record 3 not found")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-10])


def _edit_audit(path: Path) -> None:
    entry = json.loads(path.read_text().splitlines()[0])
    entry["user"] = "someone-else"
    path.write_text(json.dumps(entry) + "\n")


# (what is done, file under the bundle ("H" for the handle), whether SHA256SUMS is
# rebuilt afterwards (then its signature fails, but the check named is the deeper one),
# what the report must say)
TAMPERING = [
    ("edit a packet in the pcap", "H/cmcc.pcap", _flip_last_byte, False, "SHA-256 differs"),
    ("... and rebuild SHA256SUMS", "H/cmcc.pcap", _flip_last_byte, True, "packet 45 differs"),
    ("drop a file", "H/cmii.jsonl", Path.unlink, False, "H/cmii.jsonl: missing"),
    ("reorder PDUs", "H/cmcc.raw", _swap_first_two, True, "record 0 comes after 1"),
    ("truncate a file", "H/cmcc.raw", _truncate, True, "H/cmcc.raw: holds 0..43"),
    (
        "edit a record",
        "H/cmcc.raw",
        _edit_record,
        True,
        "records 0..9 do not match the server's signed checkpoint at 9",
    ),
    ("edit an audit entry", "audit.jsonl", _edit_audit, True, "audit.jsonl: entry on line 1"),
    (
        "edit a log record",
        "log/H/cmcc/00000000000000000000.seg",
        lambda p: _edit_log_record(p, crc=False),
        True,
        "00000000000000000000.seg: sequence 3: checksum mismatch",
    ),
    (
        "edit a log record and its checksum",
        "log/H/cmcc/00000000000000000000.seg",
        lambda p: _edit_log_record(p, crc=True),
        True,
        "sequence 0: chain value differs at the checkpoint for 9",
    ),
]


@pytest.mark.parametrize(
    ("what", "name", "change", "rebuild", "expected"),
    TAMPERING,
    ids=[t[0] for t in TAMPERING],
)
def test_each_kind_of_tampering_is_found_and_named(
    exported: Exported, what: str, name: str, change, rebuild: bool, expected: str
) -> None:  # type: ignore[no-untyped-def]
    intercept, bundle = exported, exported.bundle
    handle = intercept.handle
    change(bundle / name.replace("H/", f"{handle}/"))
    if rebuild:
        resign(bundle)
    code, out = verify(intercept, bundle, "--key", str(intercept.public_pem))
    assert code == 1, out
    assert expected.replace("H/", f"{handle}/") in out, out
    assert f"TAMPERED  {name.replace('H/', f'{handle}/')}" in out or not (bundle / name).exists()
    if rebuild:
        assert "SHA256SUMS.sig: does not verify" in out


def test_a_replaced_key_fails_against_the_trusted_one(exported: Exported) -> None:
    intercept, bundle = exported, exported.bundle
    forger = Ed25519PrivateKey.generate()
    pem = forger.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (bundle / "log-signing.pub.pem").write_bytes(pem)
    resign(bundle, forger)  # the list and its signature agree with the forged key
    code, out = verify(intercept, bundle, "--key", str(intercept.public_pem))
    assert code == 1
    assert "log-signing.pub.pem: not the trusted key given with --key (replaced)" in out
    assert "SHA256SUMS.sig: does not verify" in out
    # Without a trusted copy, the server's checkpoints still refuse the forged key.
    code, out = verify(intercept, bundle)
    assert code == 1
    assert "signed by another key" in out


def _captures(intercept: Intercept) -> Path:
    """A files endpoint's directory for the warrant: one capture file and its manifest."""
    captures = intercept.tmp / "captures" / intercept.handle
    captures.mkdir(parents=True)
    (captures / "cmcc-0.pcap").write_bytes(b"pcap bytes")
    signer = load_or_create_signer(intercept.carrier.data)
    writer = ManifestWriter(captures / "manifest.jsonl", signer)
    fields = {
        "file": "cmcc-0.pcap",
        "stream": "cmcc",
        "format": "pcap",
        "size": 10,
        "sha256": hashlib.sha256(b"pcap bytes").hexdigest(),
        "first_seq": 0,
        "last_seq": 4,
        "first_time": "2026-11-23T00:00:00.000000Z",
        "last_time": "2026-11-23T00:04:00.000000Z",
        "complete": True,
    }
    writer.append(fields)
    writer.close()
    return captures


def test_a_changed_manifest_line_of_the_capture_files_is_found(
    intercept: Intercept, monkeypatch: pytest.MonkeyPatch
) -> None:
    captures = _captures(intercept)
    (captures / "cmcc-1.pcap").write_bytes(b"still being written")  # no manifest entry yet
    monkeypatch.setattr("mediation.cli.export._capture_dirs", lambda _r, _w: [captures])
    out = intercept.tmp / "bundle"
    intercept.export(out)
    copied = sorted(p.name for p in (out / "files" / "1").iterdir())
    assert copied == ["cmcc-0.pcap", "manifest.jsonl"]  # not the file without an entry
    code, text = verify(intercept, out, "--key", str(intercept.public_pem))
    assert code == 0, text
    manifest = out / "files" / "1" / "manifest.jsonl"
    manifest.write_text(manifest.read_text().replace('"last_seq":4', '"last_seq":5'))
    resign(out)
    code, text = verify(intercept, out, "--key", str(intercept.public_pem))
    assert code == 1
    assert "files/1/manifest.jsonl: line 1 (cmcc-0.pcap): signature does not verify" in text


def test_a_window_exports_whole_signed_spans_and_verifies(
    intercept: Intercept, tmp_path: Path
) -> None:
    out = tmp_path / "window"
    # Records are a minute apart from T0: minutes 11..27 are CC records 11..27,
    # widened to the checkpoints after 9 and at 29; CmII record 11, from the one after 9.
    intercept.export(out, "--from", "2026-11-23T00:11:00Z", "--to", "2026-11-23T00:27:00Z")
    summary = json.loads((out / "bundle.json").read_text())
    cc = summary["streams"]["cmcc"]
    assert (cc["first"], cc["last"], cc["anchor_checkpoint"]) == (10, 29, 9)
    assert cc["wanted"] == [11, 27]
    cmii = summary["streams"]["cmii"]
    assert (cmii["first"], cmii["last"], cmii["wanted"]) == (10, 11, [11, 11])
    code, text = verify(intercept, out, "--key", str(intercept.public_pem))
    assert code == 0, text
    assert "w-" in text and "20 records 10..29" in text
    # The decrypted log segment starts at 10, after its anchor checkpoint: checked
    # anchored; as a plain log it is missing 0..9, and `mediate log verify` says so.
    segments = sorted(p.name for p in (out / "log" / intercept.handle / "cmcc").iterdir())
    assert segments == ["00000000000000000010.seg"]
    run = intercept.carrier(
        "log", "verify", str(out / "log"), "--public-key", str(out / "log-signing.pub.pem")
    )
    assert run.code == 1
    assert "records 0..9 missing" in run.out


def test_records_not_yet_signed_are_a_gap_not_a_fault(intercept: Intercept, tmp_path: Path) -> None:
    # A crash before the last checkpoint was written: cut it off the last CC segment.
    from mediation.log.evidence_log import stream_dir
    from mediation.log.format import CHECKPOINT, FRAME_SIZE
    from mediation.log.segments import list_segments

    directory = stream_dir(intercept.carrier.data, intercept.handle, StreamKind.CMCC)
    _first, last = list_segments(directory)[-1]
    data = last.read_bytes()
    last.write_bytes(data[: -(FRAME_SIZE + CHECKPOINT.size)])
    out = tmp_path / "bundle"
    printed = intercept.export(out)
    assert "40..44 after the last checkpoint: not yet signed" in printed
    code, text = verify(intercept, out, "--key", str(intercept.public_pem))
    assert code == 3, text
    assert f"GAPS: {intercept.handle}/cmcc 40..44: after the last checkpoint" in text
    assert "TAMPERED" not in text


def test_refusals_are_one_line_and_write_nothing(intercept: Intercept, tmp_path: Path) -> None:
    carrier, handle = intercept.carrier, intercept.handle
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    cases = [
        (("export", handle, "--out", str(taken)), "--out: "),
        (("export", "w-000000", "--out", str(tmp_path / "a")), "HANDLE: no warrant w-000000"),
        (("export", "CASE-1", "--out", str(tmp_path / "a")), "HANDLE: must be a handle"),
        (("export", handle, "--out", str(tmp_path / "a"), "--from", "yesterday"), "--from: "),
        (
            (
                "export",
                handle,
                "--out",
                str(tmp_path / "a"),
                "--from",
                "2026-11-24",
                "--to",
                "2026-11-23",
            ),
            "--to: must not be before --from",
        ),
        (
            ("export", handle, "--out", str(tmp_path / "a"), "--from", "2027-01-01"),
            "HANDLE: " + handle + ": no signed records in that window",
        ),
        (("export", handle, "--out", str(tmp_path / "no" / "such")), "--out: "),
        (("verify", str(tmp_path / "nothing")), "BUNDLE: "),
        (("verify", str(taken)), "BUNDLE: "),
        (("verify", str(taken), "--key", str(taken / "x")), "--key: "),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, expected in cases:
        run = carrier(*argv)
        assert run.code == 2, (argv, run)
        assert error_line(run).startswith(f"mediate: error: {expected}"), (argv, run.err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (taken / "x").read_text() == "x"


def test_a_failure_half_way_leaves_nothing(
    intercept: Intercept, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_args: object) -> str:
        raise OSError(28, "No space left on device", str(tmp_path / "bundle" / "README.txt"))

    monkeypatch.setattr("mediation.evidence.export.readme_text", disk_full)
    before = sorted(p.name for p in tmp_path.iterdir())
    run = intercept.carrier("export", intercept.handle, "--out", str(tmp_path / "bundle"))
    assert run.code != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no bundle, no temp dir


def test_export_works_while_the_server_runs(intercept: Intercept, tmp_path: Path) -> None:
    from mediation.server.app import MediationServer
    from mediation.warrants.keys import read_key_file

    key = read_key_file(intercept.carrier.key)
    out = tmp_path / "live"

    async def main() -> None:
        server = MediationServer(intercept.carrier.data, key)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            run = await trio.to_thread.run_sync(
                intercept.carrier, "export", intercept.handle, "--out", str(out)
            )
            assert run.code == 0, run.err
            nursery.cancel_scope.cancel()

    trio.run(main)
    code, text = verify(intercept, out, "--key", str(intercept.public_pem))
    assert code in (0, 3), text  # the server's own new notices may not be signed yet
    assert "TAMPERED" not in text


def test_verify_takes_a_receivers_directory_and_a_files_directory(
    intercept: Intercept, bundle: Path
) -> None:
    key = ("--key", str(intercept.public_pem))
    code, text = verify(intercept, bundle / intercept.handle, *key)
    assert code == 0, text
    assert "ok: all verified" in text
    run = intercept.carrier("verify", str(bundle / intercept.handle))
    assert run.code == 2
    assert "give --key PEM" in error_line(run)
    captures = _captures(intercept)
    (captures / ".cmcc-00000000000000000005.pcap.part").write_bytes(b"being written")
    code, text = verify(intercept, captures, *key)
    assert code == 0, text  # a file the server is still writing is no fault
    (captures / "cmcc-0.pcap").write_bytes(b"pcap bytez")
    code, text = verify(intercept, captures, *key)
    assert code == 1
    assert "cmcc-0.pcap: size or SHA-256 differs from its signed manifest line" in text


def test_a_damaged_summary_or_an_added_link_is_tampering(
    exported: Exported, tmp_path: Path
) -> None:
    intercept, bundle = exported, exported.bundle
    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    (damaged / "bundle.json").write_text('{"handle": "../x", "streams": []}')
    code, text = verify(intercept, damaged, "--key", str(intercept.public_pem))
    assert code == 1
    assert "TAMPERED: bundle.json: not a valid summary" in text
    (bundle / "extra").symlink_to("/etc/hostname")
    code, text = verify(intercept, bundle, "--key", str(intercept.public_pem))
    assert code == 1
    assert "extra: a symbolic link" in text


def test_the_bundle_holds_the_confirmation_record_mediate_confirm_prints(
    intercept: Intercept, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    intercept.export(out)
    record = json.loads((out / "confirmation.json").read_text())
    confirm = intercept.carrier("confirm", intercept.handle, "--json")
    assert confirm.code == 0
    printed = json.loads(confirm.out)
    assert record["records"] == printed["records"] != []
    assert record["periods"] == printed["periods"]
    assert "confirmation.json" in (out / "SHA256SUMS").read_text()
    code, text = verify(intercept, out, "--key", str(intercept.public_pem))
    assert code == 0, text


def test_a_warrant_with_nothing_in_the_log_is_refused(intercept: Intercept, tmp_path: Path) -> None:
    carrier = intercept.carrier
    options = KeyOptions(str(carrier.key))
    with open_registry(carrier.data, options, KeyNeed.REQUIRED, lock=True) as registry:
        details = CaseDetails("CASE-TEST-0002", (Target(TargetKind.ADDRESS, "192.0.2.11"),))
        end = T0 + dt.timedelta(days=30)
        other = add_warrant(registry, "AGENCY-TEST-1", details, ContentLevel.FULL, T0, end, T0)
    run = carrier("export", other.handle, "--out", str(tmp_path / "b"))
    assert run.code == 2
    assert error_line(run) == (
        f"mediate: error: HANDLE: {other.handle}: nothing in the evidence log for this warrant"
    )
    assert not (tmp_path / "b").exists()


def _purge(intercept: Intercept, kind: StreamKind, last: int) -> None:
    """What retention leaves of a stream: no segments, a journal line (not signed here)."""
    from mediation.log.evidence_log import stream_dir
    from mediation.log.segments import list_segments

    directory = stream_dir(intercept.carrier.data, intercept.handle, kind)
    for _first, path in list_segments(directory):
        path.unlink()
    entry = {"event": "removed", "first": 0, "last": last, "time_us": 0}
    entry |= {"chain": "00" * 32, "signature": "00" * 64}
    (directory / "retention.jsonl").write_text(json.dumps(entry) + "\n")


def test_what_retention_removed_is_a_gap_and_all_of_it_a_refusal(
    intercept: Intercept, tmp_path: Path
) -> None:
    _purge(intercept, StreamKind.CMCC, CC_COUNT - 1)
    out = tmp_path / "bundle"
    printed = intercept.export(out)
    assert f"cmcc: not in the bundle: 0..{CC_COUNT - 1} removed by retention" in printed
    code, text = verify(intercept, out, "--key", str(intercept.public_pem))
    assert code == 3, text
    assert f"GAPS: {intercept.handle}/cmcc 0..{CC_COUNT - 1}: removed by retention" in text
    _purge(intercept, StreamKind.CMII, CMII_COUNT - 1)
    run = intercept.carrier("export", intercept.handle, "--out", str(tmp_path / "again"))
    assert run.code == 2
    assert error_line(run).endswith("no records left in the evidence log (purged)")


def test_no_bundle_stays_without_its_audit_entry(
    intercept: Intercept, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device", str(tmp_path / "audit.log"))

    monkeypatch.setattr("mediation.warrants.registry.WarrantRegistry.record", refuse)
    run = intercept.carrier("export", intercept.handle, "--out", str(tmp_path / "bundle"))
    assert run.code != 0
    assert not (tmp_path / "bundle").exists()


def test_a_span_segment_needs_its_anchor_checkpoint_first(
    intercept: Intercept, tmp_path: Path
) -> None:
    from mediation.log import format as F
    from mediation.log.keys import load_public_key
    from mediation.log.verify import verify_stream
    from mediation.pdu import StreamId

    out = tmp_path / "window"
    intercept.export(out, "--from", "2026-11-23T00:11:00Z", "--to", "2026-11-23T00:27:00Z")
    directory = out / "log" / intercept.handle / "cmcc"
    path = directory / F.segment_name(10)
    data = path.read_bytes()
    public = load_public_key(out / "log-signing.pub.pem")
    stream = StreamId(intercept.handle, StreamKind.CMCC)
    assert verify_stream(directory, public, stream, anchored=True).ok
    header = F.decode_header(data)
    _anchor, after = F.read_frame(data, header.size)
    path.write_bytes(data[: header.size] + data[after:])  # the anchor checkpoint taken out
    fault = verify_stream(directory, public, stream, anchored=True).fault
    assert fault is not None and "no signed checkpoint comes first" in fault.reason
    # A forged starting chain value (header CRC made good) disagrees with the anchor.
    forged = F.encode_header(stream, 10, bytes(32))
    path.write_bytes(forged + data[header.size :])
    fault = verify_stream(directory, public, stream, anchored=True).fault
    assert fault is not None and "starting chain value differs" in fault.reason


def test_oversized_metadata_is_refused_not_loaded(exported: Exported) -> None:
    intercept, bundle = exported, exported.bundle
    import os

    os.truncate(bundle / "SHA256SUMS", (64 << 20) + 1)  # sparse: costs no disk
    (bundle / "log-signing.pub.pem").unlink()
    code, text = verify(intercept, bundle, "--key", str(intercept.public_pem))
    assert code == 1
    assert "TAMPERED: SHA256SUMS: larger than 64 MiB" in text
    assert "TAMPERED: log-signing.pub.pem: missing" in text


def test_the_capture_files_are_found_through_the_agencys_files_endpoint(tmp_path: Path) -> None:
    import types

    from mediation.cli.export import _capture_dirs
    from mediation.warrants.model import Agency, AgencyDetails, Endpoint, Stream

    handle = "w-7e57ab"
    (tmp_path / "a" / handle).mkdir(parents=True)
    (tmp_path / "b").mkdir()  # this endpoint holds nothing of the warrant
    endpoints = (
        Endpoint("files", str(tmp_path / "a"), 0, (Stream.CMCC,)),
        Endpoint("files", str(tmp_path / "b"), 0, (Stream.CMCC,)),
        Endpoint("udp", "203.0.113.5", 5555, (Stream.CMII,)),
    )
    agency = Agency("a-7e57ab", T0, details=AgencyDetails("AGENCY-TEST-1", endpoints))
    registry = types.SimpleNamespace(agency=lambda h: agency if h == "a-7e57ab" else None)
    warrant = types.SimpleNamespace(agency="a-7e57ab", handle=handle)
    assert _capture_dirs(registry, warrant) == [tmp_path / "a" / handle]  # type: ignore[arg-type]
