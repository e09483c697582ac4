"""The control socket: how the command line talks to a running server.

A Unix stream socket at ``DATA_DIR/run/control.sock`` (mode 0600, in a
0700 directory: only the server's own user can connect) carrying
newline-delimited JSON, one request and one response per line::

    -> {"op": "reload"}
    <- {"ok": true, "op": "reload", "changes": {...}, "warrants": {"w-3f9a1c": {...}}, ...}
    -> {"op": "status"}
    <- {"ok": true, "op": "status", "warrants": {...}, "taps_connected": [], ...}
    -> {"op": "purge", "handle": "w-3f9a1c", "dry_run": false}
    <- {"ok": true, "op": "purge", "purge": {"handle": ..., "retention_until": ..., ...}}
       ({"ok": false, "inside_retention": true, "error": "purge: ..."} inside retention)
    -> {"op": "nonsense"}
    <- {"ok": false, "error": "unknown op 'nonsense' (allowed: reload, status, purge)"}

Responses name warrants by handle only. This module is the protocol's
client side (:func:`request`, blocking, what the CLI uses);
``control_listener.py`` is the server's side, with its limits.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CONTROL_SOCKET = Path("run") / "control.sock"
# A request is a few dozen bytes; an answer (status) can be large, the
# client reads up to 16 times this. The server refuses a longer request
# line and closes its connection: nothing is buffered past this.
MAX_LINE = 64 * 1024
# sun_path holds 108 bytes on Linux; longer paths are reached through /proc.
_SUN_PATH_MAX = 100


class ControlError(Exception):
    """The control socket misbehaved, or a request was refused."""


def socket_path(data_dir: Path) -> Path:
    return data_dir / CONTROL_SOCKET


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A name for ``path`` that fits in ``sun_path``: itself, or via the parent's fd."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


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
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, reachable(path) as name:
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
