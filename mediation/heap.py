"""The garbage collector's settings for a long-running process of ours: ``mediate
serve`` and ``mediate receive`` (each calls :func:`settle` once it has started).

CPython's collector runs its youngest generation every 700 new container
objects. A tap batch of 1,024 PDUs makes a few thousand (the batch's PDU
objects, the log's ring entries, delivery's envelopes), so most of a
batch's objects were traversed and promoted before the batch ended, only
to die a moment later; and every promoted object brought the next full
collection closer: one traversal of the whole heap (the ASN.1 schemas,
every module), 30-60 ms of the event loop at a time. In `bench/e2e.py`
that was about 4% of the server's CPU at saturation. The agency's receiver
(``mediate receive``) had the same full collections, 21-32 ms each, two or
three a 5-second step at 24,000 PDUs/s: every PDU in flight then waited,
and they were most of the capture-to-agency p99 (docs/architecture.md).

:func:`settle` is called once everything has started: what start-up built
is moved out of the collector's sight (``gc.freeze``: it lives as long as
the process), and the first generation is collected every
:data:`YOUNG_THRESHOLD` objects, so a batch's short-lived objects die
before any collection sees them. Cycles are still collected, only later;
the memory this holds back is bounded by the threshold.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000  # container objects between first-generation collections (CPython: 700)
OLDER_THRESHOLDS = (20, 20)  # collections of the generation below before the next runs (10, 10)


def settle() -> None:
    """Freeze what start-up built and collect the young generation less often (module docstring)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
