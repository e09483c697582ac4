"""The control socket: how the command line talks to a running server.

A Unix stream socket at ``DATA_DIR/run/control.sock`` (mode 0600, in a
0700 directory: only the server's own user can connect) carrying
newline-delimited JSON, one request and one response per line::

    -> {"op": "reload"}
    <- {"ok": true, "op": "reload", "changes": {...}, "warrants": {"w-3f9a1c": {...}}, ...}
    -> {"op": "status"}
    <- {"ok": true, "op": "status", "warrants": {...}, "taps_connected": [], ...}
    -> {"op": "nonsense"}
    <- {"ok": false, "error": "unknown op 'nonsense' (allowed: reload, status)"}

Responses name warrants by handle only. :func:`serve_control` is the trio
side; :func:`request` is the blocking client the CLI uses.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio

CONTROL_SOCKET = Path("run") / "control.sock"
MAX_LINE = 64 * 1024
IDLE_SECONDS = 30.0
# sun_path holds 108 bytes on Linux; longer paths are reached through /proc.
_SUN_PATH_MAX = 100

log = logging.getLogger("mediation.server.control")
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    """The control socket misbehaved, or a request was refused."""


def socket_path(data_dir: Path) -> Path:
    return data_dir / CONTROL_SOCKET


@contextlib.contextmanager
def _reachable(path: Path) -> Iterator[str]:
    """A name for ``path`` that fits in ``sun_path``: itself, or via the parent's fd."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _claim(path: Path) -> None:
    """Remove a stale socket left by a server that died; refuse if one still answers."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket")
    try:
        answered = request(path, {"op": "status"}, timeout=2.0)
    except ControlError as exc:
        raise ControlError(
            f"{path} belongs to a server that does not answer ({exc}); stop it first"
        ) from None
    if answered is not None:
        raise ControlError(f"another server is running (its control socket {path} answers)")
    path.unlink(missing_ok=True)


class ControlSocket:
    """A bound control socket: :meth:`bind` it, then :meth:`serve` until cancelled.

    Binding is separate from serving so that "another server is running"
    surfaces before the server starts its tasks, as a plain exception.
    """

    def __init__(self, path: Path, sock: trio.socket.SocketType) -> None:
        self.path = path
        self._sock = sock
        self._inode = path.stat().st_ino

    @classmethod
    async def bind(cls, path: Path) -> ControlSocket:
        """Claim ``path`` (removing a stale socket), bind it with mode 0600, listen."""
        import trio  # here, not at the top: the CLI's client side should not pay for it

        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        await trio.to_thread.run_sync(_claim, path)  # it may ask a live server: not on our loop
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _reachable(path) as name:
                await sock.bind(name)
            os.chmod(path, 0o600)
            sock.listen(16)
            return cls(path, sock)
        except BaseException:
            sock.close()
            raise

    async def serve(self, handler: Handler, *, task_status: Any = None) -> None:
        """Answer each request line with ``await handler(request)`` until cancelled.

        Reports started at once (connections queue from :meth:`bind` on); on
        the way out removes the socket file, unless another process replaced it.
        """
        import trio

        listener = trio.SocketListener(self._sock)
        try:
            if task_status is not None:
                task_status.started(self.path)
            await trio.serve_listeners(functools.partial(_serve_connection, handler), [listener])
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()
        self._sock.close()


async def serve_control(path: Path, handler: Handler, *, task_status: Any = None) -> None:
    """:meth:`ControlSocket.bind` and :meth:`ControlSocket.serve` in one call."""
    control = await ControlSocket.bind(path)
    await control.serve(handler, task_status=task_status)


async def _serve_connection(handler: Handler, stream: trio.SocketStream) -> None:
    import trio

    buffer = b""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        async with stream:
            while True:
                chunk = b""
                with trio.move_on_after(IDLE_SECONDS):
                    chunk = await stream.receive_some(4096)
                if not chunk:
                    return  # the client is done, or idle too long
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    response = await _answer(handler, line)
                    await stream.send_all(json.dumps(response).encode() + b"\n")
                if len(buffer) > MAX_LINE:
                    await stream.send_all(b'{"ok": false, "error": "request line too long"}\n')
                    return


async def _answer(handler: Handler, line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError:
        return {"ok": False, "error": "not JSON; send one JSON object per line"}
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        return {"ok": False, "error": 'a request is a JSON object with an "op"'}
    try:
        return await handler(request)
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception:
        log.exception("control request %r failed", request["op"])
        return {"ok": False, "error": "internal error; see the server's log"}


def request(path: Path, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any] | None:
    """Send one request and return the response; None if no server is listening.

    Raises:
        ControlError: the socket exists but refused us (permissions), or the
            server did not answer within ``timeout`` seconds, or answered nonsense.
    """
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return None
    except FileNotFoundError:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, _reachable(path) as name:
        sock.settimeout(timeout)
        try:
            sock.connect(name)
        except (FileNotFoundError, ConnectionRefusedError):
            return None  # a socket left behind by a server that is gone
        except PermissionError:
            raise ControlError(
                "the control socket belongs to another user (run as the server's user)"
            ) from None
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
            reply = _read_line(sock)
        except TimeoutError:
            raise ControlError(f"the server did not answer within {timeout:g} s") from None
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                return None
            raise
    try:
        response = json.loads(reply)
    except ValueError:
        raise ControlError("the server's answer is not JSON") from None
    if not isinstance(response, dict):
        raise ControlError("the server's answer is not a JSON object")
    return response


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ControlError("the server closed the connection without answering")
        data += chunk
        if len(data) > 16 * MAX_LINE:
            raise ControlError("the server's answer is too long")
    return data.split(b"\n", 1)[0]


# What the CLI makes of the answers ---------------------------------------------


def ask(data_dir: Path, op: str) -> tuple[dict[str, Any] | None, str | None]:
    """Send ``op`` to the server of ``data_dir``: (response, None), or (None, why not)."""
    try:
        response = request(socket_path(data_dir), {"op": op})
    except ControlError as exc:
        return None, f"server: {exc}; a running server picks the change up within a second"
    if response is None:
        return None, "server: not running; the change applies when it starts"
    if not response.get("ok"):
        return None, f"server: refused {op}: {response.get('error')}"
    return response, None


def describe_status(status: dict[str, Any]) -> str:
    """``active: yes (since ...); taps accepted: ...`` for one warrant's status."""
    taps = ", ".join(status.get("taps_accepted") or []) or "none connected"
    state = status.get("state")
    if state == "active":
        return f"active: yes (since {status.get('since')}); taps accepted: {taps}"
    if state == "pending":
        return f"active: no (pending until {status.get('start')}); taps accepted: {taps}"
    return f"active: no ({state} at {status.get('end')})"


def reload_report(data_dir: Path, handle: str | None) -> str:
    """Ask the server to reload now; one line saying what it made of ``handle``."""
    response, why_not = ask(data_dir, "reload")
    if response is None:
        return why_not or "server: no answer"
    if handle is None:
        return "server: applied"
    status = response.get("warrants", {}).get(handle)
    if status is None:
        return "server: applied; the warrant is not loaded (stopped)"
    return f"server: applied; {describe_status(status)}"
