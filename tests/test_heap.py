"""mediation/heap.py: the collector settings of serve and receive, in a process of its own.

(Run in a child: freezing the test runner's heap would outlive the test.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
import gc
from mediation import heap
before = gc.get_threshold()
heap.settle()
print(before[0], gc.get_threshold(), gc.get_freeze_count() > 1000, gc.isenabled())
"""


def test_settle_freezes_start_up_and_collects_the_young_less_often() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split(maxsplit=1) == ["700", "(20000, 20, 20) True True\n"]


RECEIVER = """
import gc, sys
from pathlib import Path
import trio
from mediation.lea.receiver import Receiver, ReceiverConfig
from mediation.protocol.sealed import SealKey

config = ReceiverConfig(
    out_dir=Path(sys.argv[1]), udp=("127.0.0.1", 0), udp_keys=(SealKey(1, bytes(32)),),
    duration=0.2,
)
settle = sys.argv[2] == "settle"
trio.run(Receiver(config, settle_heap=settle).run)
print(gc.get_threshold()[0], gc.get_freeze_count() > 1000)
"""


@pytest.mark.parametrize("settle", ["settle", "plain"])
def test_the_receivers_own_process_settles_once_listening(tmp_path: Path, settle: str) -> None:
    """`mediate receive` asks for it (``settle_heap=True``); a receiver run inside
    another program (the tests, the demo's in-process agency) leaves its heap alone."""
    done = subprocess.run(
        [sys.executable, "-c", RECEIVER, str(tmp_path / "out"), settle],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    expected = "20000 True" if settle == "settle" else "700 False"
    assert done.stdout.strip() == expected
