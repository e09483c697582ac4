"""The adversarial suite's stage: a carrier, a server with traffic, an agency receiving.

Set up as ``mediation/demo.py`` does, with the same ``mediate`` commands a
person types (``init``, ``receive make-cert``, ``agency add --from``,
``add --from``, ``tap register``, ``log key``), then a real ``mediate
receive`` process (UDP for CmII, TLS for CmCC, retrieval of gaps) and the
server as a real process fed by ``feed_server.py``. Everything listens on
loopback only; every wait is bounded.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mediation.durable import write_new

HERE = Path(__file__).resolve().parent
TARGET_MAC = "02:00:5e:00:53:01"  # the sample capture's target (documentation MAC)
CASE_ID = "CASE-TEST-0001"
MADE_UP_HANDLE = "w-0bad00"  # no warrant has it: nothing may ever be stored under it


def wait_for(condition: Callable[[], Any], what: str, seconds: float) -> Any:
    """Poll ``condition`` every 50 ms until it is true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Output:
    """A child's stdout, line by line, collected by a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def find(self, text: str) -> str | None:
        return next((line for line in list(self.lines) if text in line), None)

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "\n".join(self.lines)


class Stage:
    """One carrier, one server process, one agency receiver, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "mediation"
        self.agency = root / "agency"
        self.other = root / "other-agency"
        self.out = self.agency / "intercepts"
        self.env = {
            **os.environ,
            "MEDIATION_DATA_DIR": str(self.data),
            "MEDIATION_KEY_FILE": str(root / "registry.key"),
        }
        self.ports = {
            "udp": free_port(socket.SOCK_DGRAM),
            "tls": free_port(socket.SOCK_STREAM),
            "retrieval": free_port(socket.SOCK_STREAM),
            "closed": free_port(socket.SOCK_STREAM),  # the second agency's endpoint: nobody
        }
        self.handle = ""
        self.server: subprocess.Popen[str] | None = None
        self.receiver: subprocess.Popen[str] | None = None
        self.server_out: Output | None = None
        self.receiver_out: Output | None = None

    # Commands ------------------------------------------------------------------------

    def mediate(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "mediation", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"mediate {args}: {done.stdout}{done.stderr}"
        return done

    def case_file(self, name: str, text: str) -> Path:
        folder = self.root / "carrier"
        folder.mkdir(mode=0o700, exist_ok=True)
        write_new(folder / name, text.encode())
        return folder / name

    def setup(self) -> None:
        """The carrier and the agencies' steps, as in the demo, plus a tap and a second agency."""
        self.mediate("init")
        self.mediate("receive", "make-cert", "--out", str(self.agency), "--name", "TEST-LEA")
        self.mediate("receive", "make-cert", "--out", str(self.other), "--name", "OTHER-LEA")
        p = self.ports
        cert, other = self.agency / "agency-cert.pem", self.other / "agency-cert.pem"
        start = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        end = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        udp = self.case_file(
            "udp.toml", f'name = "TEST-LEA"\nudp = "127.0.0.1:{p["udp"]}"\nstreams = "cmii"\n'
        )
        self.mediate("agency", "add", "--from", str(udp), "--udp-key-out", str(self.udp_key))
        tls = self.case_file(
            "tls.toml",
            f'name = "TEST-LEA"\ntls = "127.0.0.1:{p["tls"]}"\nca = "{cert}"\nstreams = "cmcc"\n',
        )
        self.mediate("agency", "add", "--from", str(tls))
        second = self.case_file(
            "other.toml",
            f'name = "OTHER-LEA"\ntls = "127.0.0.1:{p["closed"]}"\nca = "{other}"\n'
            'streams = "both"\n',
        )
        self.mediate("agency", "add", "--from", str(second))
        warrant = self.case_file(
            "warrant.toml",
            f'case-id = "{CASE_ID}"\nagency = "TEST-LEA"\ntarget = ["{TARGET_MAC}"]\n'
            f'content = "full"\nstart = "{start}"\nend = "{end}"\niap = "TEST-IAP"\n',
        )
        self.handle = self.mediate("add", "--from", str(warrant)).stdout.split()[0]
        self.mediate("tap", "register", "adv-tap", "--out", str(self.root / "adv-tap.tap"))
        self._credentials()

    def _credentials(self) -> None:
        """The tap's certificate and key as PEM files, for TLS clients that present them."""
        bundle = tomllib.loads((self.root / "adv-tap.tap").read_text())
        write_new(self.root / "tap-cert.pem", bundle["certificate"].encode())
        write_new(self.root / "tap-key.pem", bundle["private_key"].encode())

    @property
    def udp_key(self) -> Path:
        return self.agency / "udp-key.toml"

    @property
    def log_key(self) -> Path:
        return self.root / "log-signing.pub"

    # Processes -----------------------------------------------------------------------

    def start_receiver(self) -> None:
        """``mediate receive`` with UDP, TLS and retrieval; runs until SIGTERM."""
        p = self.ports
        args = [
            "receive",
            "--udp",
            f"127.0.0.1:{p['udp']}",
            "--udp-key",
            str(self.udp_key),
            "--tls",
            f"127.0.0.1:{p['tls']}",
            "--cert",
            str(self.agency / "agency-cert.pem"),
            "--key",
            str(self.agency / "agency-key.pem"),
            "--server-ca",
            str(self.data / "ca" / "server-ca.pem"),
            "--retrieve-from",
            f"127.0.0.1:{p['retrieval']}",
            "--out",
            str(self.out),
        ]
        self.receiver = self._spawn([sys.executable, "-m", "mediation", *args])
        self.receiver_out = Output(self.receiver)
        wait_for(
            lambda: (
                self._alive(self.receiver, self.receiver_out)
                and self.receiver_out.find("listening: tls")
            ),
            "the receiver",
            20,
        )

    def start_server(self, rate: float, seconds: float) -> None:
        """The server process, feeding ``rate`` frames a second for ``seconds``."""
        config = self.root / "mediation.toml"
        config.write_text(
            f'[retrieval]\nlisten = "127.0.0.1:{self.ports["retrieval"]}"\n'
            "[status]\nlog_interval = 30\n"
        )
        argv = [
            sys.executable,
            str(HERE / "feed_server.py"),
            str(self.data),
            self.env["MEDIATION_KEY_FILE"],
            str(config),
            self.handle,
            str(rate),
            str(seconds),
        ]
        self.server = self._spawn(argv)
        self.server_out = Output(self.server)
        wait_for(
            lambda: self._alive(self.server, self.server_out) and self.server_out.find('"ready"'),
            "the server",
            30,
        )

    def _spawn(self, argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    @staticmethod
    def _alive(process: subprocess.Popen[str] | None, out: Output | None) -> bool:
        assert process is not None and out is not None
        assert process.poll() is None, f"exited {process.returncode}:\n{out.text()[-4000:]}"
        return True

    def stored(self) -> int | None:
        """PDUs the feed made durable, once it is over."""
        assert self.server_out is not None
        line = self.server_out.find('"fed"')
        return json.loads(line)["stored"] if line else None

    def status(self) -> dict[str, Any]:
        """``mediate status --json``: the running server's whole answer."""
        return json.loads(self.mediate("status", "--json").stdout)

    def stop(self, process: subprocess.Popen[str] | None, out: Output | None) -> tuple[int, str]:
        """SIGTERM, then its exit status and everything it printed (bounded wait)."""
        assert process is not None and out is not None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(timeout=10)
        return code, out.text()

    def kill_all(self) -> None:
        """Whatever still runs after a failure: killed, so no test leaves a process behind."""
        for process in (self.receiver, self.server):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
