"""`mediate receive verify`: the agency checks what it holds against the server's checkpoints.

The receiver's files are made here from a real evidence log, exactly as the
receiver writes them (envelopes and checkpoint messages as received, back
to back), then changed the ways evidence goes wrong.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from delivery_support import cc_pdu
from log_support import KEY

from mediation import pdu as P
from mediation.cli import main as cli_main
from mediation.lea.verify import StreamCheck, check_case, check_output
from mediation.log import Checkpoint, ContentKind, EvidenceLog, LogConfig, LogRecord
from mediation.log.keys import load_public_key, public_key_path
from mediation.protocol.envelope import encode_message, record_envelope

HANDLE = "w-7e57ab"
SID = P.StreamId(HANDLE, P.StreamKind.CMCC)
COUNT = 35  # checkpoints after 9, 19 and 29; 30..34 not yet signed


class Received:
    """A log's records and checkpoints, and a receiver's output directory made of them."""

    def __init__(self, tmp_path: Path, records: list[LogRecord], cps: list[Checkpoint]) -> None:
        self.out = tmp_path / "intercepts"
        self.case = self.out / HANDLE
        self.case.mkdir(parents=True)
        self.key_file = public_key_path(tmp_path / "server")
        self.public = load_public_key(self.key_file)
        self.records = records
        self.cps = cps

    def envelope(self, record: LogRecord, redelivered: bool = False) -> bytes:
        return record_envelope(SID, record, redelivered)

    def write(self, envelopes: list[bytes] | None = None, cps: list[bytes] | None = None) -> None:
        if envelopes is None:
            envelopes = [self.envelope(r) for r in self.records]
        if cps is None:
            cps = [encode_message(cp.to_pdu()) for cp in self.cps]
        (self.case / "cmcc.raw").write_bytes(b"".join(envelopes))
        (self.case / "checkpoints.raw").write_bytes(b"".join(cps))

    def check(self) -> StreamCheck:
        [check] = check_case(self.case, self.public)
        return check


@pytest.fixture
def received(tmp_path: Path) -> Received:
    return trio.run(_received, tmp_path)


async def _received(tmp_path: Path) -> Received:
    config = LogConfig(checkpoint_records=10, checkpoint_interval=1000.0)
    items: list[LogRecord | Checkpoint] = []
    async with EvidenceLog.open(tmp_path / "server", config, key=KEY) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        for n in range(COUNT):
            last = await stream.append(cc_pdu(n=n), ContentKind.CMCC, P.ClockStatus.SYNCHRONISED)
        await last.durable()
        cursor = stream.cursor(0, checkpoints=True)
        while len(items) < COUNT + 3:
            items.extend(await cursor.read(100))
    records = [i for i in items if isinstance(i, LogRecord)]
    cps = [i for i in items if isinstance(i, Checkpoint)]
    assert [cp.last_seq for cp in cps] == [9, 19, 29]
    return Received(tmp_path, records, cps)


def test_everything_up_to_the_last_checkpoint_is_verified(received: Received) -> None:
    received.write()
    check = received.check()
    assert (check.records, check.first, check.last) == (COUNT, 0, COUNT - 1)
    assert (check.checkpoints, check.verified, check.after_last) == (3, 30, 5)
    assert check.ok and check.uncheckable == []
    assert check.line() == (
        f"{HANDLE}/cmcc: 35 records 0..34, 3 checkpoints, 30 verified, "
        "5 after the last checkpoint, ok up to the last checkpoint"
    )


def test_arrival_order_and_identical_redeliveries_do_not_matter(received: Received) -> None:
    envelopes = [received.envelope(r) for r in received.records]
    envelopes += [received.envelope(r, redelivered=True) for r in received.records[5:15]]
    random.Random(7).shuffle(envelopes)
    received.write(envelopes)
    check = received.check()
    assert check.ok and check.verified == 30 and check.records == COUNT


def test_missing_records_leave_their_span_uncheckable_and_the_next_checkpoint_resumes(
    received: Received,
) -> None:
    kept = [r for r in received.records if r.seq not in (12, 13)]
    received.write([received.envelope(r) for r in kept])
    check = received.check()
    assert check.ok
    assert check.uncheckable == [(10, 19)]
    assert check.verified == 20  # 0..9 and 20..29: the signed value at 19 is the new start
    assert "not checkable (records missing in 10..19)" in check.line()
    assert check.line().endswith("ok where checkable")


def _with_payload(record: LogRecord, payload: bytes) -> LogRecord:
    return record._replace(payload=payload)


@pytest.mark.parametrize(
    ("change", "fault"),
    [
        # Another packet in place of record 14.
        (
            lambda rs: {14: _with_payload(rs[14], cc_pdu(n=999))},
            "records 10..19 do not match the server's signed checkpoint at 19",
        ),
        # Records 3 and 4 swapped (each keeps its sequence number).
        (
            lambda rs: {
                3: _with_payload(rs[3], rs[4].payload),
                4: _with_payload(rs[4], rs[3].payload),
            },
            "records 0..9 do not match the server's signed checkpoint at 9",
        ),
        # The receive time moved by a microsecond.
        (
            lambda rs: {25: rs[25]._replace(received_us=rs[25].received_us + 1)},
            "records 20..29 do not match the server's signed checkpoint at 29",
        ),
        # The clock status as received made better than it was.
        (
            lambda rs: {0: rs[0]._replace(clock=P.ClockStatus.UNKNOWN)},
            "records 0..9 do not match the server's signed checkpoint at 9",
        ),
    ],
)
def test_a_changed_record_is_a_fault_naming_its_span(
    received: Received, change, fault: str
) -> None:
    changed = {**dict(enumerate(received.records)), **change(received.records)}
    received.write([received.envelope(changed[n]) for n in range(COUNT)])
    check = received.check()
    assert check.fault == fault
    assert check.line().endswith(f"FAULT: {fault}")


def test_a_record_received_twice_with_different_content_is_a_fault(received: Received) -> None:
    forged = _with_payload(received.records[31], cc_pdu(n=1000))
    envelopes = [received.envelope(r) for r in received.records] + [received.envelope(forged)]
    received.write(envelopes)
    assert received.check().fault == "sequence 31 was received twice with different content"


def test_checkpoints_with_a_bad_signature_or_another_key_are_faults(received: Received) -> None:
    bad = received.cps[1]._replace(signature=bytes(64))
    received.write(cps=[encode_message(cp.to_pdu()) for cp in (received.cps[0], bad)])
    assert received.check().fault == f"checkpoint at {HANDLE}/cmcc 19 has a bad signature"

    other = Ed25519PrivateKey.generate()
    raw = other.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    [check] = check_case(received.case, other.public_key())
    assert (
        check.fault == f"checkpoint at {HANDLE}/cmcc 9 is signed by another key (not the one given)"
    )
    assert check.verified == 0 and len(raw) == 32


def test_no_checkpoint_yet_is_said_plainly(received: Received) -> None:
    received.write(cps=[])
    check = received.check()
    assert check.ok and check.verified == 0 and check.after_last == COUNT
    assert check.line().endswith("not verified (no checkpoint covers these records)")


def test_the_command_exits_0_1_or_2(received: Received, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*argv: str) -> tuple[int, str, str]:
        code = cli_main.main(["receive", "verify", *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    received.write()
    key = str(received.key_file)
    code, out, _ = run(str(received.out), "--log-key", key)
    assert code == 0 and out.startswith(f"{HANDLE}/cmcc: 35 records") and "FAULT" not in out
    assert [c.ok for c in check_output(received.case, received.public)] == [True]  # one case dir

    envelopes = [received.envelope(r) for r in received.records]
    envelopes[2] = received.envelope(_with_payload(received.records[2], cc_pdu(n=77)))
    received.write(envelopes)
    code, out, _ = run(str(received.out), "--log-key", key)
    assert code == 1 and "FAULT: records 0..9" in out

    code, _, err = run(str(received.out / "nowhere"), "--log-key", key)
    assert code == 2 and err.strip().endswith("not a directory (the receiver's --out)")
    code, _, err = run(str(received.out), "--log-key", str(received.case / "cmcc.raw"))
    assert code == 2 and "--log-key:" in err and "not a PEM public key" in err
    empty = received.out.parent / "empty"
    empty.mkdir()
    code, _, err = run(str(empty), "--log-key", key)
    assert code == 2 and "no received streams here" in err
