"""The clock status comes from the kernel's timex state."""

from __future__ import annotations

import ctypes
import sys

import pytest

from mediation import clock
from mediation.pdu import ClockStatus


def test_interpretation_of_kernel_answers() -> None:
    assert clock.interpret(0, 0) is ClockStatus.SYNCHRONISED  # TIME_OK
    assert clock.interpret(clock.TIME_ERROR, 0) is ClockStatus.UNSYNCHRONISED
    assert clock.interpret(0, clock.STA_UNSYNC) is ClockStatus.UNSYNCHRONISED
    assert clock.interpret(-1, 0) is ClockStatus.UNKNOWN


def test_timex_layout_matches_the_kernel_abi() -> None:
    # struct timex is 208 bytes on 64-bit Linux (glibc and the kernel agree).
    if sys.platform != "linux" or ctypes.sizeof(ctypes.c_long) != 8:
        pytest.skip("layout checked for 64-bit Linux only")
    assert ctypes.sizeof(clock._Timex) == 208


@pytest.mark.skipif(sys.platform != "linux", reason="adjtimex is Linux-only")
def test_reading_this_machine_agrees_with_adjtimex_directly() -> None:
    reading = clock.read_clock()
    libc = clock._libc()
    assert libc is not None
    timex = clock._Timex()
    result = libc.adjtimex(ctypes.byref(timex))
    assert reading.status is clock.interpret(result, timex.status)
    assert reading.status is not ClockStatus.UNKNOWN
