"""mediation/server/heap.py: the serve process's collector settings, in a process of its own.

(Run in a child: freezing the test runner's heap would outlive the test.)
"""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc
from mediation.server import heap
before = gc.get_threshold()
heap.settle()
print(before[0], gc.get_threshold(), gc.get_freeze_count() > 1000, gc.isenabled())
"""


def test_settle_freezes_start_up_and_collects_the_young_less_often() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split(maxsplit=1) == ["700", "(20000, 20, 20) True True\n"]
