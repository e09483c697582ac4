"""The seed's tap command line and the encrypted tap file (mediate tap -i / edit / show-config)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mediation.cli.main import build_parser, main
from mediation.errors import UsageError
from mediation.tap.tapconfig import (
    TapConfig,
    load_tap_key,
    open_tap_file,
    read_tap_file,
    seal_tap_file,
)
from mediation.warrants.authority import TapCredentials, write_bundle
from mediation.warrants.model import ContentLevel

CASE = "CASE-TEST-0001"
IAP = "IAP-TEST-01"
CONTENT = "CONTENT-TEST-7"
MAC = "02:00:5e:00:53:01"
SEED = ["-i", "eth0", "-x", CONTENT, "-y", CASE, "-z", IAP, "-d", "203.0.113.5"]
GOOD = textwrap.dedent(
    f"""\
    # the intercept for the test
    interface = "eth1"
    content-id = "{CONTENT}"
    case-id = "{CASE}"
    iap-id = "{IAP}"
    destination = "198.51.100.7"
    content = "full"
    cmc-port = 7001
    cmii-port = 7000
    filter = "ether host {MAC}"
    """
)


def credentials(path: Path, key: bytes = bytes(range(32))) -> Path:
    """A tap credentials file; only its key matters here (the PEMs are placeholders)."""
    write_bundle(
        path,
        TapCredentials("edge-1", "CERT", "KEY", "CA", key, "mediation.example.net:4443"),
    )
    return path


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    return credentials(tmp_path / "edge-1.tap")


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[tuple[TapConfig, Path]]:
    """run_tap replaced by a recorder: the CLI's job ends at handing it the config."""
    calls: list[tuple[TapConfig, Path]] = []

    def record(
        config: TapConfig, credentials_path: Path, source: Path | None = None, paced: bool = True
    ) -> int:
        assert source is None and paced  # no --read in these tests: a live capture
        calls.append((config, credentials_path))
        return 0

    monkeypatch.setattr("mediation.tap.runner.run_tap", record)
    monkeypatch.setattr("sys.stdin", io.StringIO())
    return calls


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- the seed's command line -------------------------------------------------------


