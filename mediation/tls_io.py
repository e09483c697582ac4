"""Receiving on a trio TLS stream with one loop turn, not three, per burst of records.

Below both ``server/`` and ``lea/``: the server's tap ingress
(``server/tap_connection.py``) and the agency's connection driver
(``lea/driver.py``) read with it, and ``server/tls_send.py`` shares its
checks of trio's internals (:func:`usable`, :func:`mark_broken`).

``trio.SSLStream.receive_some`` returns one TLS record's octets a call
(a tap batch of ~25 KiB is two records) and yields to the scheduler at
least once per call even when the record is already buffered; waiting for
the socket also takes its inner receive lock, one more turn. At light load
the tap link's reader receives one batch every ~15 ms, so those turns and
trio's wrappers are a fixed cost per batch (docs/architecture.md, "The
server's ingress at light load").

:func:`receive_some` decrypts every record already received (up to
``max_bytes``) in one call; when none is, it reads the socket directly
(non-blocking) into the stream's own incoming buffer, waiting for the
socket to be readable when it is empty. It reads the socket under the
stream's inner receive lock (taken without a turn when free) and counts the
read as trio's own paths do, so a send of trio's that must read first (a
TLS 1.2 renegotiation) waits for this read and uses it, never waiting on
the same socket beside it. Each call yields to the scheduler
exactly once: the wait, or a checkpoint when the data was there already
(so a reader fed without pause never starves the other tasks). Anything
unusual (a stream still handshaking, broken or closed, its receive lock
held, another kind of stream or transport, a trio without these
internals) takes ``receive_some`` itself. Octets the TLS object wants to
send in answer (a TLS 1.3 key update) are sent as trio sends them, under
the stream's send lock. Errors are trio's: a TLS error or a reset makes
the stream broken and raises ``trio.BrokenResourceError``.
"""

from __future__ import annotations

import os
import ssl

import trio

try:  # trio's internals the direct paths rely on; without them every call is trio's own
    from trio._ssl import _State as _SslState

    _OK = _SslState.OK
    _BROKEN = _SslState.BROKEN
except (ImportError, AttributeError):  # pragma: no cover - another trio
    _OK = _BROKEN = None

# What one read of the socket asks for (the kernel gives what it has).
SOCKET_READ = 256 * 1024


def usable(stream: trio.abc.Stream) -> bool:
    """Whether ``stream`` is a ``trio.SSLStream`` over a socket, handshaken and not
    broken, on a trio with the internals the direct paths use (here and in
    :mod:`mediation.server.tls_send`); else they take trio's own calls."""
    if _OK is None or stream.__class__ is not trio.SSLStream:
        return False
    try:
        return (
            stream._state is _OK  # type: ignore[attr-defined]
            and stream._handshook.done  # type: ignore[attr-defined]
            and isinstance(stream.transport_stream, trio.SocketStream)  # type: ignore[attr-defined]
        )
    except AttributeError:  # pragma: no cover - another trio
        return False


def mark_broken(stream: trio.SSLStream) -> None:
    """Mark ``stream`` broken, as trio does after a TLS error or a reset on its own paths."""
    stream._state = _BROKEN


def _direct(stream: trio.SSLStream) -> bool:
    """Whether ``stream`` can be read directly now (else: ``receive_some``)."""
    return usable(stream) and not stream._inner_recv_lock.locked()


async def receive_some(stream: trio.abc.ReceiveStream, max_bytes: int) -> bytes:
    """``stream.receive_some(max_bytes)``, every buffered record at once, one turn a call.

    Args:
        stream: the connection; a ``trio.SSLStream`` over a socket gets the
            direct path, anything else its own ``receive_some``.
        max_bytes: at most this many octets returned (at least 1).

    Returns:
        The decrypted octets; ``b""`` when the peer closed the TLS session.

    Raises:
        trio.BrokenResourceError: a TLS error, a reset, or the connection
            cut without a TLS close (the stream is then broken).
        trio.ClosedResourceError: the stream was closed.
    """
    if not _direct(stream):  # type: ignore[arg-type]
        return await stream.receive_some(max_bytes)
    assert isinstance(stream, trio.SSLStream)
    with stream._outer_recv_conflict_detector:
        waited, fresh = False, True  # fresh: octets came in since the last decrypt
        while True:
            if fresh:
                data = _decrypt(stream, max_bytes)
                if stream._outgoing.pending:  # an answer the TLS object owes the peer
                    await _send_owed(stream)
                    waited = True
                if data is not None:
                    break
            lock = stream._inner_recv_lock
            try:  # the socket is read under trio's lock, as its own paths do
                lock.acquire_nowait()
            except trio.WouldBlock:  # a send that must read first (a renegotiation)
                count = stream._inner_recv_count
                async with lock:  # its read feeds the TLS object: decrypt that
                    pass
                waited, fresh = True, stream._inner_recv_count != count
                continue
            try:
                waited |= await _read_socket(stream)
            finally:
                lock.release()
            fresh = True
        if not waited:  # it was all there: still one turn a call, as trio's
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data


async def _read_socket(stream: trio.SSLStream) -> bool:
    """Read the socket into the TLS object's buffer, waiting for it when it is empty
    (under the stream's inner receive lock, which the caller holds); counted as
    trio's ``_retry`` counts its reads, so a send waiting for the lock reads nothing
    more. Returns whether it waited.

    Raises:
        trio.BrokenResourceError: a reset, or the socket closed under us.
    """
    fd = stream.transport_stream.socket.fileno()  # type: ignore[attr-defined]
    waited = False
    while True:
        try:
            raw = os.read(fd, SOCKET_READ)
            break
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            waited = True
        except OSError as exc:  # reset, or closed under us
            mark_broken(stream)  # and trio's words (the agency logs them)
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
    if raw:
        stream._incoming.write(raw)
    else:
        stream._incoming.write_eof()  # the next decrypt says how it ended
    stream._inner_recv_count += 1
    return waited


def _decrypt(stream: trio.SSLStream, max_bytes: int) -> bytes | None:
    """Every record buffered now, up to ``max_bytes``; None: none yet (read the socket).

    Raises:
        trio.BrokenResourceError: a TLS error (the stream is then broken).
    """
    ssl_object, incoming = stream._ssl_object, stream._incoming
    # Chunks (one a TLS record, at most 16 KiB) joined once at the end: a
    # bytes += would copy all read so far for each record (a 256 KiB read
    # of sixteen records copied ~2 MiB).
    chunks: list[bytes] = []
    left = max_bytes
    while left > 0:
        try:
            chunk = ssl_object.read(left)
        except ssl.SSLWantReadError:
            break
        except (ssl.SSLError, ssl.CertificateError) as exc:
            if chunks:  # what came before the error first; the error on the next call
                break
            mark_broken(stream)
            raise trio.BrokenResourceError from exc
        if not chunk:  # the peer's close_notify
            return b"".join(chunks)
        chunks.append(chunk)
        left -= len(chunk)
        if not incoming.pending and not ssl_object.pending():
            break  # all taken: another read would only raise SSLWantReadError
    if not chunks:
        return None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_owed(stream: trio.SSLStream) -> None:
    """Send what the TLS object wrote while reading, as trio's ``_retry`` does."""
    to_send = stream._outgoing.read()
    async with stream._inner_send_lock:
        try:
            if stream._delayed_outgoing is not None:
                to_send = stream._delayed_outgoing + to_send
                stream._delayed_outgoing = None
            await stream.transport_stream.send_all(to_send)
        except BaseException:
            mark_broken(stream)
            raise
