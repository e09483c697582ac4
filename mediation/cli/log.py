"""`mediate log`: the evidence log's offline tools (``verify``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mediation.cli.common import add_data_dir, data_dir
from mediation.errors import UsageError

VERIFY_HELP = """\
Check evidence log streams from their files alone: every frame's checksum,
the sequence numbers, the hash chain, and every checkpoint's Ed25519
signature. Prints one line per stream (records, first and last receive time,
checkpoints, ok or the first bad sequence number); exits 1 on any fault.
"""


KEY_HELP = """\
Print the server's log-signing public key (PEM) and its key id. Agencies
check what they receive with it (`mediate receive verify --log-key FILE`),
and auditors the log itself (`mediate log verify --public-key FILE`). It is
public: send it with the warrant's delivery details.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mediate log`` and its subcommands."""
    parser = subparsers.add_parser(
        "log",
        help="the evidence log: verify it, print its public key",
        description="Evidence log tools.",
    )
    commands = parser.add_subparsers(dest="log_command", metavar="SUBCOMMAND")
    verify = commands.add_parser(
        "verify", help="verify streams (checksums, chain, signatures)", description=VERIFY_HELP
    )
    verify.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help="a stream, warrant, log or data directory (default: the data directory)",
    )
    add_data_dir(verify)
    verify.add_argument(
        "--public-key",
        metavar="FILE",
        help="the server's log-signing public key, PEM or raw 32 bytes "
        "(default: keys/log-signing.ed25519.pub in the data directory)",
    )
    verify.set_defaults(func=run_verify)
    key = commands.add_parser(
        "key",
        help="print the log-signing public key, for agencies and auditors",
        description=KEY_HELP,
    )
    add_data_dir(key)
    key.set_defaults(func=run_key)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _find_public_key(args: argparse.Namespace, path: Path) -> Path:
    """The ``--public-key`` file, or the ``.pub`` of the data directory holding ``path``."""
    from mediation.log.keys import public_key_path

    if args.public_key:
        return Path(args.public_key)
    if args.data_dir:
        return public_key_path(data_dir(args))
    # A stream directory is DATA/log/<handle>/<kind>: look up to three levels up.
    for candidate in [path, *list(path.resolve().parents)[:3]]:
        if public_key_path(candidate).is_file():
            return public_key_path(candidate)
    return public_key_path(data_dir(args))


def run_verify(args: argparse.Namespace) -> int:
    """Verify every stream under PATH; 0 if all are sound, 1 on any fault.

    Raises:
        UsageError: PATH or the public key is missing or unusable.
    """
    from mediation.log.errors import LogError
    from mediation.log.keys import load_public_key
    from mediation.log.verify import find_streams, verify_stream

    path = Path(args.path) if args.path else data_dir(args)
    if not path.is_dir():
        raise UsageError("PATH", f"{path}: not a directory")
    key_file = _find_public_key(args, path)
    if not key_file.is_file():
        raise UsageError("--public-key", f"no public key at {key_file}; give --public-key FILE")
    try:
        public = load_public_key(key_file)
    except LogError as exc:
        raise UsageError("--public-key", str(exc)) from None
    streams = find_streams(path)
    if not streams:
        raise UsageError("PATH", f"{path}: no evidence log streams found")
    faults = 0
    for directory in streams:
        try:
            report = verify_stream(directory, public)
        except (ValueError, OSError) as exc:
            print(f"{directory.parent.name}/{directory.name}: FAULT: {exc}")
            faults += 1
            continue
        print(report.line())
        faults += not report.ok
    return 1 if faults else 0


def run_key(args: argparse.Namespace) -> int:
    """Print the public key PEM on stdout and its key id on stderr.

    Raises:
        UsageError: the data directory has no log key yet.
    """
    from mediation.log.errors import LogError
    from mediation.log.keys import key_id, load_public_key, public_key_path

    path = public_key_path(data_dir(args))
    if not path.is_file():
        raise UsageError(
            "--data-dir", f"no log key at {path}; the server makes it when it first stores"
        )
    try:
        public = load_public_key(path)
    except LogError as exc:
        raise UsageError("--data-dir", str(exc)) from None
    text = path.read_text()
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    print(f"key id (sha256 of the raw key): {key_id(public).hex()}", file=sys.stderr)
    return 0
