"""Socket monitoring: one libzmq monitor per socket, shared; and HandshakeMonitor on top of it.

libzmq allows one monitor per socket: a second ``zmq_socket_monitor`` call
silently replaces the first, so two features that each monitored a socket
would steal each other's events. Every zsec feature that watches a socket
(``HandshakeMonitor``, the live-revocation guard) therefore subscribes here:
the first subscriber starts the socket's monitor, one thread reads every
monitor of the process and hands each event to every subscriber of its
socket, and the last one to leave stops it.

A refused client is otherwise invisible in ZeroMQ: messages simply never
arrive. libzmq reports the outcome as socket monitor events (docs/protocol.md, section 5);
``HandshakeMonitor`` reads them and says what they mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import queue
import struct
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import zmq

from ._errors import HandshakeTimeout, ZsecTypeError

log = logging.getLogger("zsec.monitor")

_names = itertools.count()

#: A subscriber: called as ``listener(event, value)`` from the monitor thread.
#: It must be quick and must not raise (an exception is logged and ignored).
Listener = Callable[[int, int], None]

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
_STOP_SECONDS = 5.0


class _Watched:
    """One monitored socket: its monitor's reading end and its subscribers."""

    __slots__ = ("listeners", "pair", "socket")

    def __init__(self, socket: zmq.Socket[Any], pair: zmq.Socket[bytes]) -> None:
        self.socket = socket
        self.pair = pair
        # Replaced as a whole (copy on write) so the thread iterates without a lock.
        self.listeners: tuple[Listener, ...] = ()


