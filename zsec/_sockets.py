"""Socket helpers that make secured servers fail closed.

libzmq only insists on an authenticator when a server socket has a ZAP
domain and ZAP_ENFORCE_DOMAIN set (docs/protocol.md, section 4): without them a CURVE
server admits every client that knows its key whenever no authenticator is
bound. Every server helper here sets both. Call them before bind/connect.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from typing import Any

import zmq

from ._cert import Cert
from ._errors import CertificateError, SocketConfigError, ZsecTypeError
from ._keys import coerce_key
from ._zap import MAX_FIELD, check_domain

log = logging.getLogger("zsec.auth")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: How many zsec Auths are bound (or binding) per libzmq context (``Context.underlying``).
running_contexts: collections.Counter[int] = collections.Counter()

# Not exported by every pyzmq build (it is a DRAFT option), but libzmq 4.3
# accepts it in stable builds too (docs/protocol.md, section 4).
ZAP_ENFORCE_DOMAIN = getattr(zmq, "ZAP_ENFORCE_DOMAIN", 93)


def _check_cert(cert: object, role: str) -> Cert:
    """The certificate a CURVE ``role`` needs: a Cert holding its secret key."""
    if isinstance(cert, (str, os.PathLike)):
        raise ZsecTypeError(
            f"{role}: cert is {cert!r}, which looks like a file path; "
            f"pass zsec.Cert.load({str(os.fspath(cert))!r})"
        )
    if not isinstance(cert, Cert):
        raise ZsecTypeError(f"{role}: cert must be a zsec.Cert, not {type(cert).__name__}")
    if cert.secret_key is None:
        path = getattr(cert, "_path", None)
        if path is not None:
            raise CertificateError(
                f"{role} needs the certificate's secret key, but {path} was loaded without "
                f"one: {path}_secret is missing or unreadable (zsec.Cert.load reads it when "
                "it is there; zsec makecert writes both files)"
            )
        raise CertificateError(
            f"{role} needs a certificate with its secret key; this one holds only a public "
            "key (load the _secret file, or make a keypair with zsec.Cert())"
        )
    return cert


def _server_key(value: object) -> bytes:
    """The server's public key for a client: a Cert, 32 bytes or 40 Z85 characters."""
    if isinstance(value, Cert):
        return value.public_key
    if isinstance(value, os.PathLike) or (
        isinstance(value, str) and len(value) != 40 and _looks_like_path(value)
    ):
        raise ZsecTypeError(
            f"curve_client: server_key {str(os.fspath(value))!r} looks like a file path; "
            f"pass zsec.Cert.load({str(os.fspath(value))!r}) (or its public_key)"
        )
    return coerce_key(value, "server key")


def _looks_like_path(text: str) -> bool:
    return os.sep in text or text.endswith((".key", ".key_secret", ".txt", ".cert", ".crt"))


def _check_socket(socket: Any) -> zmq.Socket[Any]:
    if not isinstance(socket, zmq.Socket):
        raise ZsecTypeError(f"expected a zmq.Socket, not {type(socket).__name__}")
    return socket


def _enforce_domain(socket: zmq.Socket[Any], domain: str) -> None:
    raw = check_domain(domain, server=True).encode("utf-8")
    socket.setsockopt(zmq.ZAP_DOMAIN, raw)
    socket.setsockopt(ZAP_ENFORCE_DOMAIN, 1)
    _warn_without_authenticator(socket)


_warned: set[int] = set()
_probe_lock = threading.Lock()


def _warn_without_authenticator(socket: zmq.Socket[Any]) -> None:
    """Log once per context when no ZAP handler is bound: every client would be refused.

    libzmq says so only per connection, in a monitor event on the server.
    """
    address = socket.context.underlying
    if address in _warned or running_contexts[address] > 0:
        return
    with _probe_lock:
        if address in _warned:
            return
        # Another handler (pyzmq's authenticator, say) holds the endpoint
        # if this bind fails. zsec's Auth registers before binding, so it
        # cannot race with this probe.
        probe: zmq.Socket[bytes] = zmq.Context.shadow(address).socket(zmq.ROUTER)
        try:
            probe.bind(ZAP_ENDPOINT)
        except zmq.ZMQError:
            return
        else:
            with contextlib.suppress(zmq.ZMQError):
                probe.unbind(ZAP_ENDPOINT)
        finally:
            probe.close(linger=0)
        _warned.add(address)
    log.warning(
        "no ZAP authenticator is running on this server socket's zmq context: every "
        "client will be refused (zsec's server helpers fail closed) until one is; start "
        "zsec.Auth(ctx) on the same context as the server socket"
    )


def curve_server(socket: Any, cert: Cert, domain: str = "global") -> None:
    """Make ``socket`` a CURVE server with ``cert``'s keys, authenticated in ``domain``.

    Fails closed: with no authenticator bound, clients are refused.
    """
    sock = _check_socket(socket)
    cert = _check_cert(cert, "curve_server")
    cert.apply(sock)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    _enforce_domain(sock, domain)


def plain_server(socket: Any, domain: str = "global") -> None:
    """Make ``socket`` a PLAIN server authenticated in ``domain`` (fails closed).

    PLAIN sends passwords in clear text: use it on trusted networks only.
    """
    sock = _check_socket(socket)
    sock.setsockopt(zmq.PLAIN_SERVER, 1)
    _enforce_domain(sock, domain)


def null_server(socket: Any, domain: str = "global") -> None:
    """Make ``socket`` a NULL server whose clients the authenticator filters by address."""
    sock = _check_socket(socket)
    _enforce_domain(sock, domain)


def curve_client(socket: Any, cert: Cert, server_key: bytes | str | Cert) -> None:
    """Make ``socket`` a CURVE client with ``cert``'s keys, trusting only ``server_key``.

    ``server_key`` is 32 raw bytes or 40 Z85 characters (or a server ``Cert``).
    """
    sock = _check_socket(socket)
    cert = _check_cert(cert, "curve_client")
    raw = _server_key(server_key)
    cert.apply(sock)
    sock.setsockopt(zmq.CURVE_SERVERKEY, raw)


def plain_client(socket: Any, username: str | bytes, password: str | bytes) -> None:
    """Make ``socket`` a PLAIN client (each value at most 255 bytes)."""
    sock = _check_socket(socket)
    values = []
    for what, value in (("username", username), ("password", password)):
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, bytes):
            raise ZsecTypeError(f"{what} must be str or bytes")
        if len(value) > MAX_FIELD:
            raise SocketConfigError(f"a PLAIN {what} is at most 255 bytes")
        values.append(value)
    sock.setsockopt(zmq.PLAIN_USERNAME, values[0])
    sock.setsockopt(zmq.PLAIN_PASSWORD, values[1])
