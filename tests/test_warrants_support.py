"""Shared helpers for the registry tests (no tests here).

:class:`Carrier` runs ``mediate`` in-process against a real data directory
and key file under ``tmp_path``; :func:`mediate` runs it as a real
subprocess (``sys.executable -m mediation``). Fixtures use documentation
addresses and obviously fake case identities only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mediation.cli.main import main

CASE = "CASE-0001"
COURT_REF = "SDNY-26-MJ-0001-TEST"
AGENCY = "AGENCY-TEST-1"
AGENCY_HOST = "203.0.113.5"
TARGET_V4 = "192.0.2.10"
TARGET_V6 = "2001:db8::10"
TARGET_MAC = "02:00:5e:00:53:01"
NOTE = "NOTE-TEST-MARKER"
# Text that must never appear anywhere in the data directory.
SECRETS = (CASE, COURT_REF, AGENCY, AGENCY_HOST, TARGET_V4, TARGET_V6, TARGET_MAC, NOTE)


@dataclasses.dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


class Carrier:
    """A carrier's data directory and key, and ``mediate`` run in this process."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.key = tmp / "keys" / "registry.key"
        self.env = {
            "MEDIATION_DATA_DIR": str(self.data),
            "MEDIATION_KEY_FILE": str(self.key),
            "HOME": str(tmp / "home"),
            "XDG_CONFIG_HOME": str(tmp / "home" / ".config"),
        }
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("MEDIATION_PASSPHRASE", raising=False)
        # Never a terminal, even under `pytest -s`: a missing field is refused, not asked.
        monkeypatch.setattr("sys.stdin", io.StringIO())
        # Even as root, the default key path must be ours, never /etc/mediation.
        default = tmp / "home" / ".config" / "mediation" / "registry.key"
        monkeypatch.setattr("mediation.warrants.access.default_key_file", lambda: default)
        self._monkeypatch = monkeypatch

    def without_key_env(self) -> None:
        """Forget MEDIATION_KEY_FILE: the key is then looked for in the (empty) default place."""
        self._monkeypatch.delenv("MEDIATION_KEY_FILE")

    def __call__(self, *argv: str) -> Run:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse's own errors
                code = int(exc.code or 0)
        return Run(code, out.getvalue(), err.getvalue())

    def ok(self, *argv: str) -> str:
        run = self(*argv)
        assert run.code == 0, run.err
        return run.out

    def files(self) -> dict[str, bytes]:
        """Every stored file of the data directory, by relative path (sockets aside)."""
        out = {}
        for path in sorted(self.data.rglob("*")):
            if path.is_file():
                out[str(path.relative_to(self.data))] = path.read_bytes()
        return out

    def setup(self) -> None:
        """init, one agency (UDP for CmII, TLS for both), one tap."""
        self.ok("init")
        self.ok("agency", "add", AGENCY, "--udp", f"{AGENCY_HOST}:5555", "--streams", "cmii")
        fingerprint = "ab" * 32
        self.ok(
            "agency", "add", AGENCY, "--tls", f"{AGENCY_HOST}:6543", "--fingerprint", fingerprint
        )
        self.ok("tap", "register", "edge-1", "--out", str(self.tmp / "edge-1.tap"))

    def add(self, *extra: str, case: str = CASE) -> str:
        """Add a full-content warrant on the three test targets; returns its handle."""
        out = self.ok(
            "add",
            "--case-id",
            case,
            "--agency",
            AGENCY,
            "--target",
            TARGET_V4,
            "--target",
            TARGET_V6,
            "--target",
            TARGET_MAC,
            "--content",
            "full",
            "--court-ref",
            COURT_REF,
            "--note",
            NOTE,
            *extra,
        )
        return out.splitlines()[0]


def error_line(run: Run) -> str:
    """The single error line of a refused command (asserting there is exactly one)."""
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("mediate: error: "), lines[0]
    return lines[0]


def mediate(*argv: str, env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """``mediate`` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "mediation", *argv],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
