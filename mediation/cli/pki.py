"""`mediate server-ca`: the CA agencies trust the mediation server by.

The data directory holds two CAs (see :mod:`mediation.warrants.authority`):
``ca/ca.pem`` signs taps only, ``ca/server-ca.pem`` the server's identity
only. Agencies need the second (``mediate receive --server-ca``) and must
never be given the first: a tap's certificate would then pass for the
server. This command prints the right one, so nobody has to pick a file.
"""

from __future__ import annotations

import argparse
import sys

from mediation.cli.registry import registry_for, subcommand

SUMMARY = "print the server CA certificate (PEM) that agencies verify the server by"
DESCRIPTION = """\
Print the server CA certificate (PEM) on stdout and its SHA-256 on stderr.
Agencies give it to `mediate receive --server-ca`; read the SHA-256 out to
them over a second channel. Not ca.pem: that CA signs taps only. A data
directory made before the server CA existed gets it now (this needs the
registry key); restart `mediate serve` afterwards so that it re-issues its
identity from it.
"""


def cmd_server_ca(args: argparse.Namespace) -> int:
    """Print the server CA, creating it first in an old data directory.

    Raises:
        UsageError: no registry here, or the key does not open it.
    """
    from mediation.cli.common import data_dir
    from mediation.pki import fingerprint_pem
    from mediation.warrants.access import KeyNeed
    from mediation.warrants.authority import SERVER_CA_CERT, ServerAuthority
    from mediation.warrants.model import utc_now

    ca_dir = data_dir(args) / "ca"
    if not ServerAuthority.exists(ca_dir):
        with registry_for(args, KeyNeed.REQUIRED) as registry:
            assert registry.key is not None
            if not ServerAuthority.exists(ca_dir):
                ServerAuthority.create(ca_dir, registry.key, utc_now())
                print(
                    f"created the server CA {ca_dir / SERVER_CA_CERT}; restart `mediate serve` "
                    "so that its identity is issued by it",
                    file=sys.stderr,
                )
    text = (ca_dir / SERVER_CA_CERT).read_text("ascii")
    sys.stdout.write(text)
    sys.stdout.flush()
    print(f"sha256: {fingerprint_pem(text)}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subcommand(subparsers, "server-ca", SUMMARY, cmd_server_ca)
    p.description = DESCRIPTION
    p.formatter_class = argparse.RawDescriptionHelpFormatter
