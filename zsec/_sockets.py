"""Socket helpers that make secured servers fail closed.

libzmq only insists on an authenticator when a server socket has a ZAP
domain and ZAP_ENFORCE_DOMAIN set (docs/protocol.md, section 4): without them a CURVE
server admits every client that knows its key whenever no authenticator is
bound. Every server helper here sets both. Call them before bind/connect.
"""

from __future__ import annotations

from typing import Any

import zmq

from ._cert import Cert
from ._errors import SocketConfigError, ZsecTypeError
from ._keys import coerce_key
from ._zap import MAX_FIELD, check_domain

# Not exported by every pyzmq build (it is a DRAFT option), but libzmq 4.3
# accepts it in stable builds too (docs/protocol.md, section 4).
ZAP_ENFORCE_DOMAIN = getattr(zmq, "ZAP_ENFORCE_DOMAIN", 93)


def _check_socket(socket: Any) -> zmq.Socket[Any]:
    if not isinstance(socket, zmq.Socket):
        raise ZsecTypeError(f"expected a zmq.Socket, not {type(socket).__name__}")
    return socket


def _enforce_domain(socket: zmq.Socket[Any], domain: str) -> None:
    raw = check_domain(domain, server=True).encode("utf-8")
    socket.setsockopt(zmq.ZAP_DOMAIN, raw)
    socket.setsockopt(ZAP_ENFORCE_DOMAIN, 1)


def curve_server(socket: Any, cert: Cert, domain: str = "global") -> None:
    """Make ``socket`` a CURVE server with ``cert``'s keys, authenticated in ``domain``.

    Fails closed: with no authenticator bound, clients are refused.
    """
    sock = _check_socket(socket)
    if not isinstance(cert, Cert):
        raise ZsecTypeError(f"cert must be a zsec.Cert, not {type(cert).__name__}")
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
    if not isinstance(cert, Cert):
        raise ZsecTypeError(f"cert must be a zsec.Cert, not {type(cert).__name__}")
    key = server_key.public_key if isinstance(server_key, Cert) else server_key
    raw = coerce_key(key, "server key")
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
