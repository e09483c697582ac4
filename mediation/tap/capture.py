"""Live capture: an AF_PACKET socket with a TPACKET_V3 ring and a kernel BPF filter.

The kernel writes each frame that passes the filter into a ring of blocks
shared with the process (``PACKET_RX_RING``, ``TPACKET_V3``), and hands a
block over when it is full or after ``block_timeout_ms``. One wake-up then
yields every frame of every ready block: no system call and no wake-up per
frame. A frame that finds the ring full is dropped by the kernel and
counted; :meth:`LiveCapture.stats` reads that counter (``PACKET_STATISTICS``).

Each frame comes with the kernel's capture time (nanoseconds, from the
ring header: never Python's clock) and whether this host sent it
(``PACKET_OUTGOING``). On receive the kernel takes the outermost VLAN tag
out of the frame into metadata; it is put back here, as libpcap does, so
the parser, the matcher and the agency see the frame as it was on the wire.

The socket is opened with protocol 0 (it receives nothing), the filter
and the ring are set, and only then is it bound to the interface for all
protocols: no frame ever reaches the ring unfiltered. Replacing the filter
(:meth:`LiveCapture.set_filter`, ``SO_ATTACH_FILTER``) swaps the program
in one step; frames the old program accepted may still be in the ring, and
the tap's Python matcher, which checks every frame, decides them.

Linux only; needs CAP_NET_RAW.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime as dt
import mmap
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from typing import NamedTuple

import trio

from mediation.tap.bpf import ACCEPT_NONE, Insn

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
PACKET_FANOUT_DATA = 22

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1:
# block_status, num_pkts, offset_to_first_pkt (the rest is not needed).
_BLOCK = struct.Struct("=IIIII")
# struct tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status, mac, net,
# then hv1: rxhash, vlan_tci, vlan_tpid; sockaddr_ll follows at 48, and its
# sll_pkttype is octet 10 of it.
_PACKET = struct.Struct("=IIIIIIHHIIH")
_PKTTYPE_AT = 48 + 10
_REQ3 = struct.Struct("=IIIIIII")
_STATS3 = struct.Struct("=III")
_TAG = struct.Struct(">HH")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class CapturedFrame(NamedTuple):
    """One frame from the ring: its octets, the kernel's time, and its way."""

    data: bytes
    time: dt.datetime  # the kernel's capture time, UTC, to the microsecond
    outgoing: bool  # this host sent it (PACKET_OUTGOING)
    length: int  # octets on the wire; more than len(data) if the ring cut it


@dataclasses.dataclass(frozen=True)
class RingConfig:
    """The ring's shape: ``block_count`` blocks of ``block_size`` octets.

    The kernel hands a block over when it is full or ``block_timeout_ms``
    after its first frame, so on a quiet link each block holds few frames
    and the ring covers ``block_count * block_timeout_ms`` of stalled
    reading; on a busy one it covers its size. The default, 256 blocks of
    128 KiB (32 MiB), holds about 20,000 frames of 1,500 octets (a second
    at 20,000 frames/s) and 1 s of a quiet link; a block still takes a
    64 KiB frame (GRO, TSO) whole. The timeout is short because it is the
    whole latency of a quiet link's frame in the tap (#10's capture-to-agency
    goal is 20 ms); an empty block is never handed over, so an idle link
    costs no wake-up.
    """

    block_size: int = 1 << 17
    block_count: int = 256
    block_timeout_ms: int = 4  # hand a partly filled block over after this long

    def __post_init__(self) -> None:
        if self.block_size < mmap.PAGESIZE or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two of at least one page")
        if not 1 <= self.block_count <= 4096:
            raise ValueError("block_count must be 1 to 4096")
        if not 1 <= self.block_timeout_ms <= 60_000:
            raise ValueError("block_timeout_ms must be 1 to 60000")


@dataclasses.dataclass
class CaptureStats:
    """Counters since the capture opened; numbers only, safe to log and export.

    ``kernel_received`` counts frames the filter passed (delivered or
    dropped); ``kernel_dropped`` those the kernel dropped because the ring
    was full; ``frames`` those the process read out of the ring.
    """

    kernel_received: int = 0
    kernel_dropped: int = 0
    frames: int = 0
    blocks: int = 0
    filters_attached: int = 0


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter)))


def _fprog(program: Sequence[Insn]) -> tuple[bytes, object]:
    """A ``struct sock_fprog`` for ``program``, and the array it points to (keep it alive)."""
    insns = (_SockFilter * len(program))(*(_SockFilter(*insn) for insn in program))
    return bytes(_SockFprog(len(program), insns)), insns


def attach_filter(sock: socket.socket, program: Sequence[Insn]) -> None:
    """Attach (or atomically replace) the socket's classic BPF program.

    Raises:
        OSError: the kernel refused the program (too long, invalid).
    """
    fprog, _keep = _fprog(program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def attach_fanout_program(sock: socket.socket, program: Sequence[Insn]) -> None:
    """Set the steering program of the fanout group ``sock`` belongs to (``PACKET_FANOUT_DATA``).

    Raises:
        OSError: the kernel refused the program.
    """
    fprog, _keep = _fprog(program)
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, fprog)


