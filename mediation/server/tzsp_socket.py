"""Many UDP datagrams per system call: ``recvmmsg(2)`` for the TZSP listener.

A router mirroring a busy subscriber sends tens of thousands of datagrams
a second; one ``recvfrom`` per datagram through trio costs a wake-up and
a system call each. :class:`BatchReceiver` takes up to ``batch`` queued
datagrams in one ``recvmmsg`` (Linux, through ctypes; Python's socket has
no binding) into buffers allocated once, and falls back to a loop of
non-blocking ``recvfrom`` elsewhere. ``bench/tzsp.py`` measures both.

A datagram longer than ``max_datagram`` is cut by the kernel (``MSG_TRUNC``)
and reported as oversize, never handed on in part. Also here: the
socket's kernel drop counter (``/proc/net/udp``), for ``mediate status``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Iterator

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
_SOCKADDR = 128  # sockaddr_storage


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_IoVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


_MMSG_SIZE = ctypes.sizeof(_MMsgHdr)
# What the kernel fills in per message, read for a whole call at once (ctypes
# attribute access is slow): msg_namelen, msg_flags, msg_len, at their offsets.
_FILLED = struct.Struct(
    f"={_MsgHdr.namelen.offset}xI{_MsgHdr.flags.offset - _MsgHdr.namelen.offset - 4}xi"
    f"{_MMsgHdr.len.offset - _MsgHdr.flags.offset - 4}xI"
    f"{_MMSG_SIZE - _MMsgHdr.len.offset - 4}x"
)


def _libc_recvmmsg() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p,
    ]  # fmt: skip
    function.restype = ctypes.c_int
    return function


_RECVMMSG = _libc_recvmmsg()


class BatchReceiver:
    """Drains a non-blocking UDP socket a batch at a time.

    Args:
        sock: a bound, non-blocking datagram socket (its file descriptor is used).
        batch: datagrams per call at most.
        max_datagram: the largest datagram taken whole; longer ones are oversize.
        use_recvmmsg: False forces the ``recvfrom`` loop (the benchmark's baseline).
    """

    def __init__(
        self, sock: socket.socket, batch: int, max_datagram: int, *, use_recvmmsg: bool = True
    ) -> None:
        self.sock = sock
        self.batch = batch
        self.max_datagram = max_datagram
        self.calls = 0
        self._addresses: dict[bytes, str] = {}  # raw sockaddr -> its address as text
        self.recvmmsg = use_recvmmsg and _RECVMMSG is not None
        if self.recvmmsg:
            self._setup()

    def _setup(self) -> None:
        n, size = self.batch, self.max_datagram + 1  # one more octet shows a longer datagram
        self._buffer = (ctypes.c_char * (n * size))()
        self._names = (ctypes.c_char * (n * _SOCKADDR))()
        self._iovs = (_IoVec * n)()
        self._msgs = (_MMsgHdr * n)()
        base, names = ctypes.addressof(self._buffer), ctypes.addressof(self._names)
        for i in range(n):
            self._iovs[i].base = base + i * size
            self._iovs[i].len = size
            hdr = self._msgs[i].hdr
            hdr.name = names + i * _SOCKADDR
            hdr.iov = ctypes.pointer(self._iovs[i])
            hdr.iovlen = 1
            hdr.namelen = _SOCKADDR
        # The headers as set up: the ones a call filled in are copied back from it.
        self._pristine = bytes(self._msgs)
        self._used = 0  # headers the last call filled in
        self._msg_view = memoryview(self._msgs).cast("B")
        self._view = memoryview(self._buffer).cast("B")
        self._name_view = memoryview(self._names).cast("B")
        self._size = size

    def receive(self) -> list[tuple[bytes | None, str]] | None:
        """What is queued now, up to ``batch``: ``(datagram, sender)``; an oversize
        datagram comes as ``(None, sender)``. None: nothing queued (wait for readable).

        Raises:
            OSError: the socket failed (not merely empty).
        """
        self.calls += 1
        if not self.recvmmsg:
            return self._receive_loop()
        msgs = self._msgs
        if self._used:  # namelen, flags and len of those the kernel wrote, as set up
            ctypes.memmove(msgs, self._pristine, self._used * _MMSG_SIZE)
            self._used = 0
        count = _RECVMMSG(self.sock.fileno(), msgs, self.batch, MSG_DONTWAIT, None)  # type: ignore[operator]
        if count < 0:
            errno = ctypes.get_errno()
            if errno in (11, 4):  # EAGAIN (EWOULDBLOCK), EINTR
                return None
            raise OSError(errno, os.strerror(errno))
        self._used = count
        out = []
        view, names, size = self._view, self._name_view, self._size
        filled = _FILLED.iter_unpack(self._msg_view[: count * _MMSG_SIZE])
        for i, (namelen, flags, length) in enumerate(filled):
            raw = bytes(names[i * _SOCKADDR : i * _SOCKADDR + namelen])
            sender = self._sender(raw)
            if length > self.max_datagram or flags & MSG_TRUNC:
                out.append((None, sender))
                continue
            start = i * size
            out.append((view[start : start + length].tobytes(), sender))
        return out

    def _receive_loop(self) -> list[tuple[bytes | None, str]] | None:
        out: list[tuple[bytes | None, str]] = []
        limit = self.max_datagram + 1
        for _ in range(self.batch):
            try:
                data, address = self.sock.recvfrom(limit)
            except (BlockingIOError, InterruptedError):
                break
            sender = normal_address(address[0])
            out.append((None if len(data) > self.max_datagram else data, sender))
        return out or None

    def _sender(self, raw: bytes) -> str:
        known = self._addresses.get(raw)
        if known is None:
            known = _sockaddr_text(raw)
            if len(self._addresses) < 4096:  # senders are few; a spoofing flood is not kept
                self._addresses[raw] = known
        return known


def _sockaddr_text(raw: bytes) -> str:
    """The address in a raw ``sockaddr_in`` / ``sockaddr_in6``, as text."""
    family = int.from_bytes(raw[:2], sys.byteorder) if len(raw) >= 2 else -1
    if family == socket.AF_INET and len(raw) >= 8:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if family == socket.AF_INET6 and len(raw) >= 24:
        return normal_address(socket.inet_ntop(socket.AF_INET6, raw[8:24]))
    return "unknown"


def normal_address(text: str) -> str:
    """An address as registered sources write it (``::ffff:192.0.2.1`` is ``192.0.2.1``)."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped on this socket (its receive buffer was full).

    Read from ``/proc/net/udp`` (or ``udp6``) by the socket's inode; None
    where there is no such file.
    """
    try:
        inode = os.fstat(sock.fileno()).st_ino
    except OSError:
        return None
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name) as handle:
                lines: Iterator[str] = iter(handle)
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] == str(inode):
                        return int(fields[-1])
        except OSError:
            continue
    return None
