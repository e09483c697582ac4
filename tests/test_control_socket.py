"""The control socket in-process: framing, errors, permissions, stale sockets, long paths."""

from __future__ import annotations

import datetime as dt
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from test_warrants_support import Carrier

from mediation.server.app import MediationServer
from mediation.server.control import ControlError, request
from mediation.server.control_listener import serve_control
from mediation.warrants.access import KeyNeed, KeyOptions, open_registry
from mediation.warrants.model import CaseDetails, ContentLevel, Target, TargetKind, utc_now
from mediation.warrants.operations import add_warrant


async def handler(message: dict[str, Any]) -> dict[str, Any]:
    if message["op"] == "status":
        return {"ok": True, "op": "status", "warrants": {}}
    if message["op"] == "boom":
        raise RuntimeError("a bug")
    raise ControlError(f"unknown op {message['op']!r} (allowed: status)")


async def ask(path: Path, message: dict[str, Any]) -> dict[str, Any] | None:
    return await trio.to_thread.run_sync(request, path, message)


async def test_requests_answers_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.sock"
    async with trio.open_nursery() as nursery:
        assert await nursery.start(serve_control, path, handler) == path
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert await ask(path, {"op": "status"}) == {"ok": True, "op": "status", "warrants": {}}
        unknown = await ask(path, {"op": "nope"})
        assert unknown == {"ok": False, "error": "unknown op 'nope' (allowed: status)"}
        assert await ask(path, {"op": "boom"}) == {
            "ok": False,
            "error": "internal error; see the server's log",
        }
        assert (await ask(path, {"no": "op"}))["ok"] is False  # type: ignore[index]

        def pipelined() -> list[bytes]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
                sock.sendall(b'{"op": "status"}\nnot json\n')
                data = b""
                while data.count(b"\n") < 2:
                    data += sock.recv(4096)
                return data.splitlines()

        first, second = await trio.to_thread.run_sync(pipelined)
        assert first.startswith(b'{"ok": true')
        assert second == b'{"ok": false, "error": "not JSON; send one JSON object per line"}'
        nursery.cancel_scope.cancel()
    assert not path.exists()  # removed on the way out
    assert request(path, {"op": "status"}) is None  # no server: None, not an error


async def test_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed server leaves
    assert request(path, {"op": "status"}) is None
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, handler)
        assert (await ask(path, {"op": "status"}))["ok"] is True  # type: ignore[index]
        with pytest.raises(ControlError, match="another server is running"):
            await serve_control(path, handler)
        nursery.cancel_scope.cancel()


async def test_paths_longer_than_sun_path_work(tmp_path: Path) -> None:
    path = tmp_path / ("d" * 60) / ("e" * 60) / "control.sock"
    assert len(str(path)) > 108
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, handler)
        assert (await ask(path, {"op": "status"}))["ok"] is True  # type: ignore[index]
        nursery.cancel_scope.cancel()
    assert not path.exists()


def test_a_socket_of_another_user_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "control.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def refuse(self, address):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(ControlError, match="belongs to another user"):
        request(path, {"op": "status"})
    listener.close()


async def test_server_starts_and_ends_windows_on_its_clock(
    tmp_path: Path, monkeypatch, mock_clock
) -> None:
    """The whole server in-process on trio's mock clock: windows open and close on time."""
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    t0 = utc_now()
    details = CaseDetails("CASE-0001", (Target(TargetKind.ADDRESS, "192.0.2.10"),))
    options = KeyOptions(str(carrier.key))
    with open_registry(carrier.data, options, KeyNeed.REQUIRED, lock=True) as registry:
        start, end = t0 + dt.timedelta(seconds=5), t0 + dt.timedelta(seconds=10)
        warrant = add_warrant(registry, "AGENCY-TEST-1", details, ContentLevel.FULL, start, end, t0)
        key = registry.key
    assert key is not None
    base = trio.current_time()

    def clock() -> dt.datetime:
        # Rounded: float sums of 1.0 jumps from an arbitrary base can land just short.
        return t0 + dt.timedelta(seconds=round(trio.current_time() - base, 3))

    server = MediationServer(carrier.data, key, clock=clock)
    path = carrier.data / "run" / "control.sock"
    states = []
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        for second in range(12):
            response = await ask(path, {"op": "status"})
            assert response is not None
            states.append(response["warrants"][warrant.handle]["state"])
            mock_clock.jump(1)  # one second passes, exactly; the server ticks
            # Wait for that tick to have applied, not merely for trio to look idle:
            # opening or closing streams runs in threads, which count as blocked.
            await server.wait_ticks(second + 1)
        nursery.cancel_scope.cancel()
    assert states == ["pending"] * 5 + ["active"] * 5 + ["expired"] * 2
