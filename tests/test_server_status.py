"""Status: the control op, `mediate status`, the status line, and a real `mediate serve`."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio
import trio.testing
from delivery_agency import UdpAgency
from delivery_support import TEST_UDP_KEY, Site, cc_pdu, udp_endpoint, wait_until

from mediation import pdu as P
from mediation.cli import status as status_cli
from mediation.errors import UsageError
from mediation.protocol.sealed import DatagramOpener, Direction
from mediation.server.status import EndpointRef, StatusReporter, StatusRow, status_line
from mediation.warrants.keys import write_key_file
from mediation.warrants.model import Endpoint, Stream

UDP = EndpointRef("a-1b2c3d", 1, "udp", "0123456789ab")
TLS = EndpointRef("a-1b2c3d", 2, "tls", "ba9876543210")


def rows() -> list[StatusRow]:
    return [
        StatusRow("w-3f9a1c", "cmCC", UDP, 1237, 1234, None, 3, 3, "receiving"),
        StatusRow("w-3f9a1c", "cmCC", TLS, 1237, 1236, 1230, None, 7, "connected"),
        StatusRow("w-3f9a1c", "cmII", TLS, 12, 12, 12, None, 0, "connecting", "connection lost"),
    ]


def run_status(data_dir: Path, *extra: str) -> tuple[int, str]:
    """`mediate status` in-process (its module, until it is in COMMAND_MODULES)."""
    parser = argparse.ArgumentParser(prog="mediate")
    status_cli.register(parser.add_subparsers())
    args = parser.parse_args(["status", "--data-dir", str(data_dir), *extra])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = args.func(args)
        except UsageError as exc:
            return 2, str(exc)
    return code, out.getvalue()


def test_the_status_line_names_handles_and_endpoint_numbers_and_fits_the_terminal() -> None:
    line = status_line(rows(), 200)
    assert line == (
        "w-3f9a1c cmCC udp#1 sent 1234 lost 3 | w-3f9a1c cmCC tls#2 acked 1230 backlog 7"
        " | w-3f9a1c cmII tls#2 acked 12 backlog 0 connecting"
    )
    short = status_line(rows(), 40)
    assert len(short) == 40 and short.endswith("…")
    assert rows()[2].log_line() == (
        "delivery handle=w-3f9a1c stream=cmII agency=a-1b2c3d endpoint=tls#2 appended=12"
        ' delivered=12 acked=12 backlog=0 state=connecting error="connection lost"'
    )


async def test_the_reporter_redraws_on_a_terminal_and_logs_elsewhere(mock_clock, caplog) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    tty = StatusReporter(rows, interval=1.0, log_interval=10.0, out=terminal)
    plain = StatusReporter(rows, interval=1.0, log_interval=10.0, out=io.StringIO())
    assert tty.tty and not plain.tty
    caplog.set_level("INFO", logger="mediation.server.status")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tty.run)
        nursery.start_soon(plain.run)
        await trio.testing.wait_all_tasks_blocked()  # both asleep from time 0
        for _ in range(10):
            mock_clock.jump(1.0)
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert terminal.getvalue().count("\r\x1b[K") >= 10  # one redraw a second, then wiped
    assert terminal.getvalue().endswith("\r\x1b[K")
    logged = [r.getMessage() for r in caplog.records if r.name == "mediation.server.status"]
    assert logged == [row.log_line() for row in rows()]  # once in ten seconds


async def test_status_op_and_mediate_status(tmp_path: Path) -> None:
    site = Site(tmp_path)
    udp = UdpAgency(interval=0.1)
    handle = site.agency(
        "AGENCY-A",
        udp_endpoint(await udp.bind(), streams=(Stream.CMCC,)),
        Endpoint("tls", "127.0.0.1", 9, (Stream.CMII,), fingerprint="ab" * 32),  # nobody there
    )
    warrant = site.warrant(handle)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(udp.run)
        async with site.server() as server:
            for n in range(10):
                await server.ingest(warrant.handle, "cmCC", cc_pdu(n=n))
            udp_rows = lambda: [r for r in server.delivery_rows() if r.endpoint.transport == "udp"]  # noqa: E731
            await wait_until(
                lambda: udp_rows()[0].state == "receiving" and udp_rows()[0].delivered == 10
            )
            status = await server.handle_request({"op": "status"})
            code, table = await trio.to_thread.run_sync(run_status, site.data)
            code_json, text = await trio.to_thread.run_sync(run_status, site.data, "--json")
        nursery.cancel_scope.cancel()
    by_endpoint = {(r["transport"], r["stream"]): r for r in status["delivery"]}
    udp_row, tls_row = by_endpoint[("udp", "cmCC")], by_endpoint[("tls", "cmII")]
    assert (udp_row["handle"], udp_row["agency"], udp_row["endpoint"]) == (
        warrant.handle,
        handle,
        1,
    )
    assert (udp_row["appended"], udp_row["delivered"], udp_row["lost"], udp_row["backlog"]) == (
        10,
        10,
        0,
        0,
    )
    assert tls_row["endpoint"] == 2 and tls_row["state"] in ("down", "connecting")
    assert tls_row["acknowledged"] == 0 and tls_row["backlog"] == tls_row["appended"] >= 1
    assert code == code_json == 0
    # Two snapshots a moment apart: the unreachable TLS endpoint may move
    # between "down" and "connecting", so compare what cannot change.
    later = json.loads(text)["delivery"]

    def stable(rows: list[dict]) -> set[tuple]:
        return {(r["handle"], r["stream"], r["agency"], r["endpoint"], r["appended"]) for r in rows}

    assert stable(later) == stable(json.loads(json.dumps(status["delivery"])))
    [later_udp] = [r for r in later if r["transport"] == "udp"]
    assert (later_udp["delivered"], later_udp["lost"]) == (10, 0)
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("HANDLE"))
    assert lines[header].split() == list(status_cli.HEADERS)
    assert f"{warrant.handle}  cmCC    {handle}  udp#1" in lines[header + 1]
    assert "127.0.0.1" not in "\n".join(lines[header:])  # endpoints by number, never address
    assert "ingest: accepted 10" in table


def test_mediate_status_without_a_server(tmp_path: Path) -> None:
    code, message = run_status(tmp_path)
    assert code == 2
    assert message == (
        f"status: no server is running on {tmp_path} "
        f"(start one with: mediate serve --data-dir {tmp_path})"
    )


def test_serve_delivers_reports_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """The real command: config file, a UDP agency on ::1, SIGTERM, the log verifies."""
    site = Site(tmp_path)
    key_file = tmp_path / "keys" / "registry.key"
    write_key_file(key_file, site.key)
    agency = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    agency.bind(("::1", 0))
    agency.settimeout(20)
    key = TEST_UDP_KEY
    endpoint = Endpoint(
        "udp", "::1", agency.getsockname()[1], (Stream.CMII,), None, None, key.key_id, key.key
    )
    handle = site.agency("AGENCY-A", endpoint)
    warrant = site.warrant(handle, "CASE-SECRET-01")
    config = tmp_path / "mediation.toml"
    config.write_text('[retrieval]\nlisten = "127.0.0.1:0"\n[status]\nlog_interval = 0.2\n')
    env = {**os.environ, "MEDIATION_DATA_DIR": str(site.data), "MEDIATION_KEY_FILE": str(key_file)}
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mediation", "serve", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        data, _ = agency.recvfrom(65536)  # the warrantActive notice, first of all
        opener = DatagramOpener([key], Direction.SERVER_TO_AGENCY)
        envelope = P.decode_delivery(opener.open(data).message)
        assert envelope.stream == P.StreamId(warrant.handle, P.StreamKind.CMII)
        assert envelope.content.event is P.CompletenessEvent.WARRANT_ACTIVE
        deadline = time.monotonic() + 20
        while "delivery handle=" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        agency.close()
    text = log_path.read_text()
    assert "SIGTERM: stopping" in text and text.rstrip().endswith("stopped")
    assert f"delivery handle={warrant.handle} stream=cmII agency={handle} endpoint=udp#1" in text
    for secret in ("::1", "CASE-SECRET-01", "AGENCY-A"):
        assert secret not in text, secret
    assert (site.data / "tls" / "server.key").stat().st_mode & 0o777 == 0o600
    verify = subprocess.run(
        [sys.executable, "-m", "mediation", "log", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"{warrant.handle}/cmii:" in verify.stdout
