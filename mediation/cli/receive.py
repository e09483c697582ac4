"""`mediate receive`: the agency's receiver (UDP, TLS, retrieval) and its certificate.

Registered as a command module (``mediation.cli.receive`` in
``COMMAND_MODULES``); its options become a run's configuration in
``cli/receive_args.py``. The guide is docs/agency.md.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mediation.cli.common import Once, fail
from mediation.cli.receive_args import config_from_args

if TYPE_CHECKING:
    from mediation.lea.receiver import Receiver, RunResult

    ViewTask = Callable[[Receiver], Awaitable[None]]

DESCRIPTION = """\
Receive a warrant's streams from the mediation server: over UDP (--udp,
sealed with the key file the carrier gives you: --udp-key), over TLS
with acknowledgements (--tls; the server connects to us), or both.
An endpoint the carrier added with --format scte sends CC as SCTE
datagrams: receive them with --udp --format scte --handle HANDLE.
Missing sequence numbers are fetched from the server's log by themselves
with --retrieve-from; --fetch asks for explicit ranges and exits. Writes
per warrant handle, under --out: the envelopes as received (cmii.raw,
cmcc.raw), the CC packets as a pcap (cmcc.pcap), the CmII as JSON lines
(cmii.jsonl), gaps.json, and a .sha256 for each file.
"""

EPILOG = """\
subcommands:
  make-cert --out DIR [--name NAME]   create the agency's certificate and key
  fingerprint FILE                    print a certificate's SHA-256
  verify [DIR] --log-key FILE         check what was received against the
                                      server's signed checkpoints

Ends on SIGINT/SIGTERM, --duration or --until-idle; files are closed and
hashed either way, and a summary is printed. See docs/agency.md.
"""

DEFAULT_OUT = "intercepts"

VERIFY_HELP = """\
Check the envelopes received (cmii.raw, cmcc.raw) against the signed
hash-chain checkpoints the server sent with them (checkpoints.raw): each
checkpoint's Ed25519 signature, then the chain rebuilt from the envelopes.
A match proves every record up to it is exactly what the server stored,
none left out, added or reordered. Prints one line per warrant stream;
exits 1 on any fault. The key is the carrier's keys/log-signing.ed25519.pub
(`mediate log key` prints it). SCTE datagrams (cmcc.scte) carry no
checkpoints: with --udp-key, every one's tag and CCC id is checked again.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mediate receive`` and its ``make-cert`` and ``fingerprint`` subcommands."""
    parser = subparsers.add_parser(
        "receive",
        help="the agency's receiver: UDP/TLS delivery, retrieval, evidence files",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=cmd_receive)
    add = parser.add_argument
    add("--udp", metavar="HOST:PORT", action=Once, help="listen for UDP delivery")
    add(
        "--udp-key",
        metavar="FILE",
        action="append",
        default=[],
        help="the UDP key file from the carrier (needed with --udp; repeatable)",
    )
    add(
        "--format",
        metavar="FORMAT",
        action=Once,
        help="--udp: envelope (the default), or scte: CC as SCTE datagrams "
        "(an endpoint added with --format scte; needs --handle)",
    )
    add(
        "--udp-buffer",
        metavar="BYTES",
        help="--udp: the socket receive buffer to ask for (default 32 MiB; "
        "past net.core.rmem_max only as root)",
    )
    add(
        "--tls",
        metavar="HOST:PORT",
        action=Once,
        help="accept the server's TLS connections (mutual TLS)",
    )
    add(
        "--cert",
        metavar="FILE",
        action=Once,
        help="the agency's certificate (PEM), see make-cert",
    )
    add("--key", metavar="FILE", action=Once, help="its private key (PEM)")
    add(
        "--server-ca",
        metavar="FILE",
        action=Once,
        help="the mediation server's CA (the carrier's `mediate server-ca`, server-ca.pem)",
    )
    add(
        "--server-fingerprint",
        metavar="SHA256",
        action=Once,
        help="pin the server's certificate",
    )
    add("--retrieve-from", metavar="HOST:PORT", action=Once, help="the server's retrieval address")
    add(
        "--fetch",
        metavar="HANDLE/KIND:FIRST-LAST",
        action="append",
        default=[],
        help="fetch this range and exit (repeatable; KIND cmii or cmcc)",
    )
    add(
        "--out",
        metavar="DIR",
        default=DEFAULT_OUT,
        action=Once,
        help=f"output directory ({DEFAULT_OUT})",
    )
    add(
        "--handle",
        metavar="HANDLE",
        action="append",
        help="store only this warrant's streams (repeatable; default: any)",
    )
    add("--duration", metavar="SECONDS", help="stop after this long")
    add(
        "--until-idle",
        metavar="SECONDS",
        help="stop after this long with nothing received (from the first envelope on)",
    )
    add("--sort", action="store_true", help="at exit, rewrite cmcc.pcap in sequence order")
    add("-q", "--quiet", action="store_true", help="no live view; warnings only")

    sub = parser.add_subparsers(dest="receive_command", metavar="SUBCOMMAND")
    cert = sub.add_parser("make-cert", help="create the agency's certificate and key")
    cert.add_argument("--out", dest="cert_out", metavar="DIR", required=True)
    cert.add_argument("--name", metavar="NAME", help="the certificate's common name")
    cert.set_defaults(func=cmd_make_cert)
    show = sub.add_parser("fingerprint", help="print a PEM certificate's SHA-256")
    show.add_argument("file", metavar="FILE")
    show.set_defaults(func=cmd_fingerprint)
    verify = sub.add_parser(
        "verify",
        help="check what was received against the server's signed checkpoints",
        description=VERIFY_HELP,
    )
    verify.add_argument(
        "dir",
        nargs="?",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"the receiver's --out directory, or one warrant's (default: {DEFAULT_OUT})",
    )
    verify.add_argument(
        "--log-key",
        metavar="FILE",
        required=True,
        help="the mediation server's log-signing public key (PEM), from the carrier",
    )
    verify.add_argument(
        "--udp-key",
        metavar="FILE",
        action="append",
        default=[],
        help="the UDP key file(s): check the tags of SCTE datagrams kept (cmcc.scte)",
    )
    verify.set_defaults(func=cmd_verify)


