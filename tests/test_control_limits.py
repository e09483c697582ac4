"""The control socket's limits, in-process on a real Unix socket.

No line a client sends, and no way of sending it, stops the listener: each
bad request is answered with an error, counted, and the next client served.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from mediation.server.control import MAX_LINE, request
from mediation.server.control_listener import MAX_DEPTH, ControlSocket, _too_deep


async def handler(message: dict[str, Any]) -> dict[str, Any]:
    if message["op"] == "status":
        return {"ok": True, "op": "status"}
    if message["op"] == "unencodable":
        return {"ok": True, "value": object()}  # a bug: json.dumps fails on it
    return {"ok": False, "error": "unknown op"}


def exchange(path: Path, payload: bytes, timeout: float = 5.0) -> list[bytes]:
    """Send ``payload`` raw, read until the server closes (or ``timeout``); the lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except BrokenPipeError:  # the server stopped reading (a line too long): read its answer
            pass
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:  # closed with our unread bytes queued: after its answer
            pass
    return data.splitlines()


async def ask(path: Path, payload: bytes) -> list[bytes]:
    return await trio.to_thread.run_sync(exchange, path, payload)


async def status_ok(path: Path) -> bool:
    answer = await trio.to_thread.run_sync(request, path, {"op": "status"})
    return answer == {"ok": True, "op": "status"}


async def test_deep_nesting_is_refused_and_the_server_goes_on(tmp_path: Path) -> None:
    """A line of 50,000 '[' raised RecursionError in json.loads and killed the server."""
    path = tmp_path / "control.sock"
    control = await ControlSocket.bind(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, handler)
        for payload in (b"[" * 50_000, b'{"op": "status", "x": ' + b"{" * 40_000):
            (answer,) = await ask(path, payload + b"\n")
            assert (
                answer
                == f'{{"ok": false, "error": "request nested deeper than {MAX_DEPTH}"}}'.encode()
            )
        # Brackets inside a string are not nesting.
        quoted = b'{"op": "status", "x": "' + b"[" * 1000 + b'\\"]"}\n'
        assert await ask(path, quoted) == [b'{"ok": true, "op": "status"}']
        assert await status_ok(path)
        assert control.counters.refused["too_deep"] == 2
        assert control.counters.answered == 2
        nursery.cancel_scope.cancel()


async def test_an_over_long_line_is_answered_and_its_connection_closed(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    control = await ControlSocket.bind(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, handler)
        # No newline ever: the server must stop reading at MAX_LINE, not buffer on.
        lines = await ask(path, b"x" * (4 * MAX_LINE))
        assert lines == [
            f'{{"ok": false, "error": "request line longer than {MAX_LINE} bytes"}}'.encode()
        ]
        # A request after the long line on the same connection is never read.
        lines = await ask(path, b" " * (MAX_LINE + 1) + b'\n{"op": "status"}\n')
        assert len(lines) == 1 and b"longer than" in lines[0]
        assert control.counters.refused["too_long"] == 2
        assert await status_ok(path)
        nursery.cancel_scope.cancel()


async def test_every_failure_answers_that_request_only(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    control = await ControlSocket.bind(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, handler)
        lines = await ask(
            path,
            b'{"op": "unencodable"}\n\xff\xfe\x00\n[1, 2]\n{"op": 5}\n{"op": "nope"}\n'
            b'{"op": "status"}\n',
        )
        assert lines == [
            b'{"ok": false, "error": "internal error; see the server\'s log"}',
            b'{"ok": false, "error": "not JSON; send one JSON object per line"}',
            b'{"ok": false, "error": "a request is a JSON object with an \\"op\\""}',
            b'{"ok": false, "error": "a request is a JSON object with an \\"op\\""}',
            b'{"ok": false, "error": "unknown op"}',
            b'{"ok": true, "op": "status"}',
        ]
        refused = control.counters.to_json()["refused"]
        assert (refused["error"], refused["not_json"], refused["bad_request"]) == (1, 1, 2)
        nursery.cancel_scope.cancel()


async def test_silent_clients_cannot_hold_the_listener(tmp_path: Path) -> None:
    """Past the connection limit a client is answered "busy" at once; the silent are cut off."""
    path = tmp_path / "control.sock"
    control = await ControlSocket.bind(path, max_connections=2, deadline=0.5)
    silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve, handler)
            for sock in silent:
                sock.connect(str(path))
                sock.sendall(b'{"op": "sta')  # half a request, then nothing
            while control.counters.refused["busy"] == 0:  # until both slots are taken
                lines = await ask(path, b'{"op": "status"}\n')
            assert lines == [
                b'{"ok": false, "error": "busy: too many control connections at once; try again"}'
            ]

            def read_all(sock: socket.socket) -> bytes:
                sock.settimeout(5)
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
                return data

            for sock in silent:  # each is told and closed at its deadline
                data = await trio.to_thread.run_sync(read_all, sock)
                assert data == b'{"ok": false, "error": "no request within 0.5 s"}\n'
            assert control.counters.refused["timeout"] == 2
            assert await status_ok(path)
            nursery.cancel_scope.cancel()
    finally:
        for sock in silent:
            sock.close()


@pytest.mark.parametrize(
    ("line", "deep"),
    [
        (b'{"op": "status"}', False),
        (b"[" * 32 + b"]" * 32, False),
        (b"[" * 33, True),
        (b'"' + b"[" * 100 + b'"', False),
        (b'"\\"' + b"[" * 100 + b'"', False),  # an escaped quote does not end the string
        (b'"\\\\"' + b"[" * 100, True),  # an escaped backslash does not escape the quote
        (b"[]" * 10_000, False),
    ],
)
def test_depth_scan(line: bytes, deep: bool) -> None:
    assert _too_deep(line, 32) is deep
