"""Capture-to-disk under SIGKILL: a real ``mediate serve`` killed while it writes the files.

The tap streams the sample (repeated) over the TLS tap link into the
server; the server is killed twice while capture files are open, and
restarted. Afterwards every file verifies (``sha256sum -c``, the signed
manifest), no file has two manifest lines, none is left half-written, and
together they hold exactly the log's records, in order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from taplink_support import CONFIG, add_tapped_warrant, long_capture, stored, tap_command
from test_control_live import wait_for
from test_serve_process import Serve
from test_warrants_support import AGENCY, Carrier

from mediation.evidence.manifest import MANIFEST, verify_manifest
from mediation.evidence.pcap import PcapReader
from mediation.lea import rawfile
from mediation.log.keys import load_public_key, public_key_path
from mediation.pdu import StreamKind, fast


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    return carrier


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lines(directory: Path) -> int:
    path = directory / MANIFEST
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _files_rows(server: Serve) -> list[dict]:
    rows = (server.status() or {}).get("delivery") or []
    return [r for r in rows if r["transport"] == "files"]


def _all_written(server: Serve, ended: bool) -> bool:
    rows = _files_rows(server)
    return ended and len(rows) == 2 and all(r["delivered"] == r["appended"] for r in rows)


def test_sigkill_while_writing_leaves_nothing_that_verifies_wrongly(
    carrier: Carrier, tmp_path: Path
) -> None:
    out = tmp_path / "capture"
    carrier.ok("agency", "add", AGENCY, "--files", str(out))
    handle = add_tapped_warrant(carrier)
    directory = out / handle
    capture = long_capture(tmp_path / "long.pcap", repeat=200)  # 6400 frames
    port = _free_port()
    config = tmp_path / "killed.toml"
    config.write_text(
        CONFIG.replace('tls_listen = "127.0.0.1:0"', f'tls_listen = "127.0.0.1:{port}"')
        + "[files]\nrotate_bytes = 16384\n"
    )
    server = Serve(carrier, config, "serve-0.log")
    # Paced (8 s of frames), so each kill finds the server in mid-stream: at full
    # speed a fast tap could be done and every file closed before the first kill.
    command = tap_command(
        carrier, f"127.0.0.1:{port}", "--read", str(capture), "--speed", "800", "--batch", "16"
    )
    tap = subprocess.Popen(
        command, env={**os.environ, **carrier.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    open_at_kill = []
    try:
        for round in range(1, 5):  # two kills; more (while the tap runs) until one cut a file
            if round > 2 and (open_at_kill or tap.poll() is not None):
                break
            seen = _lines(directory)
            wait_for(lambda n=seen: _lines(directory) >= n + 2, "files closed before the kill", 60)
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(timeout=10)
            open_at_kill += [p.name for p in directory.glob(".*.part") if p.stat().st_size]
            server = Serve(carrier, config, f"serve-{round}.log")
        output, _ = tap.communicate(timeout=120)
        assert tap.returncode == 0, output
        wait_for(lambda: _all_written(server, True), "everything written", 60)
        server.proc.send_signal(signal.SIGTERM)  # a clean stop closes the open files
        assert server.proc.wait(timeout=30) == 0
    finally:
        if tap.poll() is None:
            tap.kill()
        server.stop()

    assert open_at_kill  # the kills did cut files being written
    report = verify_manifest(
        (directory / MANIFEST).read_bytes(), load_public_key(public_key_path(carrier.data))
    )
    assert report.ok, report.faults
    entries = list(report.entries)
    names = [e["file"] for e in entries]
    assert len(names) == len(set(names)) > 10  # never two lines for one file
    assert all(e["complete"] for e in entries)
    assert not list(directory.glob(".*.part"))
    hashes = sorted(p.name for p in directory.glob("*.sha256"))
    assert len(hashes) == len(entries)
    check = subprocess.run(
        ["sha256sum", "-c", *hashes], cwd=directory, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    for entry in entries:
        assert (directory / entry["file"]).stat().st_size == entry["size"]

    logged = stored(carrier, handle)
    # CmCC: the pcap files, in sequence order, hold exactly the log's packets.
    pcaps = sorted((e for e in entries if e["format"] == "pcap"), key=lambda e: e["first_seq"])
    _assert_contiguous(pcaps, len(logged[StreamKind.CMCC]))
    packets = []
    for entry in pcaps:
        with PcapReader.open(directory / entry["file"]) as reader:
            packets.extend(packet.data for packet in reader)
    assert packets == [fast.decode_cc(der).payload for der in logged[StreamKind.CMCC]]
    # CmII: the BER files hold every envelope once, in order; the JSON lines match.
    bers = sorted((e for e in entries if e["format"] == "ber"), key=lambda e: e["first_seq"])
    jsonls = sorted((e for e in entries if e["format"] == "jsonl"), key=lambda e: e["first_seq"])
    assert [(e["first_seq"], e["last_seq"]) for e in bers] == [
        (e["first_seq"], e["last_seq"]) for e in jsonls
    ]
    sequences, contents = [], []
    for entry in bers:
        path = directory / entry["file"]
        messages, torn = rawfile.scan(path)
        assert torn == 0
        for data in rawfile.read_in_order(path, messages):
            split = fast.split_envelope(data)
            sequences.append(split.sequence_number)
            contents.append(split.content_der)
    assert sequences == list(range(len(sequences)))
    cmii = [der for der in contents if der in set(logged[StreamKind.CMII])]
    assert cmii == logged[StreamKind.CMII]


def _assert_contiguous(entries: list[dict], count: int) -> None:
    expected = 0
    for entry in entries:
        assert entry["first_seq"] == expected, entry
        expected = entry["last_seq"] + 1
    assert expected == count
