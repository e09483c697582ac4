"""The seed's tap command line and the encrypted tap file.

* ``mediate tap -i IF -x CONTENT_ID -y CASE_ID -z IAP_ID -d DEST [-c]
  [-m CMC_PORT] [-n CMII_PORT] [-f FILTER] --credentials NAME.tap``: the
  seed white paper's ``tap`` command, flags directly after ``tap``;
* ``mediate tap edit FILE --credentials NAME.tap``: create or change an
  encrypted tap file holding those arguments, in ``$EDITOR``, through a file
  in memory only (a private directory on the /dev/shm tmpfs);
* ``mediate tap show-config FILE --credentials NAME.tap [--reveal]``.

Registered by ``mediation/cli/tap.py``; ``mediate tap run --config FILE``
(the tap link's) reads the file with :func:`mediation.tap.tapconfig.read_tap_file`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mediation.cli.common import Once, fail
from mediation.errors import UsageError

SCRATCH = Path("/dev/shm")
ACTIONS = "register, list, revoke, run, edit, show-config"
SAFER = (
    "put them in an encrypted tap file instead: "
    "mediate tap edit FILE, then mediate tap run --config FILE"
)
NEW_FILE = """\
# A mediate tap file: one intercept, the seed's `tap` arguments as TOML.
# It is saved encrypted; this text exists only in memory while you edit it.
interface = "eth0"      # -i  the capture interface
content-id = ""         # -x  the agency's content identifier
case-id = ""            # -y  the case identity (1 to 25 characters)
iap-id = ""             # -z  the IAP system identity (1 to 15 characters)
destination = ""        # -d  the mediation server's host or IP address
content = "headers"     # -c  "headers" (CmII only) or "full" (CmII and CmCC)
# cmc-port = 0          # -m  the server's port for content (full only)
# cmii-port = 0         # -n  the server's port for headers and events
# filter = ""           # -f  a tcpdump filter, e.g. "ether host 02:00:5e:00:53:01"
"""


def cmd_tap_seed(args: argparse.Namespace) -> int:
    """``mediate tap -i ...``: check the seed arguments, then run the tap."""
    from mediation.cli.casedata import CaseInput
    from mediation.tap.runner import run_tap
    from mediation.tap.tapconfig import FIELDS, build_config, load_tap_key

    values = {f.key: getattr(args, f"seed_{f.key}", None) for f in FIELDS}
    values["content"] = "full" if args.seed_content else None
    if all(v is None for v in values.values()) and args.seed_credentials is None:
        raise UsageError("mediate tap", f"give an action ({ACTIONS}) or the seed form -i IF ...")
    config = build_config(values, lambda f: f.flag)
    if args.seed_credentials is None:
        raise UsageError("--credentials", "required: the tap's NAME.tap (mediate tap register)")
    load_tap_key(Path(args.seed_credentials))
    given = CaseInput()
    given.on_argv = [f.flag for f in FIELDS if f.sensitive and values[f.key] is not None]
    given.warn(SAFER)
    source = replay_source(args.seed_read, "--read")
    return run_tap(config, Path(args.seed_credentials), source, args.seed_speed != "full")


def replay_source(read: str | None, flag: str) -> Path | None:
    """``--read FILE`` checked: a readable file, or None (capture live)."""
    if read is None:
        return None
    source = Path(read)
    if not source.is_file():
        raise UsageError(flag, f"{source} is not a readable file")
    return source


def cmd_tap_edit(args: argparse.Namespace) -> int:
    """``mediate tap edit FILE``: create or change an encrypted tap file in $EDITOR."""
    from mediation.durable import write_atomic
    from mediation.tap.tapconfig import load_tap_key, open_tap_file, parse_tap_text, seal_tap_file

    path = Path(args.file)
    key = load_tap_key(Path(args.credentials))
    if not path.parent.is_dir():
        raise UsageError("FILE", f"{path.parent} is not a directory; create it first")
    exists = path.exists()
    original = open_tap_file(path, key, "FILE") if exists else NEW_FILE
    text = original
    while True:
        text = edit_in_memory(text)
        if text == original:
            print(f"{path}: no change, nothing written", file=sys.stderr)
            return 0
        try:
            parse_tap_text(text, str(path))
            break
        except UsageError as exc:
            if not _ask_again(exc):
                raise UsageError(str(exc.field), f"{exc.problem} ({path} left unchanged)") from None
    write_atomic(path, seal_tap_file(key, text), 0o600)
    print(f"{path}: saved, encrypted (mode 0600)", file=sys.stderr)
    return 0


def cmd_tap_show_config(args: argparse.Namespace) -> int:
    """``mediate tap show-config FILE``: the settings; case data only with --reveal."""
    from mediation.tap.tapconfig import load_tap_key, open_tap_file, parse_tap_text, render_toml

    path = Path(args.file)
    text = open_tap_file(path, load_tap_key(Path(args.credentials)), "FILE")
    config = parse_tap_text(text, str(path))
    print(text if args.reveal else render_toml(config, reveal=False), end="")
    return 0


def _ask_again(error: UsageError) -> bool:
    """On a terminal: show the refusal and ask to edit again; elsewhere: no."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    print(f"mediate: error: {error}", file=sys.stderr)
    print("edit again? [Y/n] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("", "y", "yes")


def edit_in_memory(text: str) -> str:
    """``text`` after the user's ``$EDITOR`` (default ``vi``), never written to a disk.

    Raises:
        UsageError: no memory-backed scratch space, the editor cannot be
            started or fails, or the result is not UTF-8 or too large.
    """
    from mediation.tap.tapconfig import TAP_FILE_LIMIT

    with _scratch_dir() as scratch:
        draft = scratch / "tap.toml"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        command = [*_editor(), str(draft)]
        env = {**os.environ, "TMPDIR": str(scratch)}  # the editor's own temp files stay in memory
        try:
            status = subprocess.run(command, cwd=scratch, env=env, check=False).returncode
        except OSError as exc:
            raise UsageError("EDITOR", f"cannot start {command[0]}: {exc.strerror}") from None
        if status != 0:
            raise UsageError("EDITOR", f"{command[0]} exited with status {status}; nothing saved")
        with open(draft, "rb") as stream:
            raw = stream.read(TAP_FILE_LIMIT + 1)
    if len(raw) > TAP_FILE_LIMIT:
        raise UsageError("tap file", f"larger than {TAP_FILE_LIMIT // 1024} KiB; nothing saved")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("tap file", "not UTF-8 text; nothing saved") from None


def _editor() -> list[str]:
    """$EDITOR as a command; vim is told to keep no swap file and no viminfo (disk copies)."""
    command = shlex.split(os.environ.get("EDITOR") or "vi") or ["vi"]
    found = shutil.which(command[0])
    real = Path(os.path.realpath(found)).name if found else ""
    if real.startswith(("vim", "nvim")):
        command[1:1] = ["-n", "-i", "NONE"]
    return command


@contextlib.contextmanager
def _scratch_dir() -> Iterator[Path]:
    """A private (0700) directory on a tmpfs, removed with all it holds afterwards."""
    if not _is_tmpfs(SCRATCH):
        raise UsageError(
            "mediate tap edit",
            f"{SCRATCH} is not a tmpfs here, and the clear text must never reach a disk; "
            "mount one there (mount -t tmpfs tmpfs /dev/shm)",
        )
    scratch = Path(tempfile.mkdtemp(prefix="mediate-tap-", dir=SCRATCH))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _is_tmpfs(path: Path) -> bool:
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            return any(line.split()[1:3] == [str(path), "tmpfs"] for line in mounts if line.strip())
    except OSError:
        return False


class SeedOrAction(argparse._SubParsersAction):
    """``mediate tap``'s actions, refused after seed flags (``mediate tap -y X list``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        seed = [k for k, v in vars(namespace).items() if k.startswith("seed_") and v]
        if seed:
            raise SystemExit(
                fail(
                    f"{values[0]}: the seed flags (-i, -x, ...) take no action; "
                    "give either mediate tap -i IF ... or mediate tap ACTION ..."
                )
            )
        super().__call__(parser, namespace, values, option_string)


def add_seed_options(parser: argparse.ArgumentParser) -> None:
    """The seed's ``tap`` flags, on the ``mediate tap`` parser itself."""
    seed = parser.add_argument_group(
        "the seed's tap command line (mediate tap -i IF -x ... --credentials NAME.tap)"
    )
    for flag, key, metavar, help_text in (
        ("-i", "interface", "IF", "the capture interface"),
        ("-x", "content_id", "CONTENT_ID", "the agency's content identifier"),
        ("-y", "case_id", "CASE_ID", "the case identity (prefer a tap file: mediate tap edit)"),
        ("-z", "iap_id", "IAP_ID", "the IAP system identity (prefer a tap file)"),
        ("-d", "destination", "DEST", "the mediation server's host or IP address"),
        ("-m", "cmc_port", "CMC_PORT", "the server's port for content (with -c)"),
        ("-n", "cmii_port", "CMII_PORT", "the server's port for headers and events"),
        ("-f", "filter", "FILTER", "a tcpdump filter (libpcap syntax)"),
    ):
        seed.add_argument(flag, dest=f"seed_{key}", metavar=metavar, action=Once, help=help_text)
    seed.add_argument(
        "-c", dest="seed_content", action="store_true", help="full content (default: headers only)"
    )
    seed.add_argument(
        "--credentials",
        dest="seed_credentials",
        metavar="NAME.tap",
        action=Once,
        help="the tap's credentials (mediate tap register)",
    )
    seed.add_argument(
        "--read",
        dest="seed_read",
        metavar="FILE",
        action=Once,
        help="replay a pcap file instead of capturing on -i (the -f filter applies), then exit",
    )
    seed.add_argument(
        "--speed",
        dest="seed_speed",
        choices=("recorded", "full"),
        default=None,
        help="--read: at the recorded pace (default) or as fast as possible",
    )
    parser.set_defaults(func=cmd_tap_seed)


def register(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """Add the seed form to ``mediate tap`` and the ``edit``/``show-config`` actions."""
    add_seed_options(parser)
    p = sub.add_parser(
        "edit",
        help="create or change an encrypted tap file in $EDITOR",
        description="Create or change an encrypted tap file (the seed's tap arguments) in "
        "$EDITOR (default vi); the clear text exists only in memory.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--credentials", metavar="NAME.tap", required=True, action=Once)
    p.set_defaults(func=cmd_tap_edit)
    p = sub.add_parser(
        "show-config",
        help="show a tap file's settings (case data only with --reveal)",
        description="Show a tap file's settings; the case data (-x, -y, -z, -f) only "
        "with --reveal.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--credentials", metavar="NAME.tap", required=True, action=Once)
    p.add_argument("--reveal", action="store_true", help="show the case data too")
    p.set_defaults(func=cmd_tap_show_config)
