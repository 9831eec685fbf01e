"""HandshakeMonitor: learn whether a connection's security handshake succeeded, and why not.

A refused client is otherwise invisible in ZeroMQ: messages simply never
arrive. libzmq reports the outcome as socket monitor events (docs/protocol.md, section 5);
this reads them and says what they mean.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import time
from typing import Any, NamedTuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from ._errors import HandshakeTimeout, ZsecTypeError

_names = itertools.count()

_NO_DETAIL = {
    errno.EFAULT: (
        "no ZAP authenticator is running on this server's zmq context, so every client is "
        "refused; start zsec.Auth(ctx) on the server socket's context"
    ),
    errno.EPIPE: (
        "the peer closed the connection during the handshake; for a CURVE client the likely "
        "causes are a wrong server key, or no authenticator running on the server's context"
    ),
    errno.EAGAIN: "the handshake timed out",
}
_ZAP_STATUS = {
    300: "temporarily refused by the authenticator (ZAP 300)",
    400: "refused by the authenticator (ZAP 400)",
    500: "the authenticator failed (ZAP 500)",
}


class Handshake(NamedTuple):
    """The outcome of one handshake as a socket monitor reported it.

    ``event`` is the libzmq monitor event, ``value`` its value (a ZAP status
    code, an errno or a protocol error code), ``reason`` a sentence.
    """

    ok: bool
    event: zmq.Event
    value: int
    reason: str

    @property
    def zap_status(self) -> int | None:
        """300, 400 or 500 when the authenticator refused, else None."""
        return self.value if self.event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else None

    def __str__(self) -> str:
        return self.reason


def _describe(event: int, value: int) -> Handshake:
    name = zmq.Event(event)
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return Handshake(True, name, value, "handshake succeeded")
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        reason = _ZAP_STATUS.get(value, f"refused by the authenticator (ZAP {value})")
    elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        reason = _NO_DETAIL.get(value, f"handshake failed (errno {value})")
    elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        reason = f"protocol error 0x{value:08x} (for CURVE often a wrong server key)"
    else:
        reason = "disconnected before the handshake completed"
    return Handshake(False, name, value, reason)


_OUTCOMES = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_DISCONNECTED
)


class HandshakeMonitor:
    """Watch the handshakes of a socket; create it before the socket connects or binds.

    ``wait(timeout)`` returns the next ``Handshake`` outcome (success or the
    reason for failure; a disconnection before any outcome counts as a
    failure) or raises ``HandshakeTimeout``. Use as a context manager, or
    call ``close()``.
    """

    def __init__(self, socket: Any) -> None:
        if not isinstance(socket, zmq.Socket):
            raise ZsecTypeError(f"expected a zmq.Socket, not {type(socket).__name__}")
        self._socket = socket
        # Every event, filtered here: with only the handshake events selected,
        # libzmq 4.3.5 was seen to stall a refused connection instead of closing it.
        self._monitor = socket.get_monitor_socket(
            zmq.EVENT_ALL, f"inproc://zsec-handshake-monitor-{next(_names)}"
        )

    def wait(self, timeout: float = 5.0) -> Handshake:
        """Return the next handshake outcome, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._monitor.poll(max(1, int(remaining * 1000))):
                if time.monotonic() >= deadline:
                    raise HandshakeTimeout(f"no handshake outcome within {timeout:g}s")
                continue
            message = recv_monitor_message(self._monitor)
            event = int(message["event"])
            if event & _OUTCOMES:
                return _describe(event, int(message["value"]))

    def close(self) -> None:
        """Stop monitoring; idempotent."""
        if not self._monitor.closed:
            # The socket may be closed already; the monitor goes either way.
            with contextlib.suppress(zmq.ZMQError):
                self._socket.disable_monitor()
            self._monitor.close(linger=0)

    def __enter__(self) -> HandshakeMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
