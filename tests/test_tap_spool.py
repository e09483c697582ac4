"""The tap's spool: durable, encrypted, bounded, crash safe (mediation/tap/spool.py)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mediation.tap.spool import (
    MIN_LIMIT,
    RECORD_OVERHEAD,
    SEGMENT_HEADER,
    STATE_SIZE,
    SpoolError,
    TapSpool,
    WrongSpoolKey,
)

KEY = bytes(range(32))
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
CASE = b"CASE-TEST-0001"


def payload(n: int, size: int = 100) -> bytes:
    """A batch that names the case (as a real one does) and its number."""
    body = CASE + b"|IAP-TEST-01|" + n.to_bytes(4, "big")
    return (body * (size // len(body) + 1))[:size]


def at(n: int) -> datetime:
    return T0 + timedelta(seconds=n)


def all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


def test_round_trip_ack_and_reopen(tmp_path: Path) -> None:
    spool = TapSpool.open(tmp_path / "spool", KEY, 1 << 20)
    ids = [spool.append(payload(n), at(n), at(n + 1)) for n in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    assert list(spool.pending()) == [(n + 1, payload(n)) for n in range(5)]
    spool.ack(2)
    assert [batch for batch, _ in spool.pending()] == [3, 4, 5]
    spool.close()
    with TapSpool.open(tmp_path / "spool", KEY, 1 << 20) as spool:
        assert list(spool.pending()) == [(n + 1, payload(n)) for n in range(2, 5)]
        assert spool.append(payload(9), at(9), at(9)) == 6
    assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700


def test_nothing_in_clear_on_disk(tmp_path: Path) -> None:
    with TapSpool.open(tmp_path / "s", KEY, 1 << 20) as spool:
        for n in range(20):
            spool.append(payload(n, 500), at(n), at(n))
        spool.ack(3)
        raw = all_bytes(tmp_path / "s")
    assert len(raw) > 20 * 400
    for secret in (CASE, b"IAP-TEST-01", CASE.decode().encode("utf-16-le")):
        assert secret not in raw
    for path in (tmp_path / "s").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600


def test_ids_persist_when_everything_was_acked(tmp_path: Path) -> None:
    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:
        for n in range(3):
            spool.append(payload(n), at(n), at(n))
        spool.ack(3)
        assert list(spool.pending()) == []
    assert not list(tmp_path.glob("*.seg"))  # space reclaimed (the open segment at close)
    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:
        assert spool.used_bytes == STATE_SIZE
        assert spool.append(payload(3), at(3), at(3)) == 4


def test_a_failed_write_retires_its_id_and_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed write (disk full) no id and no (key, nonce) is used twice."""
    import mediation.tap.spool as spool_module

    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:
        assert spool.append(payload(0), at(0), at(0)) == 1

        def broken(fd: int, views: list[memoryview], offset: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(spool_module, "write_synced", broken)
        with pytest.raises(OSError):
            spool.append(payload(1), at(1), at(1))
        monkeypatch.undo()
        assert spool.append(payload(2), at(2), at(2)) == 3
        assert len(list(tmp_path.glob("*.seg"))) == 2
        assert list(spool.pending()) == [(1, payload(0)), (3, payload(2))]
        assert (spool.acked, spool.last_id) == (0, 3)
    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:
        assert [b for b, _ in spool.pending()] == [1, 3]


def test_a_full_disk_is_an_overflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC before the limit: the batch is dropped and counted, the tap goes on."""
    import mediation.tap.spool as spool_module

    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:
        assert spool.append(payload(0), at(0), at(0)) == 1

        def full(fd: int, views: list[memoryview], offset: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(spool_module, "write_synced", full)
        assert spool.append(payload(1), at(1), at(2)) is None
        monkeypatch.undo()
        assert spool.overflow == (1, at(1), at(2))
        assert spool.append(payload(3), at(3), at(3)) == 3
        assert [b for b, _ in spool.pending()] == [1, 3]


def test_ack_of_an_id_never_given_is_refused(tmp_path: Path) -> None:
    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:
        spool.append(payload(0), at(0), at(0))
        with pytest.raises(ValueError, match="batch 7 was never spooled"):
            spool.ack(7)
        spool.ack(1)
        spool.ack(1)  # again: nothing to do


def test_overflow_keeps_the_oldest_and_counts(tmp_path: Path) -> None:
    limit = MIN_LIMIT
    fits = (limit - STATE_SIZE - SEGMENT_HEADER) // (RECORD_OVERHEAD + 100)
    with TapSpool.open(tmp_path, KEY, limit) as spool:
        ids = [spool.append(payload(n), at(n), at(n + 1)) for n in range(fits + 5)]
        stored = [i for i in ids if i is not None]
        assert stored == list(range(1, len(stored) + 1))
        assert ids[len(stored) :] == [None] * (len(ids) - len(stored))
        assert 0 < len(stored) <= fits
        dropped = len(ids) - len(stored)
        assert spool.used_bytes <= limit
        assert spool.overflow == (dropped, at(len(stored)), at(len(ids)))
        assert [p for _, p in spool.pending()] == [payload(n) for n in range(len(stored))]
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert total <= limit
    with TapSpool.open(tmp_path, KEY, limit) as spool:  # the report survives a restart
        assert spool.overflow == (dropped, at(len(stored)), at(len(ids)))
        spool.ack(len(stored))
        assert spool.append(payload(99), at(99), at(99)) == len(stored) + 1
        spool.clear_overflow()
        assert spool.overflow is None
    with TapSpool.open(tmp_path, KEY, limit) as spool:
        assert spool.overflow is None


def test_segments_roll_and_are_deleted_when_acked(tmp_path: Path) -> None:
    with TapSpool.open(tmp_path, KEY, 64 * 1024) as spool:  # segments of 8 KiB
        for n in range(60):
            assert spool.append(payload(n, 500), at(n), at(n)) == n + 1
        segments = sorted(tmp_path.glob("*.seg"))
        assert len(segments) > 3
        spool.ack(30)
        left = sorted(tmp_path.glob("*.seg"))
        assert len(left) < len(segments)
        assert [b for b, _ in spool.pending()] == list(range(31, 61))
        assert spool.used_bytes == STATE_SIZE + sum(p.stat().st_size for p in left)


def test_an_ack_that_frees_no_segment_does_not_rewrite_the_state(tmp_path: Path) -> None:
    """Acks are persisted when a segment is deleted or at close, not each: a busy tap is
    acknowledged hundreds of times a second, and each state write is two fsyncs."""
    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:  # one segment holds all five
        for n in range(5):
            spool.append(payload(n), at(n), at(n))
        before = (tmp_path / "state").stat().st_ino
        spool.ack(2)
        spool.ack(3)
        assert (tmp_path / "state").stat().st_ino == before  # not replaced
        assert [b for b, _ in spool.pending()] == [4, 5]
    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:  # close saved it
        assert [b for b, _ in spool.pending()] == [4, 5]


def test_an_ack_in_memory_is_taken_only_when_it_frees_no_segment(tmp_path: Path) -> None:
    """The link acks in memory (no worker thread) unless a segment would be deleted."""
    with TapSpool.open(tmp_path, KEY, 64 * 1024) as spool:  # segments of 8 KiB
        for n in range(40):
            spool.append(payload(n, 500), at(n), at(n))
        segments = sorted(tmp_path.glob("*.seg"))
        second_starts = int(segments[1].stem)
        assert spool.ack_in_memory(second_starts - 2)  # inside the first segment
        assert spool.acked == second_starts - 2
        assert not spool.ack_in_memory(second_starts - 1)  # the whole first: disk work
        assert spool.acked == second_starts - 2  # unchanged
        spool.ack(second_starts - 1)
        assert sorted(tmp_path.glob("*.seg")) == segments[1:]
        assert spool.ack_in_memory(1)  # an older ack: nothing to do
        with pytest.raises(ValueError):
            spool.ack_in_memory(41)


def test_light_load_appends_to_one_segment_and_writes_no_state(tmp_path: Path) -> None:
    """Each batch acknowledged before the next (a quiet tap): the open segment is kept
    while it has room, so no batch creates a segment, and no ack deletes one or writes
    the state (the old spool did all three for every batch: five fsyncs)."""
    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:
        spool.append(payload(0), at(0), at(0))
        state = (tmp_path / "state").stat().st_ino
        segments = sorted(tmp_path.glob("*.seg"))
        for n in range(1, 30):
            spool.ack(spool.append(payload(n), at(n), at(n)))  # type: ignore[arg-type]
        assert sorted(tmp_path.glob("*.seg")) == segments
        assert (tmp_path / "state").stat().st_ino == state
        assert list(spool.pending()) == []
        assert spool.used_bytes <= spool.limit_bytes // 8 + STATE_SIZE + 600  # one segment
    assert not list(tmp_path.glob("*.seg"))
    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:
        assert (spool.acked, spool.last_id) == (30, 30)


def test_an_ack_lost_in_a_crash_only_returns_those_batches(tmp_path: Path) -> None:
    """Killed before the ack was saved: the batches come back (the server's hello names
    what it stored, and the link acks them again); no id is given twice."""
    spool = TapSpool.open(tmp_path, KEY, 1 << 20)
    for n in range(3):
        spool.append(payload(n), at(n), at(n))
    spool.ack(2)
    for fd in (spool._fd, spool._lock_fd):  # a crash: no close(), so the ack is not saved
        os.close(fd)
    spool._fd = spool._lock_fd = None
    with TapSpool.open(tmp_path, KEY, 1 << 20) as again:
        assert [b for b, _ in again.pending()] == [1, 2, 3]
        assert again.append(payload(3), at(3), at(3)) == 4
        again.ack(2)
        assert [b for b, _ in again.pending()] == [3, 4]


def test_wrong_key_is_refused_clearly(tmp_path: Path) -> None:
    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:
        spool.append(payload(0), at(0), at(0))
    with pytest.raises(WrongSpoolKey, match="written under another tap key"):
        TapSpool.open(tmp_path, bytes(32), 1 << 20)
    (tmp_path / "state").unlink()  # the segment's own check refuses too
    with pytest.raises(SpoolError, match="segments without a state file"):
        TapSpool.open(tmp_path, bytes(32), 1 << 20)


def test_segment_key_check_refuses_another_key(tmp_path: Path) -> None:
    with TapSpool.open(tmp_path / "a", KEY, 1 << 20) as spool:
        spool.append(payload(0), at(0), at(0))
    with TapSpool.open(tmp_path / "b", bytes(32), 1 << 20):
        pass
    for seg in (tmp_path / "a").glob("*.seg"):
        seg.rename(tmp_path / "b" / seg.name)
    with pytest.raises(WrongSpoolKey):
        TapSpool.open(tmp_path / "b", bytes(32), 1 << 20)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TapSpool.open(tmp_path, b"short", 1 << 20)
    with pytest.raises(ValueError, match="at least 4096"):
        TapSpool.open(tmp_path, KEY, 100)
    naive = datetime(2026, 1, 1)
    with (
        TapSpool.open(tmp_path, KEY, 1 << 20) as spool,
        pytest.raises(ValueError, match="timezone-aware"),
    ):
        spool.append(b"x", naive, naive)


def test_one_process_at_a_time(tmp_path: Path) -> None:
    with (
        TapSpool.open(tmp_path, KEY, 1 << 20),
        pytest.raises(SpoolError, match="in use by another tap process"),
    ):
        TapSpool.open(tmp_path, KEY, 1 << 20)
    TapSpool.open(tmp_path, KEY, 1 << 20).close()


def test_every_torn_tail_is_cut(tmp_path: Path) -> None:
    """Whatever byte a crash stops the last record at, the spool opens with the others."""
    with TapSpool.open(tmp_path / "orig", KEY, 1 << 20) as spool:
        for n in range(3):
            spool.append(payload(n, 40), at(n), at(n))
    (segment,) = (tmp_path / "orig").glob("*.seg")
    whole = segment.read_bytes()
    record = RECORD_OVERHEAD + 40
    for cut in range(len(whole) - record, len(whole)):
        copy = tmp_path / f"cut{cut}"
        copy.mkdir()
        (copy / "state").write_bytes((tmp_path / "orig" / "state").read_bytes())
        (copy / segment.name).write_bytes(whole[:cut])
        with TapSpool.open(copy, KEY, 1 << 20) as spool:
            assert list(spool.pending()) == [(1, payload(0, 40)), (2, payload(1, 40))]
            assert spool.append(payload(7), at(7), at(7)) == 3
        assert len(whole) - record == (copy / segment.name).stat().st_size


def test_a_flipped_bit_is_cut_not_yielded(tmp_path: Path) -> None:
    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:
        for n in range(3):
            spool.append(payload(n, 40), at(n), at(n))
    (segment,) = tmp_path.glob("*.seg")
    raw = bytearray(segment.read_bytes())
    raw[-5] ^= 1
    segment.write_bytes(bytes(raw))
    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:
        assert [b for b, _ in spool.pending()] == [1, 2]


CHILD = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from pathlib import Path
    from mediation.tap.spool import TapSpool
    spool = TapSpool.open(Path(sys.argv[1]), bytes(range(32)), 1 << 24)
    now = datetime.now(UTC)
    for n in range(1, 20001):
        body = n.to_bytes(4, "big") * (50 + n % 200)
        batch = spool.append(body, now, now)
        print(batch, flush=True)
    """
)