class _Dispatcher:
    """The one thread that reads every socket monitor of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, _Watched] = {}  # id(socket) -> its monitor
        self._commands: queue.SimpleQueue[tuple[str, _Watched, threading.Event]] = (
            queue.SimpleQueue()
        )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="zsec-monitor", daemon=True)
        self._thread.start()

    def subscribe(self, socket: zmq.Socket[Any], listener: Listener) -> Callable[[], None]:
        """Deliver every monitor event of ``socket`` to ``listener``; returns the unsubscriber.

        Call from the thread that uses the socket, before it binds or
        connects if early events matter.
        """
        with self._lock:
            watched = self._watched.get(id(socket))
            if watched is None or watched.socket is not socket:
                address = f"inproc://zsec-monitor-{os.getpid()}-{next(_names)}"
                # The socket's own monitor() is synchronous even on a zmq.asyncio
                # socket; the reading end is a plain socket on a shadow of the
                # same libzmq context, read only by the monitor thread.
                socket.monitor(address, zmq.EVENT_ALL)
                reader: zmq.Socket[bytes] = zmq.Context.shadow(socket.context.underlying).socket(
                    zmq.PAIR
                )
                reader.linger = 0
                reader.rcvhwm = 0  # never drop events because the reader is behind
                reader.connect(address)
                watched = _Watched(socket, reader)
                self._watched[id(socket)] = watched
                watched.listeners = (listener,)
                self._command("add", watched, wait=False)
            else:
                watched.listeners = (*watched.listeners, listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener not in watched.listeners:
                    return
                watched.listeners = tuple(x for x in watched.listeners if x is not listener)
                if watched.listeners or self._watched.get(id(socket)) is not watched:
                    return
                del self._watched[id(socket)]
                if not socket.closed:
                    with contextlib.suppress(zmq.ZMQError):
                        socket.disable_monitor()
            self._command("remove", watched, wait=True)

        return unsubscribe

    def _command(self, what: str, watched: _Watched, *, wait: bool) -> None:
        done = threading.Event()
        self._commands.put((what, watched, done))
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")
        if wait and threading.current_thread() is not self._thread:
            # Synchronous, so that a context can be terminated right after
            # the last subscriber leaves (an open reader would block it).
            done.wait(_STOP_SECONDS)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        readers: dict[zmq.Socket[bytes], _Watched] = {}
        while True:
            try:
                ready = dict(poller.poll())
            except zmq.ZMQError:
                # A context is being terminated: close the readers it owns so
                # that the termination can finish.
                for reader, watched in list(readers.items()):
                    if _terminated(reader):
                        self._drop(poller, readers, watched)
                continue
            except Exception:  # this thread must not die
                with contextlib.suppress(Exception):
                    log.exception("socket monitor thread: unexpected error")
                continue
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                while True:
                    try:
                        what, watched, done = self._commands.get_nowait()
                    except queue.Empty:
                        break
                    if what == "add":
                        readers[watched.pair] = watched
                        poller.register(watched.pair, zmq.POLLIN)
                    else:
                        self._drop(poller, readers, watched)
                    done.set()
            for reader, watched in list(readers.items()):
                if reader in ready:
                    self._read(poller, readers, watched)

    def _read(
        self, poller: zmq.Poller, readers: dict[zmq.Socket[bytes], _Watched], watched: _Watched
    ) -> None:
        while True:
            try:
                frames = watched.pair.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                self._drop(poller, readers, watched)
                return
            if len(frames) != 2 or len(frames[0]) != 6:
                continue
            event, value = struct.unpack("=hi", frames[0])
            for listener in watched.listeners:
                try:
                    listener(event, value)
                except Exception:  # one bad listener must not starve others
                    with contextlib.suppress(Exception):
                        log.exception("socket monitor listener failed")
            if event == zmq.EVENT_MONITOR_STOPPED:
                # The socket closed or its monitor was replaced: nothing more comes.
                self._drop(poller, readers, watched)
                with self._lock:
                    if self._watched.get(id(watched.socket)) is watched:
                        del self._watched[id(watched.socket)]
                return

    @staticmethod
    def _drop(
        poller: zmq.Poller, readers: dict[zmq.Socket[bytes], _Watched], watched: _Watched
    ) -> None:
        if readers.pop(watched.pair, None) is not None:
            poller.unregister(watched.pair)
        if not watched.pair.closed:
            watched.pair.close(linger=0)


def _terminated(reader: zmq.Socket[bytes]) -> bool:
    try:
        reader.getsockopt(zmq.EVENTS)
    except zmq.ZMQError:
        return True
    return False


_dispatcher: _Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def subscribe(socket: Any, listener: Listener) -> Callable[[], None]:
    """Hear every monitor event of ``socket`` (sync or ``zmq.asyncio``); returns the unsubscriber.

    ``listener(event, value)`` runs in zsec's monitor thread. Subscribers of
    one socket share its single libzmq monitor; do not call
    ``socket.monitor()`` or ``get_monitor_socket()`` on it yourself, since
    that replaces the shared monitor.
    """
    global _dispatcher
    if not isinstance(socket, zmq.Socket):
        raise ZsecTypeError(f"expected a zmq.Socket, not {type(socket).__name__}")
    with _dispatcher_lock:
        if _dispatcher is None or not _dispatcher._thread.is_alive():
            _dispatcher = _Dispatcher()
        dispatcher = _dispatcher
    return dispatcher.subscribe(socket, listener)


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
    failure) or raises ``HandshakeTimeout``. It blocks the calling thread,
    also for a ``zmq.asyncio`` socket; in a coroutine use
    ``await wait_async(timeout)``. Use as a context manager, or call
    ``close()``. It shares the socket's one libzmq monitor with the other
    zsec features that watch the socket (the live-revocation guard).
    """

    def __init__(self, socket: Any) -> None:
        if not isinstance(socket, zmq.Socket):
            raise ZsecTypeError(f"expected a zmq.Socket, not {type(socket).__name__}")
        self._outcomes: queue.SimpleQueue[Handshake] = queue.SimpleQueue()
        # Every event is monitored, and filtered here: with only the handshake
        # events selected, libzmq 4.3.5 was seen to stall a refused connection.
        self._unsubscribe: Callable[[], None] | None = subscribe(socket, self._heard)

    def _heard(self, event: int, value: int) -> None:
        if event & _OUTCOMES:
            self._outcomes.put(_describe(event, value))

    def wait(self, timeout: float = 5.0) -> Handshake:
        """Return the next handshake outcome, waiting at most ``timeout`` seconds."""
        try:
            return self._outcomes.get(timeout=max(timeout, 0))
        except queue.Empty:
            raise HandshakeTimeout(f"no handshake outcome within {timeout:g}s") from None

    async def wait_async(self, timeout: float = 5.0) -> Handshake:
        """Like ``wait``, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.001
        while True:
            try:
                return self._outcomes.get_nowait()
            except queue.Empty:
                pass
            if loop.time() >= deadline:
                raise HandshakeTimeout(f"no handshake outcome within {timeout:g}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    def close(self) -> None:
        """Stop monitoring; idempotent."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def __enter__(self) -> HandshakeMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
