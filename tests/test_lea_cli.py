"""`mediate receive` on the command line: options, certificates, a real run ended by SIGTERM."""

from __future__ import annotations

import io
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from test_lea_support import (
    CMCC,
    HANDLE,
    UDP_KEY,
    Receiver,
    config,
    make_pki,
    raw_sequences,
    record_for,
)

from mediation.cli import main as cli_main
from mediation.lea.view import LiveView
from mediation.protocol import DatagramSender
from mediation.protocol.sealed import DatagramOpener, DatagramSealer, Direction
from mediation.warrants.udpkey import write_key_file
from mediation.warrants.validate import parse_fingerprint

LAUNCH = "import sys; from mediation.cli import main as m; sys.exit(m.main(sys.argv[1:]))"


@pytest.fixture
def mediate(capsys: pytest.CaptureFixture[str]):
    def run(*argv: str) -> tuple[int, str, str]:
        code = cli_main.main(["receive", *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        ([], "--udp/--tls/--fetch"),
        (["--udp", "127.0.0.1"], "--udp"),
        (["--tls", "127.0.0.1:6543"], "--cert"),
        (["--udp", "127.0.0.1:5555", "--duration", "soon"], "--duration"),
        (["--udp", "127.0.0.1:5555", "--until-idle", "-1"], "--until-idle"),
        (["--udp", "127.0.0.1:5555", "--cert", "a.pem"], "--cert"),
        (["--fetch", "w-3f9a1c/cmcc:1-2"], "--fetch"),
        (["--fetch", "w-3f9a1c/cmxx:1", "--retrieve-from", "127.0.0.1:1"], "--fetch"),
        (["--fetch", "w-3f9a1c/cmcc:9-2", "--retrieve-from", "127.0.0.1:1"], "--fetch"),
        (["--fetch", "../x/cmcc:1", "--retrieve-from", "127.0.0.1:1"], "--fetch"),
        (["--udp", "127.0.0.1:5555", "--handle", "../etc"], "--handle"),
        (["--udp", "127.0.0.1:5555", "--server-fingerprint", "abc"], "--server-fingerprint"),
        (["--udp", "127.0.0.1:5555"], "--udp-key"),
        (["--udp", "127.0.0.1:5555", "--udp-key", "/nonexistent/k.toml"], "--udp-key"),
        (["--tls", "127.0.0.1:6543", "--udp-key", "k.toml"], "--cert"),
        (["--tls", "127.0.0.1:6543", "--udp-buffer", "65536"], "--udp-buffer"),
        (["--udp", "127.0.0.1:5555", "--udp-buffer", "4096"], "--udp-buffer"),
        (["--udp", "127.0.0.1:5555", "--udp-buffer", str(2**31)], "--udp-buffer"),
        (["--udp", "127.0.0.1:5555", "--udp-buffer", "lots"], "--udp-buffer"),
        (["--tls", "127.0.0.1:6543", "--format", "scte"], "--format"),
        (["--udp", "127.0.0.1:5555", "--udp-key", "k.toml", "--format", "pcli"], "--format"),
        (["--udp", "127.0.0.1:5555", "--udp-key", "k.toml", "--format", "scte"], "--format"),
    ],
)
def test_bad_options_are_one_line_naming_the_option(mediate, argv, field, tmp_path) -> None:
    code, out, err = mediate(*argv, "--out", str(tmp_path / "out"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"mediate: error: {field}: "), err


def test_tls_needs_the_server_ca_and_a_matching_key(mediate, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    common = ["--tls", "127.0.0.1:0", "--cert", str(pki.agency_cert), "--key", str(pki.agency_key)]
    pin = ["--server-fingerprint", "ab" * 32]
    code, _out, err = mediate(*common, *pin, "--out", str(tmp_path / "o"))
    assert code == 2 and err.startswith("mediate: error: --server-ca: ")
    wrong_key = ["--key", str(pki.server_key), "--server-ca", str(pki.ca)]
    code, _out, err = mediate(*common[:4], *wrong_key, "--out", str(tmp_path / "o"))
    assert code == 2 and err.startswith("mediate: error: --cert/--key: ")


def test_make_cert_prints_the_fingerprint_the_carrier_takes(mediate, tmp_path: Path) -> None:
    code, out, _err = mediate("make-cert", "--out", str(tmp_path / "certs"), "--name", "FBI NYFO")
    assert code == 0
    fingerprint = next(x.split()[1] for x in out.splitlines() if x.startswith("sha256:"))
    assert parse_fingerprint(fingerprint) == fingerprint
    # The hint keeps the fingerprint (whose endpoint this is) off the carrier's argv.
    hint = out.splitlines()[-1]
    assert "--from FILE" in hint and "--ca agency-cert.pem" in hint
    assert fingerprint not in hint and "--fingerprint" not in hint
    key = tmp_path / "certs" / "agency-key.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    code, out, _err = mediate("fingerprint", str(tmp_path / "certs" / "agency-cert.pem"))
    assert (code, out.strip()) == (0, fingerprint)
    code, _out, err = mediate("make-cert", "--out", str(tmp_path / "certs"))
    assert code == 2 and err.startswith("mediate: error: --out: ") and "exists" in err


def _read_line(stream, contains: str, seconds: float = 20.0) -> str:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if selector.select(timeout=deadline - time.monotonic()):
            line = stream.readline()
            if contains in line:
                return line
            assert line, f"output ended before {contains!r}"
    raise AssertionError(f"no line with {contains!r} within {seconds} s")


def udp_key_file(tmp_path: Path) -> Path:
    """The test key as the carrier hands it over."""
    path = tmp_path / "udp-key.toml"
    write_key_file(path, "a-1b2c3d", UDP_KEY.key_id, UDP_KEY.key, "--out")
    return path


def test_a_udp_key_file_that_is_not_one_is_refused_with_one_line(mediate, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    for text, problem in (
        ("not toml [", "is not a UDP key file (TOML)"),
        ('key_id = "5e1f00a7"\nkey = "abcd"\n', "key must be 64 hex digits"),
        (f'key_id = "xyz"\nkey = "{"00" * 32}"\n', "key_id must be 8 hex digits"),
    ):
        bad.write_text(text)
        code, out, err = mediate("--udp", "127.0.0.1:0", "--udp-key", str(bad))
        assert code == 2 and out == "" and err.count("\n") == 1
        assert err.startswith("mediate: error: --udp-key: ") and problem in err, err
        assert "mediate agency udp-key" in err


def test_a_real_run_over_udp_ends_cleanly_on_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "intercepts"
    key = ["--udp-key", str(udp_key_file(tmp_path))]
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "receive", "--udp", "127.0.0.1:0", *key, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = _read_line(proc.stderr, "listening: udp")
        port = int(line.rsplit(":", 1)[1])
        sender = DatagramSender(CMCC)
        sealer = DatagramSealer(UDP_KEY, Direction.SERVER_TO_AGENCY, time.time_ns() // 1000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for n in range(5):
                datagram = sealer.seal(sender.envelope(record_for(CMCC, n), 0.0))
                sock.sendto(datagram, ("127.0.0.1", port))
            # A sealed receiver report comes back to our source address within a second or so.
            sock.settimeout(10)
            report, _addr = sock.recvfrom(2048)
        opener = DatagramOpener([UDP_KEY], Direction.AGENCY_TO_SERVER)
        assert sender.receive_datagram(opener.open(report).message, 1.0)
        raw = out / HANDLE / "cmcc.raw"
        deadline = time.monotonic() + 10
        while not (raw.exists() and len(raw_sequences(raw)) == 5):  # flushed within 0.5 s
            assert time.monotonic() < deadline, "the envelopes were not written"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopped: SIGTERM received" in stdout
    assert f"{HANDLE}/cmCC" in stdout
    check = subprocess.run(["sha256sum", "-c"], input=stdout, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 3, check.stdout + check.stderr


async def test_the_live_view_redraws_in_place_and_a_pipe_gets_a_line(
    autojump_clock,
    tmp_path: Path,
) -> None:
    receiver = Receiver(config(tmp_path))
    for n in (0, 1, 3):
        receiver.state.tracker(CMCC).add(n)
    receiver.state.stream_stats(CMCC).received = 3
    screen, pipe = io.StringIO(), io.StringIO()
    with trio.move_on_after(2.5):  # redraws at 1 s and 2 s
        await LiveView(screen, tty=True).run(receiver)
    with trio.move_on_after(10.5):  # one line at 10 s
        await LiveView(pipe, tty=False).run(receiver)
    drawn = screen.getvalue()
    assert drawn.count("\x1b[3F\x1b[J") == 2  # 3 lines up, clear: at 2 s and at exit
    row = next(line for line in drawn.splitlines() if f"{HANDLE}/cmCC" in line)
    assert row.split()[-4:] == ["1", "0", "0", "3"]  # missing, retrieved, dups, last
    assert pipe.getvalue() == f"mediate receive: {HANDLE}/cmCC: 3 PDUs (0/s), 1 missing, last 3\n"


def test_a_corrupt_raw_file_stops_the_start_with_one_line(mediate, tmp_path: Path) -> None:
    case = tmp_path / "out" / HANDLE
    case.mkdir(parents=True)
    (case / "cmcc.raw").write_bytes(b"\x30\x03\x02\x01\x00")  # not a delivery message
    key = str(udp_key_file(tmp_path))
    code, out, err = mediate(
        "--udp", "127.0.0.1:0", "--udp-key", key, "--out", str(tmp_path / "out")
    )
    assert code == 2 and out == ""
    assert err.startswith("mediate: error: --out: ") and "cmcc.raw: byte 0" in err
    assert err.count("\n") == 1
    assert (case / "cmcc.raw").read_bytes() == b"\x30\x03\x02\x01\x00"  # left as it was