def test_sigkill_while_appending_leaves_a_prefix(tmp_path: Path) -> None:
    """A child appends until killed; every batch it was given back survives intact."""
    before = 0  # batches from earlier rounds; each child numbers its bodies from 1
    for _round in range(2):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
        assert child.stdout is not None
        returned = [int(child.stdout.readline()) for _ in range(150)]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        with TapSpool.open(tmp_path, KEY, 1 << 24) as spool:
            got = list(spool.pending())
        ids = [batch for batch, _ in got]
        assert ids == list(range(1, len(ids) + 1))  # a prefix: no gap, nothing after a hole
        assert set(returned) <= set(ids)
        assert returned[0] == before + 1
        for batch, body in got[before:]:
            n = batch - before
            assert body == n.to_bytes(4, "big") * (50 + n % 200)
        before = len(ids)


def crash(spool: TapSpool) -> None:
    """The process stops: no close(), nothing more saved."""
    for fd in (spool._fd, spool._lock_fd):
        if fd is not None:
            os.close(fd)
    spool._fd = spool._lock_fd = None


def test_an_id_given_ahead_is_never_given_again(tmp_path: Path) -> None:
    """The link may send a batch before its append (spool.py, "Sending ahead"): an id
    ``ahead`` named is reserved durably, so a spool opened after a crash that lost
    that batch's record starts after it (else the server would take the next new
    batch for the one it stored)."""
    spool = TapSpool.open(tmp_path, KEY, 1 << 20, reserve=True)
    assert spool.ahead(100) is None  # nothing reserved yet: the first append waits
    assert spool.append(payload(0), at(0), at(0)) == 1
    assert spool.ahead(100) == 2
    crash(spool)  # batch 2 was sent ahead; its record never written
    with TapSpool.open(tmp_path, KEY, 1 << 20, reserve=True) as again:
        assert [b for b, _ in again.pending()] == [1]
        assert again.append(payload(1), at(1), at(1)) > 2  # ids jump; never repeat
        assert again.ahead(100) == again.last_id + 1


