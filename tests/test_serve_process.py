"""`mediate serve` as a real process: one per data directory, signals, and its limits.

Each test starts the server as a subprocess against its own data
directory; waits are bounded polls of the control socket or the log.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_control_live import wait_for
from test_warrants_support import AGENCY, Carrier, mediate

from mediation.server.control import request, socket_path
from mediation.warrants.access import KeyNeed, KeyOptions, open_registry
from mediation.warrants.model import CaseDetails, ContentLevel, Target, TargetKind, utc_now
from mediation.warrants.operations import add_warrant

# Retrieval on a free port: tests running side by side must not collide on 37001.
CONFIG = '[retrieval]\nlisten = "127.0.0.1:0"\n[status]\nlog_interval = 30\n'


class Serve:
    """One ``mediate serve --config FILE`` subprocess; its output in ``serve.log``."""

    def __init__(self, carrier: Carrier, config: Path, name: str = "serve.log") -> None:
        self.carrier = carrier
        self.log = carrier.tmp / name
        self.sock = socket_path(carrier.data)
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mediation", "serve", "--config", str(config)],
                env={**os.environ, **carrier.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.status, "the control socket")

    def status(self) -> dict | None:
        assert self.proc.poll() is None, self.log.read_text()
        return request(self.sock, {"op": "status"})

    def logged(self, text: str) -> bool:
        return text in self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    (tmp_path / "mediation.toml").write_text(CONFIG)
    return carrier


@pytest.fixture
def server(carrier: Carrier) -> Iterator[Serve]:
    serve = Serve(carrier, carrier.tmp / "mediation.toml")
    try:
        yield serve
    finally:
        serve.stop()


def raw_exchange(path: Path, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(payload)
        data = b""
        while b"\n" not in data and (chunk := sock.recv(4096)):
            data += chunk
        return data


def test_a_deeply_nested_request_costs_that_request_only(server: Serve) -> None:
    """50,000 '[' on one line raised RecursionError, uncaught: the server died."""
    answer = raw_exchange(server.sock, b"[" * 50_000 + b"\n")
    assert answer == b'{"ok": false, "error": "request nested deeper than 32"}\n'
    status = server.status()
    assert status is not None and status["control"]["refused"]["too_deep"] == 1
    shown = mediate("status", env=server.carrier.env)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^control: answered \d+; refused: too_deep 1$", shown.stdout, re.M)


def test_one_server_per_data_directory_even_without_its_socket(server: Serve) -> None:
    server.sock.unlink()  # what an operator's cleanup script might do
    second = mediate(
        "serve", "--config", str(server.carrier.tmp / "mediation.toml"), env=server.carrier.env
    )
    assert second.returncode == 2
    assert second.stderr == (
        f"mediate: error: serve: another server is running on {server.carrier.data} "
        f"(pid {server.proc.pid}); stop it first\n"
    )
    assert server.proc.poll() is None


def test_a_killed_servers_socket_is_cleaned_when_the_next_starts(carrier: Carrier) -> None:
    first = Serve(carrier, carrier.tmp / "mediation.toml")
    first.proc.kill()  # SIGKILL: no clean-up at all
    first.proc.wait(timeout=10)
    assert first.sock.is_socket()  # left behind
    second = Serve(carrier, carrier.tmp / "mediation.toml", name="serve2.log")
    try:
        status = second.status()
        assert status is not None and status["pid"] == second.proc.pid
        assert second.logged("left by a server that did not stop cleanly")
    finally:
        second.stop()


def add_quietly(carrier: Carrier) -> str:
    """Add a warrant straight into the registry, telling no server; its handle."""
    details = CaseDetails("CASE-TEST-0002", (Target(TargetKind.ADDRESS, "192.0.2.20"),))
    now = utc_now()
    options = KeyOptions(str(carrier.key))
    with open_registry(carrier.data, options, KeyNeed.REQUIRED, lock=True) as registry:
        end = now + dt.timedelta(days=1)
        return add_warrant(registry, AGENCY, details, ContentLevel.FULL, now, end, now).handle


def test_sighup_reloads_and_sigterm_still_stops_cleanly(server: Serve) -> None:
    """SIGHUP killed the server (no checkpoint, a stale socket); now it reloads."""
    handle = add_quietly(server.carrier)
    config = server.carrier.tmp / "mediation.toml"
    config.write_text(
        CONFIG.replace("log_interval = 30", "log_interval = 0.5") + "[delivery]\nwindow = 5\n"
    )
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: (server.status() or {}).get("reloads") == 1, "the reload")
    wait_for(
        lambda: server.status()["warrants"].get(handle, {}).get("state") == "active",
        "the warrant added before SIGHUP",
    )
    assert server.logged("SIGHUP: reloading the registry and the configuration")
    assert server.logged("reload: config [status] log_interval now 0.5 (was 30.0)")
    assert server.logged(
        "reload: config [delivery] window changed (1024 to 5) but applies only at a restart"
    )
    # The new status interval runs: structured status lines every half second.
    wait_for(lambda: server.logged("INFO mediation.server.status: "), "a status log line")

    config.write_text("[status]\nlog_interval = nan\n")  # a broken file: keep the old config
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: (server.status() or {}).get("reloads") == 2, "the second reload")
    wait_for(lambda: server.logged("keeping the configuration loaded before"), "the refusal")

    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=20) == 0
    assert not server.sock.exists()
    assert server.log.read_text().rstrip().endswith("stopped")
    verified = mediate("log", "verify", env=server.carrier.env)
    assert verified.returncode == 0, verified.stderr + verified.stdout


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (
            b"[log]\ncommit_interval = nan\n",
            "config [log] commit_interval: must be a number above 0 and at most 1, got nan",
        ),
        (
            b"[log]\ncommit_records = 2.5\n",
            "config [log] commit_records: must be a whole number of 1 or more, got 2.5",
        ),
        (
            b"[log]\ncommit_records = true\n",
            "config [log] commit_records: must be a whole number of 1 or more, got true",
        ),
        (
            b"[delivery]\nkeepalive_timeout = inf\n",
            "config [delivery] keepalive_timeout: must be a number above 0 and at most 86400, "
            "got inf",
        ),
        (
            b"[log]\nsegment_bytes = 100\n",
            "config [log] segment_bytes: must be at least 4096, got 100",
        ),
        (
            b"[logs]\n",
            "config logs: unknown key "
            "(known: data_dir, log, delivery, retrieval, status, clock, tls, taps, retention, "
            "files, tzsp, radius)",
        ),
        (b"# caf\xe9\n", "--config: {path} is not UTF-8 text (line 1); save it as UTF-8"),
        (
            b"[log\n",
            "--config: {path} is not valid TOML: "
            "Expected ']' at the end of a table declaration (at line 1, column 5)",
        ),
    ],
)
def test_each_config_mistake_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, line: str
) -> None:
    carrier = Carrier(tmp_path, monkeypatch)
    path = tmp_path / "mediation.toml"
    path.write_bytes(content)
    done = mediate("serve", "--config", str(path), env=carrier.env)
    assert done.returncode == 2
    assert done.stderr == f"mediate: error: {line.format(path=path)}\n"


def test_a_read_only_data_directory_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tmpfs_support import mount, small_tmpfs

    with small_tmpfs(tmp_path, "4m") as disk:
        carrier = Carrier(disk, monkeypatch)
        carrier.setup()
        data = carrier.data
        remounted = mount("-o", "remount,ro", str(disk))
        assert remounted.returncode == 0, remounted.stderr
        fix = (
            "mediate: error: --data-dir: {} is not writable (Read-only file system); "
            "remount it read-write or choose another --data-dir\n"
        )
        for argv, directory in (
            (("serve",), data),
            (
                (
                    "add",
                    "--case-id",
                    "CASE-TEST-0003",
                    "--agency",
                    AGENCY,
                    "--target",
                    "192.0.2.30",
                    "--content",
                    "full",
                ),
                data,
            ),
            (("init", "--data-dir", str(disk / "new")), disk / "new"),
        ):
            done = mediate(*argv, env=carrier.env)
            assert (done.returncode, done.stderr) == (2, fix.format(directory)), argv


def test_the_lock_names_its_holder_and_is_free_once_released(tmp_path: Path) -> None:
    from mediation.errors import UsageError
    from mediation.server.lock import ServerLock

    with ServerLock.acquire(tmp_path) as held:
        assert held.path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(UsageError) as refused:
            ServerLock.acquire(tmp_path)  # another open file description: refused like a process
        assert str(refused.value) == (
            f"serve: another server is running on {tmp_path} (pid {os.getpid()}); stop it first"
        )
    ServerLock.acquire(tmp_path).release()
    with pytest.raises(UsageError, match="absent cannot be made or reached"):
        ServerLock.acquire(tmp_path / "absent")


def test_a_data_directory_that_cannot_be_made_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    carrier = Carrier(tmp_path, monkeypatch)
    (tmp_path / "a-file").write_text("")
    wrong = tmp_path / "a-file" / "data"
    done = mediate("init", "--data-dir", str(wrong), env=carrier.env)
    assert (done.returncode, done.stderr) == (
        2,
        f"mediate: error: --data-dir: {wrong} cannot be made or reached (Not a directory); "
        "check the path, or choose another --data-dir\n",
    )
