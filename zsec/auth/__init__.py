"""pyzmq's ``zmq.auth`` API, answered by zsec: change the import, keep the program.

``zsec.auth.thread.ThreadAuthenticator``, ``zsec.auth.asyncio.AsyncioAuthenticator``
and the certificate helpers take pyzmq's arguments and return pyzmq's shapes;
each authenticator is a thin layer over ``zsec.Auth``, so the decisions are
zsec's. The README's "Coming from pyzmq" section lists the differences.
"""

from .._zap import CURVE_ALLOW_ANY
from .asyncio import AsyncioAuthenticator
from .base import Authenticator
from .certs import create_certificates, load_certificate, load_certificates
from .thread import ThreadAuthenticator

__all__ = [
    "CURVE_ALLOW_ANY",
    "AsyncioAuthenticator",
    "Authenticator",
    "ThreadAuthenticator",
    "create_certificates",
    "load_certificate",
    "load_certificates",
]
