"""A tap process loads what a tap uses: not the evidence log, the delivery machines or workers.

Each module is compiled from source at every start where bytecode is not
written (PYTHONDONTWRITEBYTECODE), so what a tap imports is CPU at every
start (docs/architecture.md, "The tap's start").
"""

from __future__ import annotations

import json
import subprocess
import sys

NOT_IN_A_TAP = (
    "mediation.log",  # via the at-rest KDF (now mediation.aead)
    "mediation.protocol.stream",  # via mediation.protocol's package (now lazy)
    "mediation.protocol.retrieval",
    "mediation.protocol.datagram",
    "mediation.tap.workers",  # live capture with several workers only
    "mediation.pdu.fast",  # its encoders: once per flow, when first needed
)


def test_a_tap_replaying_a_file_does_not_import_what_it_does_not_use() -> None:
    code = (
        "import sys, json\n"
        "from mediation.cli.main import build_parser\n"
        "build_parser()\n"
        "import mediation.tap.runner, mediation.tap.link, mediation.tap.spool\n"
        "from mediation.cli import taprun\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mediation'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert "mediation.tap.link" in loaded
    assert not loaded & set(NOT_IN_A_TAP), sorted(loaded & set(NOT_IN_A_TAP))


def test_the_protocol_package_still_gives_every_public_name() -> None:
    import mediation.protocol as P

    for name in P.__all__:
        assert getattr(P, name) is not None
    from mediation.protocol import StreamSender
    from mediation.protocol.stream import StreamSender as Direct

    assert StreamSender is Direct
