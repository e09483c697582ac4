"""The bare Python relay: the baseline the whole path is measured against."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import ssl
import struct
import threading
import time

from rig.capture import write_capture
from rig.processes import Rig


def _sink(conn, cert: str, key: str) -> None:
    """Count UDP datagrams and TLS octets (two threads); report on request."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    udp.bind(("127.0.0.1", 0))
    listener = socket.create_server(("127.0.0.1", 0))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    counts = {"udp": 0, "tls": 0}

    def udp_loop() -> None:
        buffer = bytearray(65536)
        while udp.recv_into(buffer):
            counts["udp"] += 1

    def tls_loop() -> None:
        raw, _ = listener.accept()
        with context.wrap_socket(raw, server_side=True) as tls:
            while chunk := tls.recv(1 << 18):
                counts["tls"] += len(chunk)

    for loop in (udp_loop, tls_loop):
        threading.Thread(target=loop, daemon=True).start()
    conn.send((udp.getsockname()[1], listener.getsockname()[1]))
    conn.recv()  # the relay is done
    time.sleep(0.5)
    conn.send(dict(counts))


def _relay(conn, capture: str, log_dir: str, udp_port: int, tls_port: int) -> None:
    """Append + fdatasync per 256, sendto, TLS send: for every frame; report frames/s."""
    with open(capture, "rb") as handle:
        data = handle.read()
    frames, pos = [], 24
    while pos + 16 <= len(data):
        size = struct.unpack_from("<I", data, pos + 8)[0]
        frames.append(data[pos + 16 : pos + 16 + size])
        pos += 16 + size
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect(("127.0.0.1", udp_port))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(socket.create_connection(("127.0.0.1", tls_port)))
    fd = os.open(os.path.join(log_dir, "relay.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    began = time.perf_counter()
    for index, payload in enumerate(frames, 1):
        os.write(fd, payload)
        if index % 256 == 0:
            os.fdatasync(fd)
        udp.send(payload)
        tls.sendall(payload)
    os.fdatasync(fd)
    elapsed = time.perf_counter() - began
    os.close(fd)
    tls.close()
    conn.send((len(frames), elapsed))


def relay_baseline(rig: Rig, frames: int) -> tuple[float, float]:
    """Frames/s of the bare relay, and the fraction the UDP sink lost."""
    capture = write_capture(rig.work / f"frames-{frames}.pcap", frames)
    spawn = mp.get_context("spawn")
    sink_conn, sink_child = spawn.Pipe()
    cert, key = rig.agency / "agency-cert.pem", rig.agency / "agency-key.pem"
    sink = spawn.Process(target=_sink, args=(sink_child, str(cert), str(key)), daemon=True)
    sink.start()
    udp_port, tls_port = sink_conn.recv()
    relay_conn, relay_child = spawn.Pipe()
    relay = spawn.Process(
        target=_relay, args=(relay_child, str(capture), str(rig.work), udp_port, tls_port),
        daemon=True,
    )  # fmt: skip
    relay.start()
    if not relay_conn.poll(120):
        relay.kill()
        raise SystemExit("e2e: the relay did not finish in 120 s")
    count, elapsed = relay_conn.recv()
    sink_conn.send(None)
    counts = sink_conn.recv() if sink_conn.poll(30) else {"udp": 0}
    relay.join(10)
    sink.kill()
    (rig.work / "relay.log").unlink(missing_ok=True)
    return count / elapsed, 1 - counts["udp"] / count