def test_a_spool_without_reserve_sends_nothing_ahead_and_writes_no_state(tmp_path: Path) -> None:
    with TapSpool.open(tmp_path, KEY, 1 << 20) as spool:
        state = (tmp_path / "state").stat().st_mtime_ns
        for n in range(3):
            spool.append(payload(n), at(n), at(n))
            assert spool.ahead(100) is None
        assert (tmp_path / "state").stat().st_mtime_ns == state


def test_ahead_is_none_for_a_batch_the_limit_would_refuse(tmp_path: Path) -> None:
    size = 2000
    limit = STATE_SIZE + 2 * (SEGMENT_HEADER + RECORD_OVERHEAD + size)  # two, a segment each
    too_big = size + SEGMENT_HEADER + 1
    with TapSpool.open(tmp_path, KEY, limit, reserve=True) as spool:
        assert spool.append(payload(0, size), at(0), at(0)) == 1
        assert spool.ahead(size) == 2
        assert spool.ahead(too_big) is None  # more than the room left
        assert spool.append(payload(1, too_big), at(1), at(1)) is None  # as the append says


def test_a_state_file_from_before_reservations_reads_as_reserving_none() -> None:
    import struct

    from mediation.tap.spool_format import (
        CHECK_INFO,
        STATE_INFO,
        STATE_MAGIC,
        open_state,
        seal_blob,
    )

    old = seal_blob(KEY, STATE_MAGIC, STATE_INFO, CHECK_INFO, struct.pack(">QQqq", 7, 1, 2, 3))
    assert open_state(KEY, old) == (7, 1, 2, 3, 0)
