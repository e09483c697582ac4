"""The UDP tap link against a real `mediate serve`: loss counted, forgeries refused."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path

import pytest
from taplink_support import add_tapped_warrant, notices, run_tap, serve, stored, tap_port
from test_warrants_support import Carrier

from mediation.pdu import CompletenessEvent, StreamKind
from mediation.pdu.fast import decode_content

DROPPED = (3, 6)  # datagrams (1-based) the relay loses on purpose


class LossyRelay:
    """Forwards datagrams to the server, dropping those numbered in ``drop``; keeps copies."""

    def __init__(self, server: tuple[str, int], drop: tuple[int, ...]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.server, self.drop = server, drop
        self.seen: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                datagram = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.seen.append(datagram)
            if len(self.seen) not in self.drop:
                self.sock.sendto(datagram, self.server)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    return carrier


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def test_udp_loss_is_counted_and_noticed_and_forgeries_refused(carrier: Carrier) -> None:
    handle = add_tapped_warrant(carrier)
    server = serve(carrier)
    relay = LossyRelay(_address(tap_port(server, "udp_listening")), DROPPED)
    try:
        run_tap(carrier, tap_port(server), "--udp", relay.address, "--batch", "4")
        sent = len(relay.seen)
        assert sent > max(DROPPED)
        # A replay of an authentic datagram, and a forgery (one octet changed).
        first = relay.seen[0]
        forged = first[:40] + bytes([first[40] ^ 1]) + first[41:]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(first, _address(tap_port(server, "udp_listening")))
            sock.sendto(forged, _address(tap_port(server, "udp_listening")))

        def settled() -> dict | None:
            taps = (server.status() or {}).get("taps", {})
            refused = taps.get("refused_datagrams", {})
            return taps if sum(refused.values()) >= 2 else None

        from test_control_live import wait_for

        taps = wait_for(settled, "the replay and the forgery to be refused")
        assert taps["upstream_lost"] == {"edge-1": len(DROPPED)}
        assert taps["refused_datagrams"] == {"replayed": 1, "bad tag": 1}
        assert taps["batches"] == sent - len(DROPPED)
        server.proc.send_signal(signal.SIGTERM)  # a clean stop: every notice is flushed
        server.proc.wait(timeout=30)
    finally:
        relay.close()
        server.stop()
    events = [decode_content("notice", der) for der in notices(carrier, handle)]
    gaps = [e for e in events if e.event is CompletenessEvent.UPSTREAM_GAP]
    assert sum(g.lost_count for g in gaps) == len(DROPPED)
    got = stored(carrier, handle)
    assert 0 < len(got[StreamKind.CMII]) < 60
