"""Classic pcap files: a reader and a writer.

Dependency-free (``struct`` only), so the evidence path needs neither libpcap
nor scapy. The format (the "classic" one, not pcapng) is a 24-byte file
header then records of a 16-byte header and the captured bytes::

    magic u32 | version 2.4 | thiszone i32 | sigfigs u32 | snaplen u32 | linktype u32
    seconds u32 | fraction u32 | captured length u32 | original length u32 | data

The magic tells the byte order and whether the fraction counts microseconds
(``0xa1b2c3d4``) or nanoseconds (``0xa1b23c4d``). tcpdump, tshark and
Wireshark read both. UDP datagrams out of captured frames are
:mod:`mediation.evidence.udp_frames`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

DEFAULT_SNAPLEN = 262144
# A record claiming more than this is a corrupt file, not a packet: refusing
# it keeps a flipped length byte from allocating gigabytes.
MAX_RECORD = 16 * 1024 * 1024

_FILE_HEADER = "IHHiIII"
_RECORD_HEADER = "IIII"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# The four ways a classic pcap file can start -> (byte order, nanoseconds).
_MAGICS: dict[bytes, tuple[str, bool]] = {
    struct.pack(order + "I", magic): (order, magic == MAGIC_NSEC)
    for order in "<>"
    for magic in (MAGIC_USEC, MAGIC_NSEC)
}


class PcapError(ValueError):
    """A file is not a readable classic pcap file; ``offset`` is where it went wrong."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.message = message
        self.offset = offset
        super().__init__(message if offset is None else f"{message} (at byte {offset})")


def is_pcap(prefix: bytes) -> bool:
    """Whether ``prefix`` (the first 4 or more bytes of a file) is a classic pcap magic."""
    return bytes(prefix[:4]) in _MAGICS


def _time_ns(when: dt.datetime | int) -> int:
    """Nanoseconds since the epoch; exact for datetimes (no float rounding)."""
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            raise ValueError("capture time must be timezone-aware (UTC)")
        delta = when - _EPOCH
        return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    if isinstance(when, int) and not isinstance(when, bool):
        return when
    raise TypeError(
        f"capture time must be a datetime or int nanoseconds, not {type(when).__name__}"
    )


@dataclasses.dataclass(frozen=True)
class Packet:
    """One record: its number in the file (from 1), capture time and bytes."""

    number: int
    time_ns: int
    data: bytes
    orig_len: int
    offset: int  # of ``data`` in the file, so errors can name a byte

    @property
    def time(self) -> dt.datetime:
        """Capture time in UTC, to the microsecond."""
        return capture_time(self.time_ns)


