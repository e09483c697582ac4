"""The one durable writer: modes, no overwrite, nothing half-written."""

from __future__ import annotations

import os
import stat

import pytest

from mediation import durable
from mediation.durable import write_atomic, write_new


def test_write_atomic_replaces_with_mode_despite_umask(tmp_path):
    path = tmp_path / "state"
    path.write_bytes(b"old")
    old = os.umask(0)
    try:
        write_atomic(path, b"new", 0o640)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_write_atomic_leaves_old_file_and_no_temp_on_failure(tmp_path):
    path = tmp_path / "state"
    path.write_bytes(b"old")

    with pytest.raises(TypeError):
        write_atomic(path, object(), 0o600)  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_write_new_refuses_to_overwrite(tmp_path):
    path = tmp_path / "key"
    write_new(path, b"secret", 0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_new(path, b"other", 0o600)
    assert path.read_bytes() == b"secret"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no temp left behind


def test_write_new_removes_partial_file_on_failure(tmp_path):
    path = tmp_path / "key"
    with pytest.raises(TypeError):
        write_new(path, object(), 0o600)  # type: ignore[arg-type]
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_replacing_streams_a_file_into_place_durably(tmp_path, monkeypatch):
    synced = []
    real = durable.fsync_dir
    monkeypatch.setattr(durable, "fsync_dir", lambda d: (synced.append(d), real(d)))
    path = tmp_path / "big"
    path.write_bytes(b"old")
    old = os.umask(0)
    try:
        with durable.replacing(path, 0o640) as temp:
            assert stat.S_IMODE(temp.stat().st_mode) == 0o640  # before any byte
            with temp.open("ab") as out:
                for _ in range(3):
                    out.write(b"chunk")
            assert path.read_bytes() == b"old"  # nothing replaced until the block ends
    finally:
        os.umask(old)
    assert path.read_bytes() == b"chunk" * 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert synced == [tmp_path]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]


def test_replacing_leaves_the_old_file_and_no_temp_when_the_block_fails(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), durable.replacing(path) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]


def test_replacing_ignores_a_stray_temp_of_an_earlier_process(tmp_path):
    path = tmp_path / "big"
    stray = tmp_path / f".big.{os.getpid()}.tmp"
    stray.write_bytes(b"stale")
    with durable.replacing(path) as temp:
        assert temp == stray and temp.read_bytes() == b""
        temp.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    assert not stray.exists()


def test_create_open_makes_the_header_durable_and_leaves_the_file_open(tmp_path):
    old = os.umask(0o000)
    try:
        fd = durable.create_open(tmp_path / "seg", b"HEAD", 0o640, append=True)
    finally:
        os.umask(old)
    try:
        os.pwrite(fd, b"tail", 0)  # O_APPEND: a positioned write still appends
    finally:
        os.close(fd)
    assert (tmp_path / "seg").read_bytes() == b"HEADtail"
    assert stat.S_IMODE(os.stat(tmp_path / "seg").st_mode) == 0o640


def test_create_open_refuses_an_existing_file_and_removes_a_failed_one(tmp_path):
    (tmp_path / "seg").write_bytes(b"kept")
    with pytest.raises(FileExistsError):
        durable.create_open(tmp_path / "seg", b"HEAD")
    assert (tmp_path / "seg").read_bytes() == b"kept"
    with pytest.raises(TypeError):  # the header's write fails after the file was made
        durable.create_open(tmp_path / "new", object())  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg"]


def _short_pwritev(real, most: int):
    """``os.pwritev`` that writes at most ``most`` bytes a call (as the kernel may)."""

    def pwritev(fd, views, offset, *flags):
        data = b"".join(bytes(v) for v in views)[:most]
        return real(fd, [data], offset, *flags)

    return pwritev


@pytest.mark.parametrize("dsync", [True, False])
def test_write_synced_writes_every_byte_at_the_offset_despite_short_writes(
    tmp_path, monkeypatch, dsync
):
    monkeypatch.setattr(durable, "_DSYNC", durable._DSYNC if dsync else 0)
    monkeypatch.setattr(durable.os, "pwritev", _short_pwritev(os.pwritev, 3))
    path = tmp_path / "segment"
    path.write_bytes(b"HEADER")
    fd = os.open(path, os.O_WRONLY)
    try:
        durable.write_synced(fd, [memoryview(b"abcdefg"), memoryview(b"hij")], 6)
        durable.write_synced(fd, [memoryview(b"KLMNOPQ")], 4)  # over the old bytes
    finally:
        os.close(fd)
    assert path.read_bytes() == b"HEADKLMNOPQfghij"


def test_write_synced_appends_at_the_end_with_offset_minus_one(tmp_path):
    path = tmp_path / "journal"
    path.write_bytes(b"one\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        durable.write_synced(fd, [memoryview(b"two\n")], -1)
        durable.write_synced(fd, [memoryview(b"three\n")], -1)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"one\ntwo\nthree\n"


def test_write_synced_falls_back_to_fdatasync_where_rwf_dsync_is_refused(tmp_path, monkeypatch):
    """A file system without per-write sync: the bytes, then an fdatasync; remembered."""
    import errno

    monkeypatch.setattr(durable, "_DSYNC", 4)  # whatever the platform offers
    real, calls, synced = os.pwritev, [], []

    def pwritev(fd, views, offset, *flags):
        calls.append(flags)
        if flags:
            raise OSError(errno.EOPNOTSUPP, "not here")
        return real(fd, views, offset)

    monkeypatch.setattr(durable.os, "pwritev", pwritev)
    monkeypatch.setattr(durable.os, "fdatasync", synced.append)
    path = tmp_path / "segment"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    try:
        durable.write_synced(fd, [memoryview(b"abc")], 0)
        durable.write_synced(fd, [memoryview(b"def")], 3)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abcdef"
    assert calls == [(4,), (), ()]  # asked once with the flag, then never again
    assert synced == [fd, fd]
