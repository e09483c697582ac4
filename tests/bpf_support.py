"""A small interpreter of classic BPF, for testing the programs libpcap writes.

It runs what :mod:`mediation.tap.bpf` chains on a frame without any kernel,
so the expressions and the chaining are tested everywhere; the network
namespace tests then show the same programs in the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

from mediation.tap.bpf import Insn


def run(program: Sequence[Insn], frame: bytes) -> int:
    """What ``program`` returns for ``frame`` with no VLAN metadata (for tests).

    A small interpreter of the instructions libpcap emits for these
    expressions; the ancillary VLAN loads read as "no tag present".
    """
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(frame)
    while True:
        code, jt, jf, k = program[pc]
        cls, size, mode, op, src = code & 7, code & 0x18, code & 0xE0, code & 0xF0, code & 8
        pc += 1
        if cls in (0, 1):  # LD, LDX
            if mode == 0x00:  # IMM
                value = k
            elif mode == 0x60:  # MEM
                value = mem[k]
            elif cls == 1 and mode == 0xA0:  # MSH: 4 * (frame[k] & 0xf)
                if k >= n:
                    return 0
                value = (frame[k] & 0xF) * 4
            elif mode in (0x20, 0x40):  # ABS, IND
                at = k + (x if mode == 0x40 else 0)
                width = {0x00: 4, 0x08: 2, 0x10: 1}[size]
                if k >= 0xFFFFF000:
                    value = 0  # an ancillary load (vlan_tci, vlanp): no tag
                elif at + width > n:
                    return 0
                else:
                    value = int.from_bytes(frame[at : at + width], "big")
            else:
                raise ValueError(f"instruction {code:#x} is not interpreted")
            if cls == 0:
                a = value
            else:
                x = value
        elif cls == 2:  # ST
            mem[k] = a
        elif cls == 3:  # STX
            mem[k] = x
        elif cls == 4:  # ALU
            operand = x if src else k
            a = _alu(op, a, operand) & 0xFFFFFFFF
        elif cls == 5:  # JMP
            operand = x if src else k
            if op == 0x00:
                pc += k
            else:
                taken = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand,
                         0x40: a & operand != 0}[op]  # fmt: skip
                pc += jt if taken else jf
        elif cls == 6:  # RET
            return a if code & 0x18 == 0x10 else k
        elif cls == 7:  # MISC: TAX / TXA
            if code & 0xF8 == 0:
                x = a
            else:
                a = x


def _alu(op: int, a: int, b: int) -> int:
    if op == 0x00:
        return a + b
    if op == 0x10:
        return a - b
    if op == 0x20:
        return a * b
    if op == 0x30:
        return a // b if b else 0
    if op == 0x50:
        return a & b
    if op == 0x40:
        return a | b
    if op == 0x60:
        return a << b
    if op == 0x70:
        return a >> b
    raise ValueError(f"ALU operation {op:#x} is not interpreted")
