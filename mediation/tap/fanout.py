"""Spreading one interface's frames over capture workers (``PACKET_FANOUT``).

Each worker of ``mediate tap run --workers N`` has its own AF_PACKET socket
and ring; the sockets join one fanout group, and the kernel gives every
frame to exactly one of them (nothing twice, nothing skipped). Which one is
decided by the classic BPF program built here (``PACKET_FANOUT_CBPF``),
not by the kernel's own flow hash, because two things must hold:

- **Both directions of a conversation meet in one worker**, so a flow's
  number, content identifier and CC sequence are made in one place. The
  program hashes the two IP addresses with XOR (the same either way) and
  ignores ports, so every fragment of a datagram, every flow between two
  hosts and the ICMP errors about them go the same way too. The price: one
  pair of hosts uses one worker, however fast it talks.
- **Following frames go where the address state lives**: DHCP (UDP 67,
  68, 546, 547) and RADIUS accounting (UDP 1813, 1646) always go to worker
  0, which holds the leases and sessions; it pushes the addresses it learns
  to the others (mediation/tap/workers.py). Frames the program cannot read
  (not IPv4/IPv6, or behind a VLAN tag still in the frame) go to
  worker 0 as well: correct, only not spread.

On receive the kernel has already taken the outermost VLAN tag out of the
frame; a frame with a tag still in it (QinQ's inner one) goes to worker 0.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from mediation.tap.bpf import Insn
from mediation.tap.capture import SOL_PACKET, attach_fanout_program

PACKET_FANOUT = 18
PACKET_FANOUT_CBPF = 6
FOLLOWING_PORTS = (67, 68, 546, 547, 1813, 1646)  # DHCP, DHCPv6, RADIUS accounting

# Classic BPF opcodes used here.
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_H_IND = 0x48
# The program runs before the frame is handed to a socket, where the
# packet's data may start at the link header (sent) or the network header
# (received): so it reads the kernel's ethertype (SKF_AD_PROTOCOL) and
# addresses relative to the network header (SKF_NET_OFF), never fixed offsets.
_PROTOCOL = 0xFFFFF000  # SKF_AD_OFF + SKF_AD_PROTOCOL
_NET = 0xFFF00000  # SKF_NET_OFF
_JEQ_K, _JSET_K = 0x15, 0x45
_XOR_X, _RSH_K, _LSH_K, _AND_K, _MOD_K = 0xAC, 0x74, 0x64, 0x54, 0x94
_TAX, _LDX_IMM = 0x07, 0x01
_RET_K, _RET_A = 0x06, 0x16


class _Assembler:
    """Classic BPF with forward labels (jumps are relative and forward only)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int = 0, jt: object = 0, jf: object = 0) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def program(self) -> tuple[Insn, ...]:
        out = []
        for pc, (code, jt, jf, k) in enumerate(self.code):
            out.append(Insn(code, self._to(jt, pc), self._to(jf, pc), k))
        return tuple(out)

    def _to(self, target: object, pc: int) -> int:
        if isinstance(target, str):
            offset = self.labels[target] - pc - 1
            if not 0 <= offset <= 255:
                raise ValueError("steering program: jump out of range")
            return offset
        return int(target)  # type: ignore[call-overload]


def steering_program(workers: int) -> tuple[Insn, ...]:
    """The fanout program: the worker index (0 to ``workers - 1``) for each frame.

    Raises:
        ValueError: fewer than 2 or more than 64 workers.
    """
    if not 2 <= workers <= 64:
        raise ValueError("workers must be 2 to 64 for a fanout group")
    asm = _Assembler()
    asm.op(_LD_H_ABS, _PROTOCOL)
    asm.op(_JEQ_K, 0x0800, "v4", 0)
    asm.op(_JEQ_K, 0x86DD, "v6", "zero")
    _ipv4(asm, workers)
    _ipv6(asm, workers)
    asm.label("zero")
    asm.op(_RET_K, 0)
    return asm.program()


def _ports_to_zero(asm: _Assembler, name: str) -> None:
    """Source or destination port (X past the IP header) a following port: worker 0."""
    for offset in (0, 2):
        asm.op(_LD_H_IND, _NET + offset)
        for port in FOLLOWING_PORTS:
            asm.op(_JEQ_K, port, "zero", 0)
    asm.label(f"{name}_hash")


def _fold_and_pick(asm: _Assembler, workers: int) -> None:
    """A holds the XOR of the addresses: fold it to 8 bits and take it modulo ``workers``."""
    asm.op(_TAX)
    asm.op(_RSH_K, 16)
    asm.op(_XOR_X)
    asm.op(_TAX)
    asm.op(_RSH_K, 8)
    asm.op(_XOR_X)
    asm.op(_AND_K, 0xFF)
    asm.op(_MOD_K, workers)
    asm.op(_RET_A)


def _ipv4(asm: _Assembler, workers: int) -> None:
    asm.label("v4")
    asm.op(_LD_B_ABS, _NET + 9)
    asm.op(_JEQ_K, 17, 0, "v4_hash")  # not UDP: no following port
    asm.op(_LD_H_ABS, _NET + 6)
    asm.op(_JSET_K, 0x1FFF, "v4_hash", 0)  # a later fragment: no ports in it
    asm.op(_LD_B_ABS, _NET)  # X = the IPv4 header's length: 4 * IHL
    asm.op(_AND_K, 0x0F)
    asm.op(_LSH_K, 2)
    asm.op(_TAX)
    _ports_to_zero(asm, "v4")
    asm.op(_LD_W_ABS, _NET + 12)
    asm.op(_TAX)
    asm.op(_LD_W_ABS, _NET + 16)
    asm.op(_XOR_X)
    _fold_and_pick(asm, workers)


def _ipv6(asm: _Assembler, workers: int) -> None:
    asm.label("v6")
    asm.op(_LD_B_ABS, _NET + 6)
    asm.op(_JEQ_K, 17, 0, "v6_hash")
    asm.op(_LDX_IMM, 40)  # UDP right after the fixed header
    _ports_to_zero(asm, "v6")
    # XOR of the eight words of both addresses, kept in X between loads.
    asm.op(_LD_W_ABS, _NET + 8)
    for word in range(1, 8):
        asm.op(_TAX)
        asm.op(_LD_W_ABS, _NET + 8 + 4 * word)
        asm.op(_XOR_X)
    _fold_and_pick(asm, workers)


def join(sock: socket.socket, group: int, program: Sequence[Insn]) -> None:
    """Join fanout ``group`` (steered by ``program``); the socket must be bound.

    Raises:
        OSError: the kernel refused (no such group mode, a member of another kind).
    """
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT, (group & 0xFFFF) | (PACKET_FANOUT_CBPF << 16))
    attach_fanout_program(sock, program)
