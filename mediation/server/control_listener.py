"""The server's side of the control socket, bounded so no client can hurt it.

The protocol is in ``control.py``. Here: at most :data:`MAX_CONNECTIONS`
connections at once (more are answered ``busy``), a request line of at
most :data:`MAX_LINE` bytes nested at most :data:`MAX_DEPTH` deep, each
line due within :data:`DEADLINE_SECONDS` and its answer taken within as
long. One request's failure answers that request with an error and is
counted (:class:`ControlCounters`, shown by ``mediate status``); nothing a
client sends stops the listener or the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from mediation.refusals import Refusals
from mediation.server.control import MAX_LINE, ControlError, reachable, request

# Requests are flat objects. json.loads recurses once per level
# (RecursionError near 1,000); refusing past 32 keeps far from it.
MAX_DEPTH = 32
# The CLI opens one connection per command; 16 at once is plenty, and a
# client past that is answered "busy" at once instead of queueing.
MAX_CONNECTIONS = 16
# A request line must arrive whole within this of the connection (or the
# previous answer), and its answer be taken within as long: a slow or
# silent client holds a slot for at most this.
DEADLINE_SECONDS = 10.0
ACCEPT_RETRY_SECONDS = 0.1
_BUSY = "busy: too many control connections at once; try again"
_INTERNAL = "internal error; see the server's log"

log = logging.getLogger("mediation.server.control")
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


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


class ControlCounters:
    """Requests answered on the control socket, and those refused, by reason.

    Reasons: ``too_long`` (a line past :data:`MAX_LINE`), ``too_deep``
    (nesting past :data:`MAX_DEPTH`), ``not_json``, ``bad_request`` (not an
    object with an "op", or an op the server refuses), ``busy`` (past
    :data:`MAX_CONNECTIONS`), ``timeout`` (a request or an answer slower
    than the deadline), ``error`` (the server failed answering it).
    """

    REASONS = ("too_long", "too_deep", "not_json", "bad_request", "busy", "timeout", "error")

    def __init__(self) -> None:
        self.answered = 0
        self.refused = dict.fromkeys(self.REASONS, 0)
        self._refusals = Refusals(
            log, "control request refused", clock=trio.current_time, counts=self.refused
        )

    def refuse(self, reason: str, exc_info: bool = False) -> None:
        """Count one refusal; log it as :class:`mediation.refusals.Refusals` does.

        Args:
            reason: one of :attr:`REASONS`.
            exc_info: add the exception being handled to the line, if logged.
        """
        self._refusals.refuse(reason, exc_info=exc_info)

    def to_json(self) -> dict[str, Any]:
        return {"answered": self.answered, "refused": dict(self.refused)}


class ControlSocket:
    """A bound control socket: :meth:`bind` it, then :meth:`serve` until cancelled.

    Binding is separate from serving so that "another server is running"
    surfaces before the server starts its tasks, as a plain exception.

    Every connection is bounded: at most ``max_connections`` at once (more
    are answered ``busy`` and closed), each request line must arrive whole
    within ``deadline`` seconds and its answer be taken within as long, and
    one request's failure answers that request with an error.
    """

    def __init__(
        self,
        path: Path,
        sock: trio.socket.SocketType,
        *,
        max_connections: int = MAX_CONNECTIONS,
        deadline: float = DEADLINE_SECONDS,
    ) -> None:
        self.path = path
        self._sock = sock
        self._inode = path.stat().st_ino
        self.counters = ControlCounters()
        self.max_connections = max_connections
        self.deadline = deadline
        self._active = 0

    @classmethod
    async def bind(cls, path: Path, *, owned: bool = False, **limits: Any) -> ControlSocket:
        """Claim ``path``, bind it with mode 0600, listen.

        Args:
            path: where the socket goes (its directory is made 0700).
            owned: the caller holds the data directory's server lock, so a
                socket already at ``path`` is a dead server's: remove it
                without asking. Otherwise a socket that answers is refused.
            limits: ``max_connections`` and ``deadline`` (see the class).

        Raises:
            ControlError: another server answers there, or ``path`` is not a socket.
        """
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if owned:
            _remove_stale(path)
        else:
            await trio.to_thread.run_sync(_claim, path)  # it may ask a live server: off our loop
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with reachable(path) as name:
                await sock.bind(name)
            os.chmod(path, 0o600)
            sock.listen(16)
            return cls(path, sock, **limits)
        except BaseException:
            sock.close()
            raise

    async def serve(self, handler: Handler, *, task_status: Any = None) -> None:
        """Answer each request line with ``await handler(request)`` until cancelled.

        Reports started at once (connections queue from :meth:`bind` on); on
        the way out removes the socket file, unless another process replaced it.
        """
        listener = trio.SocketListener(self._sock)
        try:
            async with trio.open_nursery() as nursery:
                if task_status is not None:
                    task_status.started(self.path)
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:  # out of file descriptors or memory: wait, go on
                        log.error("control socket: accept failed: %s", exc.strerror)
                        await trio.sleep(ACCEPT_RETRY_SECONDS)
                        continue
                    if self._active >= self.max_connections:
                        self.counters.refuse("busy")
                        with contextlib.suppress(OSError):  # non-blocking; never waits
                            os.write(stream.socket.fileno(), _error_line(_BUSY))
                        await stream.aclose()
                        continue
                    self._active += 1
                    nursery.start_soon(self._connection, handler, stream)
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()
        self._sock.close()

    async def _connection(self, handler: Handler, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await self._converse(handler, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception:  # a bug here costs this connection, never the listener
            self.counters.refuse("error", exc_info=True)
        finally:
            self._active -= 1

    async def _converse(self, handler: Handler, stream: trio.SocketStream) -> None:
        """Read request lines and answer each, until EOF, a deadline or an over-long line."""
        buffer = bytearray()
        while True:
            line: bytes | None = None
            with trio.move_on_after(self.deadline):
                line = await _receive_line(stream, buffer)
                if line is None:
                    return  # the client is done
            if line is None:  # the deadline passed: a slow or silent client
                self.counters.refuse("timeout")
                await self._send(stream, _error_line(f"no request within {self.deadline:g} s"))
                return
            if len(line) > MAX_LINE:
                self.counters.refuse("too_long")
                await self._send(stream, _error_line(f"request line longer than {MAX_LINE} bytes"))
                return
            response, refused = await _answer(handler, line)
            if refused is not None:
                self.counters.refuse(refused, exc_info=refused == "error")
            else:
                self.counters.answered += 1
            try:
                payload = json.dumps(response).encode() + b"\n"
            except (TypeError, ValueError):
                self.counters.refuse("error", exc_info=True)
                payload = _error_line(_INTERNAL)
            if not await self._send(stream, payload):
                return

    async def _send(self, stream: trio.SocketStream, payload: bytes) -> bool:
        """Send ``payload``; False if the client did not take it within the deadline."""
        with trio.move_on_after(self.deadline):
            await stream.send_all(payload)
            return True
        self.counters.refuse("timeout")
        return False


def _remove_stale(path: Path) -> None:
    """Remove a socket at ``path`` that no server can own (we hold the lock)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket")
    log.info("control socket: removed %s, left by a server that did not stop cleanly", path)
    path.unlink(missing_ok=True)