class LiveCapture:
    """Frames from one interface, in batches, through the kernel's filter.

    Args:
        interface: the interface to capture on (it must exist).
        program: the first filter (see :mod:`mediation.tap.bpf`).
        ring: the ring's shape.
        fanout: join this fanout group with this steering program
            (:mod:`mediation.tap.fanout`); the socket then accepts nothing
            until :meth:`set_filter` gives it ``program`` or another.

    Raises:
        OSError: no such interface, no CAP_NET_RAW, or the kernel refused
            the ring or the filter.
    """

    def __init__(
        self,
        interface: str,
        program: Sequence[Insn],
        ring: RingConfig | None = None,
        *,
        fanout: tuple[int, Sequence[Insn]] | None = None,
    ) -> None:
        self.interface = interface
        self.ring = ring or RingConfig()
        self.stats = CaptureStats()
        socket.if_nametoindex(interface)  # OSError now if there is no such interface
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            # In a fanout group the socket is bound before it joins, and while
            # bound but not yet joined it would get its own copy of every frame
            # the group also gets: it accepts nothing until it has joined, and
            # the real filter comes with :meth:`set_filter` (see tap/workers.py).
            self.set_filter(program if fanout is None else ACCEPT_NONE)
            self._map = self._setup_ring(self._sock, self.ring)
            self._sock.bind((interface, ETH_P_ALL))
            if fanout is not None:
                from mediation.tap.fanout import join

                join(self._sock, *fanout)
        except BaseException:
            self._sock.close()
            raise
        self._block = 0

    @staticmethod
    def _setup_ring(sock: socket.socket, ring: RingConfig) -> mmap.mmap:
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frame_size = 2048  # only used by the kernel to check the request
        frames = ring.block_size * ring.block_count // frame_size
        request = _REQ3.pack(
            ring.block_size, ring.block_count, frame_size, frames, ring.block_timeout_ms, 0, 0
        )
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
        size = ring.block_size * ring.block_count
        return mmap.mmap(sock.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def set_filter(self, program: Sequence[Insn]) -> None:
        """Replace the kernel's filter in one step (``SO_ATTACH_FILTER``)."""
        attach_filter(self._sock, program)
        self.stats.filters_attached += 1

    def fileno(self) -> int:
        """The socket's descriptor, to wait on (readable: a block is ready)."""
        return self._sock.fileno()

    def close(self) -> None:
        """Unmap the ring and close the socket (idempotent); the counters stay readable."""
        if self._sock.fileno() >= 0:
            self.read_stats()
            self._map.close()
            self._sock.close()

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_stats(self) -> CaptureStats:
        """The counters, with the kernel's (which reading resets) added in; as at close after it."""
        if self._sock.fileno() < 0:
            return self.stats
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS3.size)
        received, dropped, _freezes = _STATS3.unpack(raw)
        self.stats.kernel_received += received
        self.stats.kernel_dropped += dropped
        return self.stats

    def drain(self) -> list[CapturedFrame]:
        """Every frame of every block ready now (possibly none), blocks handed back.

        At most one pass round the ring, so a very fast link cannot keep
        this call going forever.
        """
        out: list[CapturedFrame] = []
        ring = self.ring
        for _ in range(ring.block_count):
            base = self._block * ring.block_size
            _v, _p, status, count, first = _BLOCK.unpack_from(self._map, base)
            if not status & TP_STATUS_USER:
                break
            self._read_block(base + first, count, out)
            # Hand the block back only after every frame is copied out of it.
            struct.pack_into("=I", self._map, base + 8, TP_STATUS_KERNEL)
            self._block = (self._block + 1) % ring.block_count
            self.stats.blocks += 1
        self.stats.frames += len(out)
        return out

    def _read_block(self, at: int, count: int, out: list[CapturedFrame]) -> None:
        ring_map = self._map
        unpack = _PACKET.unpack_from
        timedelta = dt.timedelta
        # Frames come many to a second: the second's datetime is made once,
        # and each frame adds only its microseconds.
        second, base = -1, _EPOCH
        for _ in range(count):
            nxt, sec, nsec, snaplen, length, status, mac, _net, _h, tci, tpid = unpack(ring_map, at)
            start = at + mac
            data = ring_map[start : start + snaplen]
            if status & TP_STATUS_VLAN_VALID:
                if not status & TP_STATUS_VLAN_TPID_VALID:
                    tpid = 0x8100
                data = data[:12] + _TAG.pack(tpid, tci) + data[12:]
                length += 4
            if sec != second:
                second, base = sec, _EPOCH + timedelta(seconds=sec)
            when = base + timedelta(0, 0, nsec // 1000)
            outgoing = ring_map[at + _PKTTYPE_AT] == PACKET_OUTGOING
            out.append(CapturedFrame(data, when, outgoing, length))
            if not nxt:
                break
            at += nxt

    async def batches(self) -> AsyncIterator[list[CapturedFrame]]:
        """Batches of frames as the kernel hands blocks over; never an empty batch."""
        while True:
            batch = self.drain()
            if batch:
                yield batch
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.wait_readable(self._sock)

    async def next_batch(self, timeout: float) -> list[CapturedFrame]:
        """The next batch, or ``[]`` if none came within ``timeout`` seconds."""
        batch = self.drain()
        if batch:
            await trio.lowlevel.checkpoint()
            return batch
        with trio.move_on_after(timeout):
            await trio.lowlevel.wait_readable(self._sock)
        return self.drain()