def cmd_make_cert(args: argparse.Namespace) -> int:
    from mediation.errors import UsageError
    from mediation.lea.tls import DEFAULT_NAME, make_agency_certificate

    name = args.name or DEFAULT_NAME
    if not re.fullmatch(r"[ -~]{1,64}", name):
        raise UsageError("--name", "must be 1 to 64 printable ASCII characters")
    made = make_agency_certificate(Path(args.cert_out), name)
    print(f"certificate: {made.cert_path}")
    print(f"private key: {made.key_path} (mode 0600; keep it on this machine)")
    print(f"sha256: {made.fingerprint}")
    # The fingerprint is a field `agency add` keeps off argv (it says whose endpoint this
    # is): the hint names the forms that keep it out of the process list and shell history.
    print(
        f"give the carrier {made.cert_path.name} and the sha256 line above, for: "
        f'mediate agency add --from FILE (name, tls = "HOST:PORT", fingerprint = "SHA256") '
        f"or: mediate agency add NAME --tls HOST:PORT --ca {made.cert_path.name}"
    )
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from mediation.lea.tls import fingerprint_pem_file

    print(fingerprint_pem_file(Path(args.file), "FILE"))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from mediation.errors import UsageError
    from mediation.lea.verify import VerifyError, check_output
    from mediation.log.errors import LogError
    from mediation.log.keys import load_public_key
    from mediation.warrants.udpkey import read_key_file

    directory = Path(args.dir)
    if not directory.is_dir():
        raise UsageError("DIR", f"{directory}: not a directory (the receiver's --out)")
    try:
        public = load_public_key(Path(args.log_key))
    except LogError as exc:
        raise UsageError("--log-key", f"{exc}; ask the carrier for `mediate log key`") from None
    keys = [read_key_file(Path(name), "--udp-key")[1] for name in args.udp_key]
    try:
        checks = check_output(directory, public, keys)
    except VerifyError as exc:
        raise UsageError("DIR", str(exc)) from None
    for check in checks:
        print(check.line())
    return 0 if all(check.ok for check in checks) else 1


def cmd_receive(args: argparse.Namespace) -> int:
    import trio

    from mediation.lea.receiver import Receiver
    from mediation.lea.view import LiveView, ViewLogHandler, summary

    config = config_from_args(args)
    view = LiveView(sys.stderr, tty=sys.stderr.isatty() and not args.quiet)
    handler = ViewLogHandler(view)
    handler.setFormatter(logging.Formatter("mediate receive: %(message)s"))
    logger = logging.getLogger("mediation.lea")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    logger.propagate = False
    receiver = Receiver(config, settle_heap=True)
    extra = () if args.quiet else (view.run,)
    try:
        result = trio.run(_run, receiver, extra)
    except OSError as exc:  # the disk, most likely: the files were closed on the way out
        return fail(f"--out: {exc.strerror or exc} ({exc.filename or config.out_dir})", 1)
    finally:
        logger.removeHandler(handler)
    for line in summary(receiver.state, result):
        print(line)
    if result.failed:
        return fail(result.failed, 1)
    return 0


async def _run(receiver: Receiver, extra: tuple[ViewTask, ...]) -> RunResult:
    from mediation.errors import UsageError
    from mediation.lea.rawfile import RawFileError

    try:
        return await receiver.run(extra=extra, signals=True)
    except RawFileError as exc:
        raise UsageError("--out", f"{exc}; move the file away to start afresh") from None
    except BaseExceptionGroup as group:
        raise _single(group) from None


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one real error inside nested groups (trio wraps every task's error)."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group