def capture_time(time_ns: int) -> dt.datetime:
    """A record's time (nanoseconds since the epoch) in UTC, to the microsecond."""
    return _EPOCH + dt.timedelta(microseconds=time_ns // 1000)


class PcapReader:
    """Reads records one at a time from a binary stream; iterate it for :class:`Packet`.

    Raises:
        PcapError: at construction for a bad file header, while iterating for
        a truncated or corrupt record.
    """

    def __init__(self, stream: BinaryIO, *, owns_stream: bool = False) -> None:
        self._stream = stream
        self._owns = owns_stream
        header = stream.read(24)
        if header[:4] == PCAPNG_MAGIC:
            raise PcapError("pcapng is not supported; convert with: editcap -F pcap IN OUT", 0)
        if len(header) < 4 or not is_pcap(header):
            raise PcapError("not a pcap file (bad magic number)", 0)
        if len(header) < 24:
            raise PcapError("truncated pcap file header", len(header))
        self.byte_order, self.nanosecond = _MAGICS[header[:4]]
        _magic, major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack(
            self.byte_order + _FILE_HEADER, header
        )
        if major != 2:
            raise PcapError(f"pcap version {major}.{minor} is not supported", 4)
        self.version = (major, minor)
        self.snaplen = snaplen
        # The upper bits carry FCS information, not the link type.
        self.linktype = linktype & 0xFFFF
        self._offset = 24
        self._number = 0
        self._record = struct.Struct(self.byte_order + _RECORD_HEADER)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> PcapReader:
        """Open a file by path; the reader closes it."""
        stream = open(path, "rb")  # noqa: SIM115 (closed by close())
        try:
            return cls(stream, owns_stream=True)
        except BaseException:
            stream.close()
            raise

    def __iter__(self) -> Iterator[Packet]:
        scale = 1 if self.nanosecond else 1000
        while True:
            header = self._stream.read(16)
            if not header:
                return
            if len(header) < 16:
                raise PcapError("truncated packet record header", self._offset)
            seconds, fraction, incl_len, orig_len = self._record.unpack(header)
            if incl_len > MAX_RECORD:
                raise PcapError(f"packet record claims {incl_len} bytes", self._offset + 8)
            data = self._stream.read(incl_len)
            if len(data) < incl_len:
                raise PcapError(
                    f"truncated packet: {incl_len} bytes announced, {len(data)} present",
                    self._offset,
                )
            self._number += 1
            time_ns = seconds * 1_000_000_000 + fraction * scale
            packet = Packet(self._number, time_ns, data, orig_len, self._offset + 16)
            self._offset += 16 + incl_len
            yield packet

    def records(self) -> Iterator[tuple[bytes, int]]:
        """Each record's ``(data, capture time in ns)``, read as :meth:`__iter__` reads them.

        For a replay at full speed: no :class:`Packet` per record and no
        datetime unless the caller wants one (the tap's replay, where they
        were a third of its CPU per PDU). The same checks and errors as
        iterating; the two must not be mixed on one reader.

        Raises:
            PcapError: a truncated or corrupt record.
        """
        scale = 1 if self.nanosecond else 1000
        read, unpack = self._stream.read, self._record.unpack
        while True:
            header = read(16)
            if not header:
                return
            if len(header) < 16:
                raise PcapError("truncated packet record header", self._offset)
            seconds, fraction, incl_len, _orig_len = unpack(header)
            if incl_len > MAX_RECORD:
                raise PcapError(f"packet record claims {incl_len} bytes", self._offset + 8)
            data = read(incl_len)
            if len(data) < incl_len:
                raise PcapError(
                    f"truncated packet: {incl_len} bytes announced, {len(data)} present",
                    self._offset,
                )
            self._number += 1
            self._offset += 16 + incl_len
            yield data, seconds * 1_000_000_000 + fraction * scale

    def close(self) -> None:
        if self._owns:
            self._stream.close()

    def __enter__(self) -> PcapReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PcapWriter:
    """Writes a classic pcap file; use it as a context manager so it is flushed and closed.

    Args:
        stream: where to write; left open by :meth:`close` (the caller owns it)
            unless the writer was made by :meth:`open`.
        linktype: what the frames are (``LINKTYPE_ETHERNET``, ``LINKTYPE_RAW``, ...).
        nanosecond: nanosecond time stamps (``0xa1b23c4d``) instead of microseconds.
        snaplen: longer frames are cut to this many bytes; their original
            length is kept in the record.
        byte_order: ``"<"`` little-endian (what most tools write) or ``">"``.
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        linktype: int = LINKTYPE_ETHERNET,
        nanosecond: bool = False,
        snaplen: int = DEFAULT_SNAPLEN,
        byte_order: Literal["<", ">"] = "<",
        owns_stream: bool = False,
    ) -> None:
        if not 0 <= linktype <= 0xFFFF:
            raise ValueError(f"link type {linktype} is out of range")
        if not 0 < snaplen <= MAX_RECORD:
            raise ValueError(f"snaplen {snaplen} is out of range")
        if byte_order not in ("<", ">"):
            raise ValueError("byte_order must be '<' or '>'")
        self._stream = stream
        self._owns = owns_stream
        self._closed = False
        self.linktype = linktype
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self._record = struct.Struct(byte_order + _RECORD_HEADER)
        magic = MAGIC_NSEC if nanosecond else MAGIC_USEC
        stream.write(struct.pack(byte_order + _FILE_HEADER, magic, 2, 4, 0, 0, snaplen, linktype))

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, overwrite: bool = False, **options: object
    ) -> PcapWriter:
        """Create the file at ``path`` (refusing to replace one unless ``overwrite``)."""
        stream = open(path, "wb" if overwrite else "xb")  # noqa: SIM115 (closed by close())
        try:
            return cls(stream, owns_stream=True, **options)  # type: ignore[arg-type]
        except BaseException:
            stream.close()
            Path(path).unlink(missing_ok=True)
            raise

    def write(self, data: bytes, when: dt.datetime | int, orig_len: int | None = None) -> None:
        """Append one frame captured at ``when`` (aware datetime, or int ns since the epoch).

        Microsecond files keep whole microseconds (the rest is dropped, not rounded,
        so a packet never moves later than it was seen).
        """
        if self._closed:
            raise ValueError("write to a closed pcap writer")
        time_ns = _time_ns(when)
        seconds, rest = divmod(time_ns, 1_000_000_000)
        if not 0 <= seconds <= 0xFFFFFFFF:
            raise ValueError("capture time is outside what pcap can hold (1970 to 2106)")
        fraction = rest if self.nanosecond else rest // 1000
        kept = bytes(data[: self.snaplen])
        original = len(data) if orig_len is None else orig_len
        if original < len(kept) or original > 0xFFFFFFFF:
            raise ValueError(f"original length {original} is not possible for this frame")
        self._stream.write(self._record.pack(seconds, fraction, len(kept), original) + kept)

    def flush(self) -> None:
        self._stream.flush()

    def sync(self) -> None:
        """Flush and ask the kernel to put the bytes on disk (for evidence files)."""
        self.flush()
        fileno = getattr(self._stream, "fileno", None)
        if fileno is not None:
            os.fsync(fileno())

    def close(self) -> None:
        """Flush, and close the file if this writer opened it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stream.flush()
        finally:
            if self._owns:
                self._stream.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
