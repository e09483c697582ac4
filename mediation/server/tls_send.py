"""Sending on a trio TLS stream without the two loop turns of ``SSLStream.send_all``.

``trio.SSLStream.send_all`` yields to the scheduler twice for every write,
even when the socket takes everything at once: its inner send lock's
``acquire`` is a checkpoint, and so is the transport's ``send``. At light
load the server writes a few times per tap batch (the tap's ack, the
agency's envelopes), each a short run of TLS records that the kernel takes
at once, so those turns are pure cost: each is a pass of the event loop
(docs/architecture.md, "The server at light load").

:func:`send_all` encrypts into the stream's own outgoing buffer and writes
the octets to the socket directly, holding the stream's send lock, when
nothing else is sending on it and the handshake is done; what the socket
does not take at once is sent by the transport's ``send_all`` (which
waits), still under the lock, so records never interleave with a send the
stream makes on its own (a TLS 1.3 key update, a session ticket). Anything
unusual (a stream still handshaking or being closed, a lock held, another
kind of stream, a trio without these internals) takes ``send_all``
itself. Errors are trio's: a broken connection raises
``trio.BrokenResourceError`` and leaves the stream broken.
"""

from __future__ import annotations

import os
import ssl

import trio

from mediation.tls_io import mark_broken, usable


def _direct(stream: trio.SSLStream) -> bool:
    """Whether ``stream`` can be written directly now (else: ``send_all``)."""
    return (
        usable(stream) and stream._delayed_outgoing is None and not stream._inner_send_lock.locked()
    )


async def send_all(stream: trio.abc.Stream, data: bytes | bytearray) -> None:
    """``stream.send_all(data)``, without a turn of the loop when the socket takes it all.

    Args:
        stream: the connection; a ``trio.SSLStream`` over a socket gets the
            direct path, anything else its own ``send_all``.
        data: the octets (nothing is sent for none).

    Raises:
        trio.BrokenResourceError: the connection is lost (the stream is
            then broken, as after ``send_all``).
        trio.ClosedResourceError: the stream was closed.
    """
    if not data:
        return
    if not _direct(stream):  # type: ignore[arg-type]
        await stream.send_all(data)
        return
    assert isinstance(stream, trio.SSLStream)
    with stream._outer_send_conflict_detector:
        try:
            stream._ssl_object.write(data)
        except ssl.SSLWantReadError:  # pragma: no cover - TLS 1.2 renegotiation only
            wrote = False
        except (ssl.SSLError, ssl.CertificateError) as exc:
            mark_broken(stream)
            raise trio.BrokenResourceError from exc
        else:
            wrote = True
        if wrote:
            await _send_outgoing(stream)
            return
    await stream.send_all(data)  # pragma: no cover - see above


async def _send_outgoing(stream: trio.SSLStream) -> None:
    """Write the stream's encrypted octets to its socket, under its send lock while it waits.

    The lock is free (checked by ``_direct``, nothing yielded since); it is
    taken only for a wait: until then no other task runs, so none could see it.
    """
    out = stream._outgoing.read()
    transport = stream.transport_stream
    assert isinstance(transport, trio.SocketStream)
    try:
        sent = os.write(transport.socket.fileno(), out)
    except BlockingIOError:
        sent = 0
    except OSError as exc:  # reset, broken pipe, closed
        mark_broken(stream)  # and trio's words (the worker logs them), as tls_io's reads
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
    if sent < len(out):  # the socket's buffer is full: wait as send_all does
        lock = stream._inner_send_lock
        lock.acquire_nowait()
        try:
            await transport.send_all(memoryview(out)[sent:])
        except BaseException:
            mark_broken(stream)
            raise
        finally:
            lock.release()
