"""Socket test helpers: loopback servers, monitor-based handshake verdicts, no sleeps."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)
# A NULL client whose server drops it during the handshake sees only this.
CLIENT_EVENTS = HANDSHAKE_EVENTS | zmq.EVENT_DISCONNECTED


@dataclass
class Verdict:
    """The first handshake outcome a monitor saw."""

    event: int
    value: int

    @property
    def ok(self) -> bool:
        return self.event == zmq.EVENT_HANDSHAKE_SUCCEEDED

    @property
    def refused_by_zap(self) -> bool:
        return self.event == zmq.EVENT_HANDSHAKE_FAILED_AUTH

    def __repr__(self) -> str:
        return f"Verdict({zmq.Event(self.event).name}, value={self.value})"


def first_handshake(monitor: zmq.Socket[Any], timeout: float = 10.0) -> Verdict:
    """Wait for the first handshake event on a monitor socket (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("no handshake event before the deadline")
        if not monitor.poll(int(remaining * 1000)):
            continue
        event = recv_monitor_message(monitor)
        if event["event"] & CLIENT_EVENTS:
            return Verdict(int(event["event"]), int(event["value"]))


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


def _monitor_address() -> str:
    # pyzmq names monitor endpoints after the socket's FD, and FDs are
    # reused, so two monitors could end up sharing one endpoint.
    return f"inproc://zsec-test-monitor-{next(_counter)}"


_counter = itertools.count()


@contextmanager
def watching(sock: zmq.Socket[Any]) -> Iterator[zmq.Socket[Any]]:
    """A monitor on ``sock`` for handshake events, closed afterwards."""
    # All events: with only the handshake ones selected, libzmq 4.3.5 was seen to
    # stall a refused connection instead of closing it.
    monitor = sock.get_monitor_socket(zmq.EVENT_ALL, _monitor_address())
    try:
        yield monitor
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def attempt(
    ctx: zmq.Context[Any],
    endpoint: str,
    configure: Callable[[zmq.Socket[Any]], None],
    server: zmq.Socket[Any] | None = None,
    payload: bytes = b"Hello",
) -> tuple[Verdict, zmq.Frame | None]:
    """Connect a PUSH client configured by ``configure``; return its verdict and what arrived.

    On success the client sends ``payload`` and, when ``server`` (a PULL) is
    given, the frame the server received (with its properties) is returned.
    """
    with socket(ctx, zmq.PUSH) as client:
        configure(client)
        monitor = client.get_monitor_socket(CLIENT_EVENTS, _monitor_address())
        try:
            client.connect(endpoint)
            verdict = first_handshake(monitor)
            frame = None
            if verdict.ok and server is not None:
                client.send(payload)
                frame = server.recv(copy=False)
            return verdict, frame
        finally:
            client.disable_monitor()
            monitor.close(linger=0)
