"""A veth pair with one end in a network namespace the test makes, and a sender there.

The capture end stays in the test's own namespace (no address, IPv6 off,
so the host sends nothing on it); the peer end is in a new namespace, where
``tests/netns_sender.py`` writes frames with a raw socket. Nothing leaves
the pair. Names carry the process id, so parallel runs do not collide, and
everything is removed on exit, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SENDER = Path(__file__).with_name("netns_sender.py")


def _ip(*args: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, timeout=20)


def _sysctl(setting: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "sysctl", "-qw", setting], check=False, capture_output=True)


@dataclass
class VethPair:
    """The capture end (here) and the sending end (in ``namespace``)."""

    capture: str
    peer: str
    namespace: str

    def send(
        self, frames: Sequence[bytes], *, rate: int | None = None, seconds: float = 1.0
    ) -> int:
        """Send ``frames`` from the peer end (once, or round and round at ``rate``/s).

        Returns:
            How many frames the sender wrote.
        """
        with tempfile.NamedTemporaryFile(suffix=".frames") as file:
            file.write(b"".join(struct.pack(">H", len(f)) + f for f in frames))
            file.flush()
            command = [
                "ip", "netns", "exec", self.namespace, sys.executable, str(SENDER),
                self.peer, file.name,
            ]  # fmt: skip
            if rate is not None:
                command += ["--rate", str(rate), "--seconds", str(seconds)]
            done = subprocess.run(
                command, check=True, capture_output=True, text=True, timeout=seconds * 4 + 20
            )
        return int(done.stdout.split()[-1])


class NetnsUnavailable(RuntimeError):
    """This machine or user cannot make a network namespace and a veth pair."""


def check_possible() -> None:
    """Raise :class:`NetnsUnavailable`, with the reason, where namespaces cannot be made."""
    if sys.platform != "linux" or os.geteuid() != 0:
        raise NetnsUnavailable("live capture needs root on Linux (network namespace, AF_PACKET)")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("live capture needs iproute2's ip (./dev installs it)")


@contextlib.contextmanager
def veth_pair(tag: str = "t") -> Iterator[VethPair]:
    """A veth pair, up, one end in a new namespace.

    Raises:
        NetnsUnavailable: not root, no ``ip``, or the kernel refused.
    """
    check_possible()
    suffix = f"{tag}{os.getpid() % 100000}"
    pair = VethPair(f"mcA{suffix}", f"mcB{suffix}", f"mediation-cap-{suffix}")
    try:
        try:
            _ip("netns", "add", pair.namespace)
            _ip("link", "add", pair.capture, "type", "veth", "peer", "name", pair.peer)
        except subprocess.CalledProcessError as exc:
            raise NetnsUnavailable(
                f"cannot make a network namespace and veth pair: {exc.stderr.strip()}"
            ) from None
        _ip("link", "set", pair.peer, "netns", pair.namespace)
        _sysctl(f"net.ipv6.conf.{pair.capture}.disable_ipv6=1")
        _sysctl(f"net.ipv6.conf.{pair.peer}.disable_ipv6=1", pair.namespace)
        _ip("link", "set", pair.capture, "up")
        _ip("link", "set", pair.peer, "up", namespace=pair.namespace)
        yield pair
    finally:
        subprocess.run(["ip", "link", "del", pair.capture], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", pair.namespace], capture_output=True, check=False)


@contextlib.contextmanager
def veth_pair_or_skip(tag: str = "t") -> Iterator[VethPair]:
    """:func:`veth_pair`, skipping the test (with the reason) where it cannot be made."""
    import pytest

    try:
        context = veth_pair(tag)
        pair = context.__enter__()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield pair
    finally:
        context.__exit__(None, None, None)
