"""The kernel's filter for a live capture: built from the targets, compiled by libpcap.

The tap parses frames in Python at some 400,000 a second, far fewer than
a busy link carries. So the kernel runs a classic BPF program on every
frame first, and only the targets' frames (and DHCP, for following) are
ever copied to the tap. The Python matcher still decides every frame that
comes through (defence in depth: a filter being replaced, or a filter that
had to fall back to "everything", can let others' frames through; they are
then counted and dropped in Python).

libpcap writes the programs (:func:`compile_expressions`), from a handle
opened live on the capture interface. Only then does libpcap apply Linux's
VLAN rules: on receive the kernel moves the outermost 802.1Q tag out of
the frame into metadata before any filter runs, so ``vlan 100`` must read
the tag there (``ldb [vlanp]``, ``vlan_tci``) when it is present, and in
the frame otherwise (a frame this host sends with the tag written in).
A dead handle's program reads only the frame, and would miss every tagged
frame received.

libpcap's ``vlan`` keyword shifts every later offset in the expression by
one tag, across ``or``, so ``host A or vlan 100 and host B or vlan 200 and
host C`` does not mean what it says: ``vlan 200`` would be read as a tag
inside VLAN 100. Each alternative here is therefore compiled on its own,
and the programs are chained (:func:`chain`): where one rejects, the next
one starts.

Per capture interface, for the targets that apply to it:

- unscoped targets (and those scoped to this interface only): ``T``, then
  ``vlan and T``, then ``vlan and vlan and T``, where ``T`` is ``ether host``
  for a MAC, ``host`` for an address and ``net`` for a prefix (``host`` and
  ``net`` also take ARP and RARP sent by or for the address). The second
  and third catch tags still in the frame (sent by this host, or an inner
  QinQ tag);
- targets scoped to VLAN ``N``: ``vlan N and T``, then ``vlan N and vlan and T``;
- ``udp port 67 or udp port 68`` inside each group that has a MAC, so the
  DHCP follower sees the leases (a server's reply may carry neither the
  target's MAC nor an address the tap knows yet);
- ``iface:NAME`` for this interface: everything (no filter at all);
- ``user:NAME``: everything too, for now: the addresses come from RADIUS
  accounting while the capture runs, and the filter is not rebuilt as
  they change (the Python matcher decides every frame).

No target for the interface: a program that accepts nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from mediation.warrants.model import Target, TargetKind

BPF_MAXINSNS = 4096  # the kernel's limit for one classic program
_RET_K = 0x06  # BPF_RET | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA
SNAP = 262144  # "accept the whole frame" (the ring bounds what is copied)
_DHCP = "udp port 67 or udp port 68"


class Insn(NamedTuple):
    """One classic BPF instruction (``struct sock_filter``)."""

    code: int
    jt: int
    jf: int
    k: int


ACCEPT_ALL = (Insn(_RET_K, 0, 0, SNAP),)
ACCEPT_NONE = (Insn(_RET_K, 0, 0, 0),)


class KernelFilter(NamedTuple):
    """A compiled filter: the program, and how it was made (for counters and tests).

    ``alternatives`` is how many libpcap programs were chained; ``fallback``
    is set when the targets did not fit one kernel program and the filter
    accepts everything instead (Python still matches every frame).
    """

    program: tuple[Insn, ...]
    alternatives: int
    fallback: bool = False


def _term(target: Target) -> str | None:
    """The libpcap primitive for one target; ``None`` for an interface target."""
    if target.kind is TargetKind.MAC:
        return f"ether host {target.value}"
    if target.kind is TargetKind.ADDRESS:
        return f"host {target.value}"
    if target.kind is TargetKind.PREFIX:
        return f"net {target.value}"
    return None


def filter_expressions(targets: Iterable[Target], interface: str) -> list[str] | None:
    """The libpcap expressions whose union selects the targets' frames on ``interface``.

    Args:
        targets: the targets of every warrant the capture serves.
        interface: the capture interface.

    Returns:
        The expressions, in the order to chain them (``[]``: accept nothing),
        or ``None`` when a target takes everything on this interface.
    """
    groups: dict[int | None, list[str]] = {}  # VLAN scope -> primitives
    with_mac: set[int | None] = set()
    for target in targets:
        if target.interface is not None and target.interface != interface:
            continue
        if target.kind is TargetKind.USER:
            # Its addresses are learned from RADIUS at run time, and this
            # filter does not follow them yet: every frame goes to Python.
            return None
        if target.kind is TargetKind.INTERFACE:
            if target.value != interface:
                continue
            if target.vlan is None:
                return None
            term = "len >= 0"  # every frame: the whole VLAN
        else:
            term = _term(target)
            assert term is not None
        terms = groups.setdefault(target.vlan, [])
        if term not in terms:
            terms.append(term)
        if target.kind is TargetKind.MAC:
            with_mac.add(target.vlan)
    out: list[str] = []
    for vlan, terms in groups.items():
        body = " or ".join([*terms, _DHCP] if vlan in with_mac else terms)
        if vlan is None:
            out += [body, f"vlan and ({body})", f"vlan and vlan and ({body})"]
        else:
            out += [f"vlan {vlan} and ({body})", f"vlan {vlan} and vlan and ({body})"]
    return out


def compile_expressions(expressions: Sequence[str], interface: str) -> list[tuple[Insn, ...]]:
    """Each libpcap expression as a classic BPF program for ``interface``.

    One handle is opened live on the interface (needs CAP_NET_RAW) so that
    libpcap generates Linux's VLAN-metadata code; nothing is read from it.

    Raises:
        OSError: libpcap cannot be loaded or cannot open the interface.
        ValueError: libpcap refused an expression. The message never
            repeats it (it holds target addresses).
    """
    if not expressions:
        return []
    try:
        from scapy.libs import winpcapy as pcap
    except OSError as exc:  # scapy raises this when it finds no libpcap
        raise OSError(f"libpcap is not available: {exc}") from None
    errbuf = ctypes.create_string_buffer(256)
    handle = pcap.pcap_open_live(interface.encode(), 65535, 0, 0, errbuf)
    if not handle:
        message = errbuf.value.decode(errors="replace")
        raise OSError(f"libpcap cannot open {interface}: {message}")
    try:
        return [_compile(pcap, handle, expression, n) for n, expression in enumerate(expressions)]
    finally:
        pcap.pcap_close(handle)


def _compile(pcap: Any, handle: Any, expression: str, index: int) -> tuple[Insn, ...]:
    program = pcap.bpf_program()
    if pcap.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, -1) != 0:
        raise ValueError(f"libpcap refused target filter expression {index + 1}")
    try:
        # libpcap's k is unsigned; scapy's structure reads it signed.
        return tuple(
            Insn(i.code, i.jt, i.jf, i.k & 0xFFFFFFFF)
            for i in (program.bf_insns[n] for n in range(program.bf_len))
        )
    finally:
        pcap.pcap_freecode(ctypes.byref(program))


def chain(programs: Sequence[Sequence[Insn]]) -> tuple[Insn, ...]:
    """One program that accepts what any of ``programs`` accepts.

    Every ``ret #0`` (reject) of a program but the last becomes a jump to
    the start of the next one. Jumps in classic BPF are relative and
    forward only, so each program's own jumps stay valid. Each program
    libpcap writes sets every scratch register it reads, so nothing leaks
    from one into the next.
    """
    if not programs:
        return ACCEPT_NONE
    out: list[Insn] = []
    for index, program in enumerate(programs):
        last = index == len(programs) - 1
        for pc, insn in enumerate(program):
            if not last and insn.code == _RET_K and insn.k == 0:
                insn = Insn(_JA, 0, 0, len(program) - 1 - pc)
            out.append(insn)
    return tuple(out)


def kernel_filter(targets: Iterable[Target], interface: str) -> KernelFilter:
    """The filter for a capture on ``interface`` serving ``targets``.

    Raises:
        OSError, ValueError: see :func:`compile_expressions`.
    """
    expressions = filter_expressions(targets, interface)
    if expressions is None:
        return KernelFilter(ACCEPT_ALL, 0)
    program = chain(compile_expressions(expressions, interface))
    if len(program) > BPF_MAXINSNS:
        return KernelFilter(ACCEPT_ALL, len(expressions), fallback=True)
    return KernelFilter(program, len(expressions))


class OfflineFilter:
    """A tcpdump filter applied in Python to frames read from a file (libpcap's offline filter).

    For replaying a capture file where a live tap would have had the kernel
    filter (the seed form's ``-f`` with ``--read``). Compiled for the file's
    link type on a dead handle: tags in a file are in the frame.

    Args:
        expression: the filter (tcpdump syntax).
        linktype: the file's link type.

    Raises:
        OSError: libpcap cannot be loaded.
        ValueError: libpcap refused the expression (never repeated: it names the target).
    """

    def __init__(self, expression: str, linktype: int) -> None:
        try:
            from scapy.libs import winpcapy as pcap
        except OSError as exc:  # scapy raises this when it finds no libpcap
            raise OSError(f"libpcap is not available: {exc}") from None
        self._pcap = pcap
        self._handle = pcap.pcap_open_dead(linktype, 262144)
        self._program = pcap.bpf_program()
        if pcap.pcap_compile(self._handle, ctypes.byref(self._program), expression.encode(), 1, -1):
            pcap.pcap_close(self._handle)
            raise ValueError("libpcap refused the filter for this file's link type")
        self._header = pcap.pcap_pkthdr()
        # scapy declares pcap_offline_filter only on some platforms: declare it here.
        self._offline = pcap._lib.pcap_offline_filter
        self._offline.restype = ctypes.c_int
        self._offline.argtypes = [
            ctypes.POINTER(pcap.bpf_program),
            ctypes.POINTER(pcap.pcap_pkthdr),
            ctypes.c_char_p,
        ]

    def matches(self, frame: bytes) -> bool:
        """Whether the filter accepts ``frame``."""
        header = self._header
        header.caplen = header.len = len(frame)
        return bool(self._offline(ctypes.byref(self._program), ctypes.byref(header), frame))

    def close(self) -> None:
        """Free the program and the handle (idempotent)."""
        if self._handle is not None:
            self._pcap.pcap_freecode(ctypes.byref(self._program))
            self._pcap.pcap_close(self._handle)
            self._handle = None
