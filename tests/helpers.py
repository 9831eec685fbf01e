"""Shared test helpers: fixture paths, polling, fast hashes, CURVE test keys, loopback sockets."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq

import zsec
from zsec._zap import Policy, ZapReply, ZapRequest

ROOT = Path(__file__).resolve().parent.parent
# The golden files made by the real CZMQ live in the shared folder beside the
# project; tests/fixtures/czmq is a copy of them for machines without it.
_SHARED = ROOT.parent / "shared" / "fixtures" / "czmq"
CZMQ_FIXTURES = _SHARED if (_SHARED / "manifest.json").is_file() else ROOT / "tests/fixtures/czmq"

# The CURVE test keys of libzmq's doc/zmq_curve.adoc.
CLIENT_PUBLIC = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
CLIENT_SECRET = "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"
CLIENT_PUBLIC_HEX = "BB88471D65E2659B30C55A5321CEBB5AAB2B70A398645C26DCA2B2FCB43FC518"
SERVER_PUBLIC = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
SERVER_SECRET = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.005, what: str = ""
) -> T:
    """Poll ``condition`` until it returns a truthy value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def fast_hash(password: bytes) -> bytes:
    """An argon2id entry with the smallest limits: fast tests, same format."""
    from nacl import pwhash

    return bytes(
        pwhash.argon2id.str(
            password, opslimit=pwhash.argon2id.OPSLIMIT_MIN, memlimit=pwhash.argon2id.MEMLIMIT_MIN
        )
    )


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


def req(
    mechanism: bytes = b"NULL",
    *creds: bytes,
    address: bytes = b"127.0.0.1",
    domain: bytes = b"global",
    request_id: bytes = b"7",
) -> list[bytes]:
    """ZAP request frames (after the envelope) for a table-driven decision test."""
    return [b"1.0", request_id, domain, address, b"", mechanism, *creds]


def decide(policy: Policy, frames: list[bytes]) -> ZapReply:
    """The reply ``policy`` gives to request ``frames``."""
    return policy.decide(ZapRequest.from_frames(frames))


def zap_ask(ctx: zmq.Context[Any], *requests: list[bytes]) -> list[list[bytes]]:
    """Send ZAP requests (frames after the envelope) straight to the context's authenticator.

    Returns the reply frames after the envelope, in order: the real pump
    without a handshake, for tests of what the authenticator records.
    """
    with socket(ctx, zmq.DEALER) as dealer:
        dealer.connect("inproc://zeromq.zap.01")
        for frames in requests:
            dealer.send_multipart([b"", *frames])
        return [dealer.recv_multipart()[1:] for _ in requests]


class TcpCutter:
    """A loopback TCP forwarder that a test can cut: a network outage without stopping the server.

    ``cut()`` closes every forwarded connection and refuses new ones until
    ``restore()``; the server behind it keeps running and can be changed
    meanwhile. ``endpoint`` is ``127.0.0.1:port`` of the forwarder.
    """

    def __init__(self, target_port: int) -> None:
        import socket as _socket
        import threading

        self._target = target_port
        self._listener = _socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: list[Any] = []
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket as _socket
        import threading

        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut or self._closed:
                    conn.close()
                    continue
                try:
                    upstream = _socket.create_connection(("127.0.0.1", self._target), timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    conn.close()
                    continue
                self._open += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: Any, dst: Any) -> None:
        import contextlib

        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(2)

    def cut(self) -> None:
        import contextlib

        with self._lock:
            self._cut = True
            conns, self._open = self._open, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(2)
            conn.close()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


@contextmanager
def watch_opens(path: Path) -> Iterator[Callable[[], int]]:
    """Count the opens of ``path`` (inotify IN_OPEN): yields a function that returns them so far.

    Linux only. Events are queued by the kernel during the open itself, so
    the count is exact when the call that opened has returned.
    """
    import ctypes
    import os
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        pytest.skip("inotify is not available")
    try:
        if libc.inotify_add_watch(fd, os.fsencode(path), 0x20) < 0:  # IN_OPEN
            raise OSError(ctypes.get_errno(), "inotify_add_watch failed")
        seen = 0

        def count() -> int:
            nonlocal seen
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return seen
            offset = 0
            while offset < len(data):
                _, mask, _, size = struct.unpack_from("iIII", data, offset)
                seen += bool(mask & 0x20)
                offset += 16 + size
            return seen

        yield count
    finally:
        os.close(fd)


def slot(*shape: Any) -> list[Any]:
    """An event hub slot as ``post()`` makes it: the decision's shape, then room for the rest.

    ``shape`` is (mechanism, domain, address, (first credential,) or (),
    status code, status text); the builder fills in certificate, fields,
    audit JSON and metric labels (see ``zsec._events._Raw``).
    """
    return [tuple(shape), None, None, None, None]
