"""`mediate log`: the evidence log's offline tools (``verify``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mediation.cli.common import add_data_dir, data_dir
from mediation.errors import UsageError

if TYPE_CHECKING:
    from mediation.log.crypto import LogKey

VERIFY_HELP = """\
Check evidence log streams from their files alone: every frame's checksum,
the sequence numbers, the hash chain, and every checkpoint's Ed25519
signature. Prints one line per stream (records, first and last receive time,
checkpoints, ok or the first bad sequence number); exits 1 on any fault.

Records are stored encrypted: checking the hash chain needs the log key,
which comes from the registry key (--key-file, $MEDIATION_KEY_FILE, or a
passphrase registry's --passphrase-env). Without it, everything else is
checked, each line says the chain was not, and the exit status is 3.
"""
# Exit status: all verified; a fault; no fault but the chain not checked (no log key).
EXIT_OK, EXIT_FAULT, EXIT_UNCHECKED = 0, 1, 3


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
    from mediation.cli.registry import add_key_options

    add_key_options(verify)
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


def _data_dir_holding(args: argparse.Namespace, path: Path) -> Path:
    """``--data-dir``, else the data directory ``path`` is in, else the default one."""
    from mediation.log.keys import public_key_path

    if args.data_dir:
        return data_dir(args)
    # A stream directory is DATA/log/<handle>/<kind>: look up to three levels up.
    for candidate in [path, *list(path.resolve().parents)[:3]]:
        if public_key_path(candidate).is_file():
            return candidate
    return data_dir(args)


def _log_key(args: argparse.Namespace, data: Path) -> LogKey | None:
    """The log key from the registry key, if the key options or defaults give one.

    With a registry in ``data``, the key is checked against it (a wrong one
    is refused there); a copy of the log alone needs a key file.

    Raises:
        UsageError: a key was named but is unusable or not this registry's.
    """
    from mediation.log.crypto import LOG_KEY_PURPOSE, LogKey
    from mediation.warrants.access import KeyNeed, KeyOptions, key_file_path, open_registry
    from mediation.warrants.keys import read_key_file
    from mediation.warrants.registry import REGISTRY_DB

    options = KeyOptions(args.key_file, args.passphrase_env)
    if (data / REGISTRY_DB).is_file():
        with open_registry(data, options, KeyNeed.OPTIONAL) as registry:
            registry_key = registry.key
    elif args.passphrase_env:
        raise UsageError(
            "--passphrase-env",
            f"no registry in {data} to derive the key with; give --key-file FILE "
            "(or --data-dir of the server's data directory)",
        )
    else:
        path, named = key_file_path(options)
        if not named and not path.is_file():
            return None
        registry_key = read_key_file(path)
    return None if registry_key is None else LogKey(registry_key.derive(LOG_KEY_PURPOSE))


def run_verify(args: argparse.Namespace) -> int:
    """Verify every stream under PATH.

    Returns:
        0 all sound, 1 any fault, 3 no fault but the chain of encrypted
        records was not checked for want of the log key.

    Raises:
        UsageError: PATH, the public key or the log key is missing or unusable.
    """
    from mediation.log.crypto import WrongLogKey
    from mediation.log.errors import LogError
    from mediation.log.keys import load_public_key, public_key_path
    from mediation.log.verify import find_streams, verify_stream

    path = Path(args.path) if args.path else data_dir(args)
    if not path.is_dir():
        raise UsageError("PATH", f"{path}: not a directory")
    data = _data_dir_holding(args, path)
    key_file = Path(args.public_key) if args.public_key else public_key_path(data)
    if not key_file.is_file():
        raise UsageError("--public-key", f"no public key at {key_file}; give --public-key FILE")
    try:
        public = load_public_key(key_file)
    except LogError as exc:
        raise UsageError("--public-key", str(exc)) from None
    streams = find_streams(path)
    if not streams:
        raise UsageError("PATH", f"{path}: no evidence log streams found")
    log_key = _log_key(args, data)
    faults = unchecked = 0
    for directory in streams:
        try:
            report = verify_stream(directory, public, key=log_key)
        except WrongLogKey as exc:
            raise UsageError("--key-file", str(exc)) from None
        except (ValueError, OSError) as exc:
            print(f"{directory.parent.name}/{directory.name}: FAULT: {exc}")
            faults += 1
            continue
        print(report.line())
        faults += not report.ok
        unchecked += report.chain_unchecked is not None
    if faults:
        return EXIT_FAULT
    if unchecked:
        print(
            f"mediate: the hash chain of {unchecked} stream(s) was NOT checked: their records "
            "are encrypted; give the registry key (--key-file FILE or MEDIATION_KEY_FILE)",
            file=sys.stderr,
        )
        return EXIT_UNCHECKED
    return EXIT_OK


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
