"""The one durable writer: modes, no overwrite, nothing half-written."""

from __future__ import annotations

import os
import stat

import pytest

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
