"""Case data off the command line: ``--from FILE``, stdin, the prompt, and the warning.

Also: options meant once are refused when repeated (never the last kept).
Every refusal is one line naming the field as the user gave it, exit 2,
and leaves the data directory byte for byte as it was.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_warrants_support import (
    AGENCY,
    CASE,
    COURT_REF,
    TARGET_MAC,
    TARGET_V4,
    Carrier,
    error_line,
)

from mediation.cli.casedata import FILE_LIMIT
from mediation.lea.tls import make_agency_certificate

CASE_FILE = f"""\
case-id = "{CASE}"
agency = "{AGENCY}"
target = ["{TARGET_V4}", "{TARGET_MAC}"]
content = "full"
court-ref = "{COURT_REF}"
end = "2999-01-01"
"""


@pytest.fixture
def carrier(tmp_path, monkeypatch) -> Carrier:
    c = Carrier(tmp_path, monkeypatch)
    c.setup()
    return c


def _write(carrier: Carrier, text: str | bytes, name: str = "case.toml") -> str:
    path = carrier.tmp / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("mediate: warning: ")]


def _shown(carrier: Carrier, handle: str) -> dict:
    return json.loads(carrier.ok("show", handle, "--json"))


# The safe ways -----------------------------------------------------------------


def test_add_from_a_file_registers_the_warrant_without_a_warning(carrier: Carrier) -> None:
    run = carrier("add", "--from", _write(carrier, CASE_FILE + 'tap = "edge-1"\n'))
    assert run.code == 0 and run.err == "", run.err
    shown = _shown(carrier, run.out.splitlines()[0])
    assert (shown["case_id"], shown["court_ref"], shown["content"]) == (CASE, COURT_REF, "full")
    assert shown["targets"] == [TARGET_V4, TARGET_MAC] and shown["sources"] == ["tap:edge-1"]
    assert shown["end"] == "2999-01-01T00:00:00Z"


def test_add_from_stdin(carrier: Carrier, monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, CASE_FILE.replace('end = "2999-01-01"\n', "").encode())
    run = carrier("add", "--from", "-")
    assert run.code == 0 and run.err == "", run.err
    assert "30 days after the start" in run.out  # no end in the file: the default, said
    assert _shown(carrier, run.out.splitlines()[0])["case_id"] == CASE


def test_a_byte_order_mark_is_not_an_error(carrier: Carrier) -> None:
    run = carrier("add", "--from", _write(carrier, b"\xef\xbb\xbf" + CASE_FILE.encode()))
    assert run.code == 0 and run.err == "", run.err


def test_modify_from_a_file(carrier: Carrier) -> None:
    handle = carrier.add()
    changes = (
        'case-id = "CASE-0002"\nadd-target = "198.51.100.0/24"\nremove-target = ["192.0.2.10"]\n'
    )
    run = carrier("modify", handle, "--from", _write(carrier, changes))
    assert run.code == 0 and run.err == "", run.err
    assert run.out.splitlines()[0] == f"{handle} modified: case_id, targets"
    shown = _shown(carrier, handle)
    assert shown["case_id"] == "CASE-0002" and "198.51.100.0/24" in shown["targets"]
    assert TARGET_V4 not in shown["targets"]


def test_agency_add_from_a_file_with_a_ca_beside_it(carrier: Carrier) -> None:
    folder = carrier.tmp / "agency-x"
    folder.mkdir()
    made = make_agency_certificate(carrier.tmp / "agency-cert")  # the agency's own
    (folder / "ca.pem").write_bytes(made.cert_path.read_bytes())
    path = folder / "agency.toml"
    path.write_text('name = "AGENCY-TEST-9"\ntls = "203.0.113.9:6543"\nca = "ca.pem"\n')
    run = carrier("agency", "add", "--from", str(path))  # ca.pem: relative to the file
    assert run.code == 0 and run.err == "", run.err
    assert "added: endpoint 1: tls 203.0.113.9:6543" in run.out
    assert json.loads(carrier.ok("agency", "show", "AGENCY-TEST-9", "--json"))["endpoints"]


def test_with_from_the_case_data_is_never_in_the_process_arguments(carrier: Carrier) -> None:
    """A real process: its /proc/PID/cmdline, read while it waits on stdin, holds no case data."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mediation", "add", "-q", "--from", "-"],
        env={**os.environ, **carrier.env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        cmdline = b""
        deadline = time.monotonic() + 10
        while b"--from" not in cmdline and time.monotonic() < deadline:  # until it has exec'd
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"--from" in cmdline
        assert proc.poll() is None  # still waiting for the case file on stdin
        out, err = proc.communicate(CASE_FILE.encode(), timeout=30)
    finally:
        proc.kill()
        proc.wait()
    for secret in (CASE, AGENCY, TARGET_V4, TARGET_MAC, COURT_REF):
        assert secret.encode() not in cmdline
    assert proc.returncode == 0 and err == b"", err
    assert _shown(carrier, out.decode().strip())["case_id"] == CASE


class _Terminal(io.StringIO):
    """Typed answers on what looks like a terminal."""

    def isatty(self) -> bool:
        return True


def test_add_asks_on_a_terminal_for_what_is_missing(
    carrier: Carrier, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = f"{CASE}\n{AGENCY}\n{TARGET_V4}\n{TARGET_MAC}\n\nheaders\n"
    monkeypatch.setattr("sys.stdin", _Terminal(answers))
    run = carrier("add", "--end", "2999-01-01")
    assert run.code == 0, run.err
    handle = run.out.splitlines()[0]  # the questions went to stderr, not into the handle
    assert handle.startswith("w-") and "case id: " in run.err and "targets (one a line" in run.err
    assert not _warnings(run.err)
    shown = _shown(carrier, handle)
    assert (shown["case_id"], shown["content"]) == (CASE, "headers")
    assert shown["targets"] == [TARGET_V4, TARGET_MAC]


def test_a_bad_answer_is_named_as_the_prompt(
    carrier: Carrier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", _Terminal(f"{'X' * 26}\n{AGENCY}\n{TARGET_V4}\n\nfull\n"))
    before = carrier.files()
    run = carrier("add")
    last = run.err.splitlines()[-1]  # after the questions (on a terminal, after the answers)
    assert "mediate: error: prompt: case-id: must be 1 to 25" in last and run.code == 2
    assert carrier.files() == before


def test_a_real_terminal_is_asked(carrier: Carrier) -> None:
    """A real process on a pseudo-terminal: the answers reach it, never its arguments."""
    import pty

    main_fd, term_fd = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mediation", "add", "-q", "--end", "2999-01-01"],
            env={**os.environ, **carrier.env},
            stdin=term_fd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.write(main_fd, f"{CASE}\n{AGENCY}\n{TARGET_V4}\n\nfull\n".encode())
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(main_fd)
        os.close(term_fd)
    assert proc.returncode == 0, err
    assert b"case id: " in err and b"warning" not in err
    assert _shown(carrier, out.decode().strip())["targets"] == [TARGET_V4]


def test_without_a_terminal_nothing_is_asked(carrier: Carrier) -> None:
    run = carrier("add", "--agency", AGENCY, "--target", TARGET_V4, "--content", "full")
    assert "--case-id: required" in error_line(run)  # stdin is not a terminal here
    assert "case id: " not in run.err


# The warning -------------------------------------------------------------------


def test_case_data_on_the_command_line_works_and_warns_once(carrier: Carrier) -> None:
    run = carrier("add", "--case-id", CASE, "--agency", AGENCY, "--target", TARGET_V4,
                  "--content", "full", "--iap", "IAP-1")  # fmt: skip
    assert run.code == 0 and run.out.startswith("w-")
    [warning] = _warnings(run.err)
    assert run.err == warning + "\n"
    assert "(--case-id, --agency, --target, --iap)" in warning and "--from FILE" in warning
    assert CASE not in run.err and TARGET_V4 not in run.err


def test_what_reveals_nothing_is_not_warned_about(carrier: Carrier) -> None:
    """The content level, the window and handles are not case data."""
    agency = json.loads(carrier.ok("agency", "show", AGENCY, "--json"))["handle"]
    path = _write(carrier, f'case-id = "{CASE}"\ntarget = "{TARGET_V4}"\n')
    run = carrier(
        "add", "--from", path, "--agency", agency, "--content", "full", "--end", "2999-01-01"
    )
    assert run.code == 0 and run.err == "", run.err
    handle = run.out.splitlines()[0]
    run = carrier("modify", handle, "--end", "2999-02-01", "--content", "headers")
    assert run.code == 0 and run.err == "", run.err
    run = carrier("modify", handle, "--add-target", "192.0.2.99")
    assert run.code == 0 and "(--add-target)" in _warnings(run.err)[0]
    assert carrier("agency", "show", agency).err == ""


def test_agency_commands_warn_about_names_and_addresses(carrier: Carrier) -> None:
    run = carrier("agency", "add", "AGENCY-TEST-2", "--udp", "198.51.100.7:5555")
    assert run.code == 0 and "(NAME, --udp)" in _warnings(run.err)[0]
    handle = run.out.split()[0]
    run = carrier("agency", "show", "AGENCY-TEST-2")
    assert run.code == 0 and "by its handle" in _warnings(run.err)[0]
    run = carrier("agency", "remove", AGENCY, "--endpoint", "1")  # the first: udp
    assert run.code == 0 and "1 left" in run.out and "(NAME)" in _warnings(run.err)[0]
    [left] = json.loads(carrier.ok("agency", "show", AGENCY, "--json"))["endpoints"]
    assert left.startswith("tls ")
    # The agency by its handle, an endpoint by its number: nothing to warn about.
    run = carrier("agency", "add", handle, "--udp", "198.51.100.7:5556", "--streams", "cmii")
    assert run.code == 0 and "(--udp)" in _warnings(run.err)[0]
    run = carrier("agency", "remove", handle, "--endpoint", "2")
    assert run.code == 0 and run.err == "", run.err
    run = carrier("agency", "remove", handle, "--endpoint", "2")
    assert "--endpoint: no endpoint 2; the agency has 1" in error_line(run)
    assert carrier("agency", "show", handle).err == ""


# Refusals ----------------------------------------------------------------------

FILE_REFUSALS = [
    (CASE_FILE.replace(CASE, "X" * 26), "case.toml: case-id: must be 1 to 25"),
    (CASE_FILE.replace(TARGET_MAC, "192.0.2.256"), "case.toml: target #2: is not an IPv4"),
    (CASE_FILE.replace('"full"', "3"), 'case.toml: content: must be a string ("…")'),
    (
        CASE_FILE.replace('target = ["', 'target = [1, "'),
        "case.toml: target: must be a string or a list",
    ),
    (CASE_FILE + "[warrant]\n", "case.toml: warrant: not a field of this command; use case-id"),
    (CASE_FILE + "CASE 1 = 1\n", "case.toml: not valid TOML: "),
    (CASE_FILE.replace(f'"{AGENCY}"', '"NO-SUCH-AGENCY"'), "case.toml: agency: no such agency"),
    (CASE_FILE.replace('"2999-01-01"', '"2000-01-01"'), "case.toml: end: is in the past"),
    (CASE_FILE + 'tap = ["edge-9"]\n', "case.toml: tap #1: no tap by that name"),
    (CASE_FILE.replace("case-id", "# case-id"), "--case-id: required"),
    (CASE_FILE.encode() + b'note = "\xff"\n', "case.toml: not UTF-8 text"),
    (b"# " + b"x" * FILE_LIMIT + b"\n", "case.toml: larger than 64 KiB"),
]


@pytest.mark.parametrize(("text", "expected"), FILE_REFUSALS, ids=[r[1] for r in FILE_REFUSALS])
def test_case_file_refusals_name_the_file_and_key(
    carrier: Carrier, text: str | bytes, expected: str
) -> None:
    carrier.add("--end", "2999-01-01")  # so that "already used" and the like have something to hit
    path = _write(carrier, text)
    before = carrier.files()
    run = carrier("add", "--from", path)
    assert run.code == 2
    assert error_line(run).startswith("mediate: error: ") and expected in run.err.replace(
        path, "case.toml"
    )
    assert CASE not in run.err and "192.0.2.256" not in run.err and "X" * 26 not in run.err
    assert carrier.files() == before


def test_a_case_file_clash_and_an_unreadable_file_are_refused(carrier: Carrier) -> None:
    handle = carrier.add()
    path = _write(carrier, CASE_FILE)
    before = carrier.files()
    cases = [
        (["add", "--from", path, "--case-id", "CASE-0003"], "--case-id: given both on the"),
        (["add", "--from", path, "--target", "192.0.2.3"], "--target: given both"),
        (["add", "--from", str(carrier.tmp / "missing.toml")], "--from: cannot read"),
        (["modify", handle, "--from", path], "case.toml: agency: not a field of this command"),
        (["agency", "add", "--from", path], "case.toml: case-id: not a field of this command"),
        (["agency", "add", "--udp", "203.0.113.5:5555"], "NAME: must be 1 to 64"),
    ]  # fmt: skip
    for argv, expected in cases:
        run = carrier(*argv)
        assert run.code == 2 and expected in error_line(run).replace(path, "case.toml"), (
            argv,
            run.err,
        )
    assert carrier.files() == before


AGENCY_ADD = ["agency", "add", "AGENCY-X"]
UDP = [*AGENCY_ADD, "--udp", "203.0.113.5:5555"]
ADD = ["add", "--case-id", CASE, "--agency", AGENCY, "--target", TARGET_V4]
REPEATS = [
    ([*UDP, "--udp", "203.0.113.5:5556"], "--udp: given more than once; one endpoint per command"),
    ([*AGENCY_ADD, "--tls", "203.0.113.5:1", "--tls", "203.0.113.5:2"], "--tls: given more"),
    ([*UDP, "--streams", "cmii", "--streams", "cmcc"], "--streams: given more than once"),
    ([*ADD, "--case-id", "CASE-0002"], "--case-id: given more than once"),
    ([*ADD, "--agency", "AGENCY-2"], "--agency: given more than once"),
    ([*ADD, "--end", "2999-01-01", "--end", "2999-02-01"], "--end: given more than once"),
    (["add", "--from", "a.toml", "--from", "b.toml"], "--from: given more than once"),
    (["modify", "w-000000", "--note", "A", "--note", "B"], "--note: given more than once"),
    (["list", "--data-dir", "/tmp/a", "--data-dir", "/tmp/b"], "--data-dir: given more"),
    (["list", "--key-file", "/tmp/a", "--key-file", "/tmp/b"], "--key-file: given more"),
    (["agency", "remove", AGENCY, "--endpoint", "1", "--endpoint", "2"], "--endpoint: given"),
    (["receive", "--udp", "127.0.0.1:1", "--udp", "127.0.0.1:2"], "--udp: given more than once"),
    (["receive", "--out", "a", "--out", "b"], "--out: given more than once"),
    (["receive", "--cert", "a.pem", "--cert", "b.pem"], "--cert: given more than once"),
    (["receive", "--key", "a.pem", "--key", "b.pem"], "--key: given more than once"),
    (["receive", "--server-ca", "a.pem", "--server-ca", "b.pem"], "--server-ca: given more"),
    (
        ["receive", "--server-fingerprint", "ab" * 32, "--server-fingerprint", "cd" * 32],
        "--server-fingerprint: given more than once",
    ),
]


@pytest.mark.parametrize(("argv", "expected"), REPEATS, ids=[r[1] for r in REPEATS])
def test_an_option_meant_once_is_refused_when_repeated(
    carrier: Carrier, argv: list[str], expected: str
) -> None:
    """11(d): argparse kept the last of a repeated --udp silently; now it is refused."""
    before = carrier.files()
    run = carrier(*argv)
    assert run.code == 2 and expected in error_line(run)
    assert carrier.files() == before


def test_an_option_with_a_default_may_still_be_given_once() -> None:
    """The default is not an occurrence: ``--out DIR`` once is fine, and replaces it."""
    from mediation.cli.main import build_parser

    assert build_parser().parse_args(["receive", "--out", "elsewhere"]).out == "elsewhere"
    assert build_parser().parse_args(["list", "--data-dir", "/tmp/d"]).data_dir == "/tmp/d"