async def serve_control(path: Path, handler: Handler, *, task_status: Any = None) -> None:
    """:meth:`ControlSocket.bind` and :meth:`ControlSocket.serve` in one call."""
    control = await ControlSocket.bind(path)
    await control.serve(handler, task_status=task_status)


async def _receive_line(stream: trio.SocketStream, buffer: bytearray) -> bytes | None:
    """The next line from ``stream`` (without its newline), held in ``buffer`` meanwhile.

    Returns None at EOF. Reads no further than :data:`MAX_LINE` + 1 bytes
    without a newline: a longer line comes back as those bytes (the caller
    refuses it), so a client cannot make us buffer without bound.
    """
    while True:
        end = buffer.find(b"\n")
        if end >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            return line
        if len(buffer) > MAX_LINE:
            return bytes(buffer)
        chunk = await stream.receive_some(MAX_LINE + 1 - len(buffer))
        if not chunk:
            return None
        buffer += chunk


async def _answer(handler: Handler, line: bytes) -> tuple[dict[str, Any], str | None]:
    """The answer to one request line, and why it was refused (None: it was not)."""
    if _too_deep(line, MAX_DEPTH):
        return {"ok": False, "error": f"request nested deeper than {MAX_DEPTH}"}, "too_deep"
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        return {"ok": False, "error": "not JSON; send one JSON object per line"}, "not_json"
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        return {"ok": False, "error": 'a request is a JSON object with an "op"'}, "bad_request"
    try:
        return await handler(request), None
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}, "bad_request"
    except Exception:
        log.exception("control request %r failed", request["op"][:40])
        return {"ok": False, "error": _INTERNAL}, "error"


_SPECIAL = re.compile(rb'[\[\]{}"\\]')


def _too_deep(line: bytes, limit: int) -> bool:
    """True if brackets outside strings nest deeper than ``limit``.

    Why: ``json.loads`` recurses once per level, and a line of 50,000 ``[``
    raises RecursionError, which once stopped the server. This scan looks
    only at brackets, quotes and backslashes, so it costs one regex pass.
    """
    depth, in_string, skip = 0, False, -1
    for match in _SPECIAL.finditer(line):
        pos = match.start()
        if pos == skip:
            continue  # the character after a backslash inside a string
        char = line[pos]
        if in_string:
            if char == 0x5C:  # backslash
                skip = pos + 1
            elif char == 0x22:  # quote
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in b"[{":
            depth += 1
            if depth > limit:
                return True
        elif char in b"]}":
            depth -= 1
    return False


def _error_line(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}).encode() + b"\n"