def test_seed_form_builds_the_config_and_warns_once(
    creds: Path, ran: list, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tap", *SEED, "-c", "-m", "7001", "-n", "7000", "-f", f"ether host {MAC}"]
    code, _, err = run(capsys, *argv, "--credentials", str(creds))
    assert code == 0
    ((config, path),) = ran
    assert path == creds
    assert config == TapConfig(
        "eth0",
        CONTENT,
        CASE,
        IAP,
        "203.0.113.5",
        ContentLevel.FULL,
        7001,
        7000,
        f"ether host {MAC}",
    )
    assert CASE not in repr(config) and IAP not in repr(config) and MAC not in repr(config)
    (line,) = err.strip().splitlines()
    assert line.startswith("mediate: warning: case data on the command line (-x, -y, -z, -f)")
    assert "mediate tap edit FILE" in line and "mediate tap run --config FILE" in line
    assert CASE not in err


def test_seed_defaults_headers_only(creds: Path, ran: list, capsys) -> None:
    code, _, _ = run(capsys, "tap", *SEED, "--credentials", str(creds))
    assert code == 0
    config = ran[0][0]
    assert (config.content, config.cmc_port, config.cmii_port, config.filter) == (
        ContentLevel.HEADERS,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("change", "field", "fix"),
    [
        (["-i", "eth/0"], "-i", "interface name must be 1 to 15"),
        (["-x", ""], "-x", "1 to 64 visible ASCII"),
        (["-x", "has space"], "-x", "no spaces"),
        (["-y", "C" * 26], "-y", "1 to 25 visible ASCII"),
        (["-z", "I" * 16], "-z", "1 to 15 visible ASCII"),
        (["-d", "not a host!"], "-d", "host must be an IP address or a DNS name"),
        (["-n", "0"], "-n", "port number, 1 to 65535"),
        (["-n", "65536"], "-n", "port number, 1 to 65535"),
        (["-n", "http"], "-n", "port number, 1 to 65535"),
        (["-m", "7001"], "-m", "add -c or leave the port out"),
        (["-f", "host 192.0.2.10 and"], "-f", "libpcap cannot compile it: "),
        (["-f", "ether host 02:00:5e:00:53:zz"], "-f", "libpcap cannot compile it: "),
        (["-f", "  "], "-f", "tcpdump filter of 1 to 4096"),
    ],
)
def test_seed_refusals_name_the_flag(
    creds: Path, ran: list, capsys, change: list[str], field: str, fix: str
) -> None:
    argv = list(SEED)
    if change[0] in argv:
        argv[argv.index(change[0]) + 1] = change[1]
    else:
        argv += change
    code, _, err = run(capsys, "tap", *argv, "--credentials", str(creds))
    assert code == 2 and not ran
    (line,) = err.strip().splitlines()
    assert line.startswith(f"mediate: error: {field}: ") and fix in line
    # The refused value is never repeated (a filter names the target).
    for secret in ("192.0.2.10", "02:00:5e:00:53", "C" * 26, "I" * 16, "has space"):
        assert secret not in line


def test_seed_missing_fields_and_credentials(creds: Path, ran: list, capsys, tmp_path) -> None:
    without_y = [a for a in SEED if a not in ("-y", CASE)]
    code, _, err = run(capsys, "tap", *without_y, "--credentials", str(creds))
    assert code == 2 and "-y: required: the case identity" in err
    code, _, err = run(capsys, "tap", *SEED)
    assert code == 2 and "--credentials: required" in err
    code, _, err = run(capsys, "tap", *SEED, "--credentials", str(tmp_path / "none.tap"))
    assert code == 2 and "--credentials: cannot read" in err
    (tmp_path / "bad.tap").write_text("not = 'a bundle'\n")
    code, _, err = run(capsys, "tap", *SEED, "--credentials", str(tmp_path / "bad.tap"))
    assert code == 2 and "is not a tap credentials file" in err
    assert not ran


def test_bare_tap_asks_for_an_action(capsys) -> None:
    code, _, err = run(capsys, "tap")
    assert code == 2 and "give an action (register, list" in err


def test_seed_form_and_actions_coexist() -> None:
    from mediation.cli import tap, tap_config

    parser = build_parser()
    assert parser.parse_args(["tap", *SEED]).func is tap_config.cmd_tap_seed
    assert parser.parse_args(["tap", "list"]).func is tap.cmd_tap_list
    assert parser.parse_args(["tap", "revoke", "edge-1"]).func is tap.cmd_tap_revoke
    args = parser.parse_args(["tap", "edit", "x.conf", "--credentials", "c.tap"])
    assert args.func is tap_config.cmd_tap_edit and args.credentials == "c.tap"
    args = parser.parse_args(["tap", "show-config", "x.conf", "--credentials", "c.tap"])
    assert args.func is tap_config.cmd_tap_show_config


def test_seed_flags_with_an_action_are_refused(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["tap", "-y", CASE, "list"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "list: the seed flags (-i, -x, ...) take no action" in err and CASE not in err


# -- the tap file ------------------------------------------------------------------

EDITOR = textwrap.dedent(
    """\
    import os, stat, sys
    from pathlib import Path
    path = Path(sys.argv[-1])
    log = Path(os.environ["EDIT_LOG"])
    count = len(log.read_text().splitlines()) if log.exists() else 0
    mode = stat.S_IMODE(path.stat().st_mode)
    with log.open("a") as out:
        out.write(f"{path} {mode:o} {os.environ.get('TMPDIR')}\\n")
    Path(os.environ["EDIT_SEEN"] + str(count)).write_text(path.read_text())
    texts = os.environ["EDIT_TEXTS"].split("@@NEXT@@")
    path.write_text(texts[min(count, len(texts) - 1)])
    sys.exit(int(os.environ.get("EDIT_EXIT", "0")))
    """
)


def editor_env(tmp_path: Path, *texts: str, status: int = 0) -> dict[str, str]:
    script = tmp_path / "editor.py"
    script.write_text(f"#!{sys.executable}\n" + EDITOR)
    script.chmod(0o755)
    (tmp_path / "edit.log").unlink(missing_ok=True)
    return {
        "EDITOR": str(script),
        "EDIT_LOG": str(tmp_path / "edit.log"),
        "EDIT_SEEN": str(tmp_path / "seen"),
        "EDIT_TEXTS": "@@NEXT@@".join(texts),
        "EDIT_EXIT": str(status),
        "PYTHONPATH": str(Path(__file__).parent.parent),
    }


def mediate(env: dict[str, str], *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mediation", *argv],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )


def test_edit_creates_an_encrypted_file_via_memory_only(tmp_path: Path, creds: Path) -> None:
    env = editor_env(tmp_path, GOOD)
    conf = tmp_path / "edge.conf"
    done = mediate(env, "tap", "edit", str(conf), "--credentials", str(creds))
    assert done.returncode == 0, done.stderr
    raw = conf.read_bytes()
    assert conf.stat().st_mode & 0o777 == 0o600
    for secret in (CASE, IAP, CONTENT, MAC):
        assert secret.encode() not in raw
    # The editor got a 0600 file in a private directory on the /dev/shm tmpfs, gone now.
    (entry,) = (tmp_path / "edit.log").read_text().splitlines()
    draft, mode, tmpdir = entry.split()
    assert draft.startswith("/dev/shm/mediate-tap-") and mode == "600"
    assert tmpdir == str(Path(draft).parent)
    assert not Path(draft).parent.exists()
    assert "# A mediate tap file" in (tmp_path / "seen0").read_text()  # the new-file template
    config = read_tap_file(conf, creds)
    assert config == TapConfig(
        "eth1",
        CONTENT,
        CASE,
        IAP,
        "198.51.100.7",
        ContentLevel.FULL,
        7001,
        7000,
        f"ether host {MAC}",
    )
    # Editing again shows the saved text, comments and all.
    changed = GOOD.replace('"eth1"', '"eth2"')
    done = mediate(
        editor_env(tmp_path, changed), "tap", "edit", str(conf), "--credentials", str(creds)
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "seen0").read_text() == GOOD
    assert read_tap_file(conf, creds).interface == "eth2"
    assert open_tap_file(conf, load_tap_key(creds)) == changed


def test_invalid_edit_off_a_terminal_is_refused_and_keeps_the_old_file(
    tmp_path: Path, creds: Path
) -> None:
    conf = tmp_path / "edge.conf"
    conf.write_bytes(seal_tap_file(load_tap_key(creds), GOOD))
    before = conf.read_bytes()
    bad = GOOD.replace(CASE, "C" * 30)
    done = mediate(editor_env(tmp_path, bad), "tap", "edit", str(conf), "--credentials", str(creds))
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert f"{conf}: case-id: must be 1 to 25" in line and "left unchanged" in line
    assert "C" * 30 not in line
    assert conf.read_bytes() == before
    for text, problem in (
        ("interface = \n", "not valid TOML"),
        (GOOD + "colour = 'red'\n", "colour: not a tap setting"),
        (GOOD.replace("7000", "0"), "cmii-port: must be a port number"),
        (GOOD.replace(f'"{CASE}"', "5"), 'case-id: must be a string ("…")'),
        (GOOD.replace('"full"', '"headers"'), "cmc-port: a content port without full content"),
        (GOOD.replace(f"ether host {MAC}", "ether host"), "filter: libpcap cannot compile"),
    ):
        done = mediate(
            editor_env(tmp_path, text), "tap", "edit", str(conf), "--credentials", str(creds)
        )
        assert done.returncode == 2 and problem in done.stderr, done.stderr
        assert conf.read_bytes() == before


def test_editor_failure_and_no_change_write_nothing(tmp_path: Path, creds: Path) -> None:
    conf = tmp_path / "edge.conf"
    env = editor_env(tmp_path, GOOD, status=3)
    done = mediate(env, "tap", "edit", str(conf), "--credentials", str(creds))
    assert done.returncode == 2 and "exited with status 3; nothing saved" in done.stderr
    assert not conf.exists()
    conf.write_bytes(seal_tap_file(load_tap_key(creds), GOOD))
    before = conf.read_bytes()
    done = mediate(
        editor_env(tmp_path, GOOD), "tap", "edit", str(conf), "--credentials", str(creds)
    )
    assert done.returncode == 0 and "no change" in done.stderr
    assert conf.read_bytes() == before


def test_edit_into_a_missing_directory_is_refused_first(
    tmp_path: Path, creds: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("EDITOR", str(tmp_path / "never-run"))
    code, _, err = run(
        capsys, "tap", "edit", str(tmp_path / "no" / "x.conf"), "--credentials", str(creds)
    )
    assert code == 2 and "FILE: " in err and "is not a directory; create it first" in err


def test_invalid_edit_on_a_terminal_asks_to_edit_again(tmp_path: Path, creds: Path) -> None:
    conf = tmp_path / "edge.conf"
    bad = GOOD.replace(IAP, "I" * 20)
    env = editor_env(tmp_path, bad, GOOD)
    master, slave = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "mediation", "tap", "edit", str(conf), "--credentials", str(creds)],
        env={**os.environ, **env},
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while b"edit again? [Y/n]" not in seen and time.monotonic() < deadline:
        if select.select([master], [], [], 1)[0]:
            seen += os.read(master, 4096)
    assert b"iap-id: must be 1 to 15" in seen and b"I" * 20 not in seen
    os.write(master, b"y\n")
    assert child.wait(timeout=60) == 0
    os.close(master)
    assert read_tap_file(conf, creds).iap_id == IAP
    assert (tmp_path / "seen1").read_text() == bad  # the second edit starts from the first's text


def test_wrong_credentials_and_damage_are_refused(tmp_path: Path, creds: Path) -> None:
    conf = tmp_path / "edge.conf"
    conf.write_bytes(seal_tap_file(load_tap_key(creds), GOOD))
    other = credentials(tmp_path / "other.tap", bytes(32))
    with pytest.raises(UsageError, match=r"written with other credentials; give the NAME\.tap"):
        read_tap_file(conf, other)
    raw = bytearray(conf.read_bytes())
    raw[-1] ^= 1
    conf.write_bytes(bytes(raw))
    with pytest.raises(UsageError, match="not a tap file or was damaged"):
        read_tap_file(conf, creds)
    conf.write_text(GOOD)  # a clear-text file is not a tap file
    with pytest.raises(UsageError, match="not a tap file"):
        read_tap_file(conf, creds)


def test_show_config_hides_case_data_unless_revealed(
    tmp_path: Path, creds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "edge.conf"
    conf.write_bytes(seal_tap_file(load_tap_key(creds), GOOD))
    code, out, _ = run(capsys, "tap", "show-config", str(conf), "--credentials", str(creds))
    assert code == 0
    assert "interface = 'eth1'" in out and "content = 'full'" in out and "cmii-port = 7000" in out
    assert "# case-id = (set, 14 characters" in out
    for secret in (CASE, IAP, CONTENT, MAC):
        assert secret not in out
    code, out, _ = run(
        capsys, "tap", "show-config", str(conf), "--credentials", str(creds), "--reveal"
    )
    assert code == 0 and out == GOOD


def test_real_credentials_from_tap_register(tmp_path: Path, monkeypatch) -> None:
    """The key comes from a bundle `mediate tap register` wrote."""
    from tests.test_warrants_support import Carrier

    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    bundle = tmp_path / "edge-1.tap"
    key = load_tap_key(bundle)
    assert len(key) == 32
    conf = tmp_path / "edge.conf"
    conf.write_bytes(seal_tap_file(key, GOOD))
    assert read_tap_file(conf, bundle).case_id == CASE
