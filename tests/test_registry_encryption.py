"""Encryption at rest: the data directory alone reveals no case, target or agency."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import stat
import subprocess

import pytest
from test_warrants_support import CASE, SECRETS, TARGET_V4, Carrier, error_line

from mediation import durable
from mediation.warrants.keys import PAD_TO, KdfParams, RegistryKey, RegistryKeyError
from mediation.warrants.registry import WarrantRegistry


@pytest.fixture
def carrier(tmp_path, monkeypatch) -> Carrier:
    c = Carrier(tmp_path, monkeypatch)
    c.setup()
    return c


def _all_bytes(carrier: Carrier) -> bytes:
    return b"\n".join(carrier.files().values())


def test_no_plaintext_anywhere_in_the_data_directory(carrier: Carrier) -> None:
    handle = carrier.add("--iap", "IAP-1", "--source", "tzsp:198.51.100.77")
    carrier.ok("modify", handle, "--add-target", "198.51.100.0/24")
    carrier.ok("show", handle)
    carrier.ok("list")
    carrier.ok("remove", handle)
    data = _all_bytes(carrier)
    assert handle.encode() in data  # the handle is what the files may name
    for secret in (*SECRETS, "198.51.100.77", "198.51.100.0/24"):
        assert secret.encode() not in data, secret
        assert secret.encode("utf-16-le") not in data, secret
    if shutil.which("strings"):
        files = [str(p) for p in carrier.data.rglob("*") if p.is_file()]
        found = subprocess.run(
            ["strings", "-a", *files], capture_output=True, text=True, check=True
        )
        assert not any(secret in found.stdout for secret in SECRETS)


def test_files_are_private_and_the_key_is_outside(carrier: Carrier) -> None:
    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(carrier.key) == 0o600
    assert carrier.data not in carrier.key.parents
    assert mode(carrier.data) == 0o700
    assert mode(carrier.data / "registry.db") == 0o600
    assert mode(carrier.data / "ca" / "ca.key") == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (carrier.data / "ca" / "ca.key").read_bytes()


def test_a_copy_of_the_data_directory_alone_opens_nothing(carrier: Carrier, tmp_path) -> None:
    carrier.add()
    copy = tmp_path / "copy"
    shutil.copytree(carrier.data, copy)
    with WarrantRegistry.open(copy) as registry:
        (warrant,) = registry.warrants()
        assert warrant.details is None  # handles, times and states only
        with pytest.raises(Exception, match="does not open the registry"):
            registry.unlock(RegistryKey.generate())
        with pytest.raises(RegistryKeyError):
            RegistryKey.generate().open(f"warrants/{warrant.handle}/details", b"\x01" + bytes(40))


def test_sealed_details_cannot_be_swapped_between_rows(carrier: Carrier) -> None:
    first = carrier.add()
    second = carrier.add(case="CASE-0002")
    db = sqlite3.connect(carrier.data / "registry.db")
    with db:
        blob = db.execute("SELECT details FROM warrants WHERE handle = ?", (first,)).fetchone()[0]
        db.execute("UPDATE warrants SET details = ? WHERE handle = ?", (blob, second))
    db.close()
    run = carrier("show", second)
    assert f"registry: warrants/{second}/details: does not open" in error_line(run)
    assert "tampered" in run.err and CASE not in run.err


def test_padding_hides_lengths() -> None:
    key = RegistryKey.generate()
    short = key.seal_json("warrants/w-000000/details", {"case_id": "C", "targets": ["192.0.2.1"]})
    longer = key.seal_json(
        "warrants/w-000000/details", {"case_id": "X" * 25, "targets": [TARGET_V4]}
    )
    assert len(short) == len(longer)
    assert (len(short) - 1 - 12 - 16) % PAD_TO == 0
    assert key.open_json("warrants/w-000000/details", short)["case_id"] == "C"
    with pytest.raises(RegistryKeyError):
        key.open_json("warrants/w-000001/details", short)


def test_passphrase_registry(tmp_path, monkeypatch) -> None:
    c = Carrier(tmp_path, monkeypatch)
    monkeypatch.setenv("LI_PASSPHRASE", "correct horse battery staple")
    out = c.ok("init", "--passphrase-env", "LI_PASSPHRASE")
    assert "derived from the passphrase in $LI_PASSPHRASE" in out
    assert not c.key.exists()
    monkeypatch.setenv("MEDIATION_PASSPHRASE", "correct horse battery staple")
    c.ok("agency", "add", "AGENCY-TEST-1", "--udp", "203.0.113.5:5555")
    handle = c.add()
    assert CASE in c.ok("show", handle)
    assert CASE.encode() not in _all_bytes(c)
    with WarrantRegistry.open(c.data) as registry:
        kdf = registry.kdf_params
        assert isinstance(kdf, KdfParams) and kdf.n >= 2**15
    monkeypatch.setenv("MEDIATION_PASSPHRASE", "a wrong passphrase, long enough")
    assert "--passphrase-env: this passphrase does not open" in error_line(c("show", handle))
    monkeypatch.delenv("MEDIATION_PASSPHRASE")
    assert "set MEDIATION_PASSPHRASE" in error_line(c("show", handle))
    assert handle in c.ok("list")  # handles and states without it
    monkeypatch.setenv("MEDIATION_PASSPHRASE", "short")
    assert "at least 12 characters" in error_line(c("show", handle))


def test_a_new_registry_is_created_private_and_durably(tmp_path, monkeypatch) -> None:
    synced = []
    real = durable.fsync_dir
    monkeypatch.setattr(durable, "fsync_dir", lambda d: (synced.append(d), real(d)))
    data = tmp_path / "data"
    now = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    old = os.umask(0)
    try:
        with WarrantRegistry.initialise(data, RegistryKey.generate(), None, now):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((data / "registry.db").stat().st_mode) == 0o600
    assert data in synced  # the database's directory entry survives a power cut
