"""A bench's data directory: registry, both CAs, and an agency that never answers.

The agency's one TLS endpoint (port 9, a made-up fingerprint) is never
reached: delivery waits on it and costs nothing, so the in-process benches
measure ingest (docs/tap-link.md says what delivery adds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class BenchRegistry:
    """What a bench adds its taps and warrants with."""

    data: Path
    key: Any  # RegistryKey
    registry: Any  # WarrantRegistry, open
    agency: str  # the mute agency's handle
    now: dt.datetime
    taps: Any  # TapAuthority
    server_ca: Any  # ServerAuthority


@contextlib.contextmanager
def bench_registry(base: Path) -> Iterator[BenchRegistry]:
    """A new registry under ``base/data``; the server's identity is made on leaving."""
    from mediation.server.tls import ensure_identity
    from mediation.warrants.authority import ServerAuthority, TapAuthority
    from mediation.warrants.keys import RegistryKey
    from mediation.warrants.model import Endpoint, Stream
    from mediation.warrants.operations import add_agency_endpoint
    from mediation.warrants.registry import WarrantRegistry

    data, key = base / "data", RegistryKey.generate()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with WarrantRegistry.initialise(data, key, None, now) as registry:
        taps = TapAuthority.create(data / "ca", key, now)
        server_ca = ServerAuthority.create(data / "ca", key, now)
        endpoint = Endpoint(
            "tls", "127.0.0.1", 9, (Stream.CMII, Stream.CMCC), fingerprint="ab" * 32
        )
        agency, _ = add_agency_endpoint(registry, "BENCH-LEA", endpoint, "--tls", now)
        yield BenchRegistry(data, key, registry, agency.handle, now, taps, server_ca)
    ensure_identity(data, key, ("127.0.0.1",), now)
