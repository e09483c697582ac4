"""Is the system clock synchronised? Asked of the kernel, not guessed.

Every PDU carries a capture time; the evidence must say whether the clock
that made it was synchronised (seed white paper, "Time Stamps"). Linux
keeps that state for NTP/PTP daemons in the kernel's timex structure:
``adjtimex(2)`` with ``modes = 0`` reads it without changing anything.
``STA_UNSYNC`` set (or the return value ``TIME_ERROR``) means the kernel
considers the clock unsynchronised; chronyd, ntpd and systemd-timesyncd
all clear it once they discipline the clock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools

from mediation.pdu.delivery import ClockStatus

TIME_ERROR = 5  # adjtimex return: clock not synchronised
STA_UNSYNC = 0x0040  # status bit: clock unsynchronised


class _Timex(ctypes.Structure):
    """``struct timex`` from <sys/timex.h> (x86-64 and aarch64 layout)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


@dataclasses.dataclass(frozen=True)
class ClockReading:
    """What the kernel said about the clock."""

    status: ClockStatus
    max_error_us: int | None = None  # kernel's maximum error estimate
    est_error_us: int | None = None  # kernel's estimated error
    source: str = "adjtimex"


def interpret(return_value: int, status_bits: int) -> ClockStatus:
    """The clock status for an ``adjtimex`` return value and status word."""
    if return_value < 0:
        return ClockStatus.UNKNOWN
    if return_value == TIME_ERROR or status_bits & STA_UNSYNC:
        return ClockStatus.UNSYNCHRONISED
    return ClockStatus.SYNCHRONISED


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.adjtimex.argtypes = [ctypes.POINTER(_Timex)]
        libc.adjtimex.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def read_clock() -> ClockReading:
    """Ask the kernel; ``UNKNOWN`` where it cannot be asked (not Linux, no libc)."""
    libc = _libc()
    if libc is None:
        return ClockReading(ClockStatus.UNKNOWN, source="unavailable")
    timex = _Timex()  # modes = 0: read only
    result = libc.adjtimex(ctypes.byref(timex))
    status = interpret(result, timex.status)
    if status is ClockStatus.UNKNOWN:
        return ClockReading(status, source="adjtimex failed")
    return ClockReading(status, int(timex.maxerror), int(timex.esterror))
