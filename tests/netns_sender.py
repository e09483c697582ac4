"""Send frames out of an interface with a raw socket, from inside a network namespace.

    python netns_sender.py IFACE FILE [--rate N] [--seconds S]

FILE holds the frames: each a 2-octet big-endian length then the octets.
Without --rate the frames are sent once, in order. With --rate they are
sent round and round at N frames/s for S seconds (paced per millisecond),
and the number sent is printed. Bounded in count and time; used by the
live capture tests and bench/tap.py.
"""

from __future__ import annotations

import argparse
import socket
import struct
import time
from pathlib import Path


def read_frames(path: str) -> list[bytes]:
    data = Path(path).read_bytes()
    frames, at = [], 0
    while at < len(data):
        (size,) = struct.unpack_from(">H", data, at)
        frames.append(data[at + 2 : at + 2 + size])
        at += 2 + size
    return frames


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("iface")
    parser.add_argument("file")
    parser.add_argument("--rate", type=int)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    frames = read_frames(args.file)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((args.iface, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    if args.rate is None:
        for frame in frames:
            sock.send(frame)
        print(len(frames))
        return
    send, n, total = sock.send, len(frames), int(args.rate * args.seconds)
    began = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - began) * args.rate) + 1)
        while sent < due:
            try:
                send(frames[sent % n])
            except BlockingIOError:
                break  # the qdisc is full; this frame is retried next tick
            sent += 1
        if time.perf_counter() - began > args.seconds * 3:
            break  # far behind: give up rather than run on
        if sent >= due:
            time.sleep(0.0005)  # the next tick's frames are not due yet: leave the CPU
    print(sent)


if __name__ == "__main__":
    main()
