"""Socket test helpers: loopback servers and handshake verdicts from monitor events."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import zmq

import zsec


@contextmanager
def socket(ctx: zmq.Context[Any], kind: int, timeout_ms: int = 5000) -> Iterator[zmq.Socket[Any]]:
    sock = ctx.socket(kind)
    sock.linger = 0
    sock.rcvtimeo = timeout_ms
    sock.sndtimeo = timeout_ms
    try:
        yield sock
    finally:
        sock.close(linger=0)


def bind_loopback(sock: zmq.Socket[Any]) -> str:
    sock.bind("tcp://127.0.0.1:*")
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def attempt(
    ctx: zmq.Context[Any],
    endpoint: str,
    configure: Callable[[zmq.Socket[Any]], None],
    server: zmq.Socket[Any] | None = None,
    payload: bytes = b"Hello",
) -> tuple[zsec.Handshake, zmq.Frame | None]:
    """Connect a PUSH client configured by ``configure``; return its handshake and what arrived.

    On success the client sends ``payload`` and, when ``server`` (a PULL) is
    given, the frame the server received (with its properties) is returned.
    """
    with socket(ctx, zmq.PUSH) as client:
        configure(client)
        with zsec.HandshakeMonitor(client) as monitor:
            client.connect(endpoint)
            verdict = monitor.wait(10)
        frame = None
        if verdict.ok and server is not None:
            client.send(payload)
            frame = server.recv(copy=False)
        return verdict, frame


def serve(
    ctx: zmq.Context[Any], setup: Callable[[zmq.Socket[Any]], None]
) -> tuple[zmq.Socket[Any], str]:
    """A PULL server configured by ``setup`` on a loopback port: (socket, endpoint).

    Keep the socket referenced for as long as the server must live.
    """
    server = ctx.socket(zmq.PULL)
    server.linger = 0
    server.rcvtimeo = 5000
    setup(server)
    return server, bind_loopback(server)


def login(ctx: zmq.Context[Any], endpoint: str, user: str, password: str) -> zsec.Handshake:
    """The handshake outcome of a PLAIN client with these credentials."""
    return attempt(ctx, endpoint, lambda s: zsec.plain_client(s, user, password))[0]
