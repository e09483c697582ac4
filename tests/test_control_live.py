"""Live apply: a real `mediate serve` picks up changes without a restart.

The server and the commands run as real subprocesses against one data
directory; waits are bounded polls of the control socket or the log.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_warrants_support import AGENCY, CASE, SECRETS, TARGET_V4, Carrier, mediate

from mediation.server.control import request, socket_path
from mediation.warrants.access import KeyNeed, KeyOptions, open_registry
from mediation.warrants.model import CaseDetails, ContentLevel, Target, TargetKind, utc_now
from mediation.warrants.operations import add_warrant


def wait_for(condition: Callable[[], object], what: str, seconds: float = 10.0) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


class Server:
    def __init__(self, carrier: Carrier) -> None:
        self.carrier = carrier
        self.log = carrier.tmp / "serve.log"
        self.sock = socket_path(carrier.data)
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mediation", "serve"],
                env={**os.environ, **carrier.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def status(self) -> dict | None:
        assert self.proc.poll() is None, self.log.read_text()
        return request(self.sock, {"op": "status"})

    def state(self, handle: str) -> str | None:
        status = self.status() or {}
        return status.get("warrants", {}).get(handle, {}).get("state")

    def logged(self, text: str) -> bool:
        return text in self.log.read_text()


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[Server]:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    server = Server(carrier)
    try:
        wait_for(server.status, "the control socket")
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)


def run(server: Server, *argv: str) -> str:
    done = mediate(*argv, env=server.carrier.env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_add_modify_remove_apply_live_and_stop_cleanly(server: Server) -> None:
    out = run(
        server,
        "add",
        "--case-id",
        CASE,
        "--agency",
        AGENCY,
        "--target",
        TARGET_V4,
        "--content",
        "full",
    )
    handle = out.splitlines()[0]
    assert out.splitlines()[-1].startswith("server: applied; active: yes (since ")
    assert out.rstrip().endswith("taps accepted: none connected")
    wait_for(lambda: server.logged(f"warrant {handle} active"), "the activation in the log")
    assert server.state(handle) == "active"

    listing = run(server, "list")
    assert f"{handle}  active  0     0" in listing  # live counters from the server

    out = run(server, "modify", handle, "--content", "headers")
    assert "server: applied; active: yes" in out
    wait_for(lambda: server.logged(f"warrant {handle} modified"), "the modification in the log")

    out = run(server, "remove", handle)
    assert out.splitlines()[-1] == "server: applied; the warrant is not loaded (stopped)"
    assert server.state(handle) is None
    assert server.logged(f"warrant {handle} inactive (removed)")

    second = mediate("serve", env=server.carrier.env)
    assert second.returncode == 2
    assert "serve: another server is running" in second.stderr

    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0
    assert not server.sock.exists()
    log = server.log.read_text()
    assert "SIGTERM: stopping" in log and log.rstrip().endswith("stopped")
    for secret in SECRETS:
        assert secret not in log, secret


def test_windows_start_on_time_and_unannounced_changes_are_found(server: Server) -> None:
    # Far enough ahead that a slow `mediate add` on a loaded machine still finds it pending.
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = run(
        server,
        "add",
        "--case-id",
        CASE,
        "--agency",
        AGENCY,
        "--target",
        TARGET_V4,
        "--content",
        "headers",
        "--start",
        start,
    )
    handle = out.splitlines()[0]
    assert "server: applied; active: no (pending until " in out
    wait_for(lambda: server.state(handle) == "active", "the start of the window", seconds=15)
    assert server.logged(f"warrant {handle} active")

    # A change the server is not told about (no control request) is found by polling.
    carrier = server.carrier
    details = CaseDetails("CASE-0002", (Target(TargetKind.ADDRESS, "192.0.2.20"),))
    now = utc_now()
    with open_registry(
        carrier.data, KeyOptions(str(carrier.key)), KeyNeed.REQUIRED, lock=True
    ) as reg:
        quiet = add_warrant(
            reg, AGENCY, details, ContentLevel.FULL, now, now + dt.timedelta(days=1), now
        )
    wait_for(lambda: server.state(quiet.handle) == "active", "the unannounced warrant", seconds=5)
    assert "192.0.2.20" not in server.log.read_text()


def test_serve_needs_the_key(tmp_path: Path, monkeypatch) -> None:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.ok("init")
    env = {**carrier.env, "MEDIATION_KEY_FILE": str(tmp_path / "absent.key")}
    done = mediate("serve", env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("mediate: error: --key-file: cannot read key file")
