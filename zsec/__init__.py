"""zsec: ZeroMQ security for Python, safe by default.

CZMQ's security toolkit rebuilt over pyzmq: ``Auth`` is the authenticator
(zauth), ``Cert`` a CURVE keypair with metadata (zcert), ``CertStore`` a live
directory of trusted certificates (zcertstore), and the socket helpers set
up servers that refuse clients when no authenticator is running.
"""

from ._auth import ZAP_ENDPOINT, Auth
from ._cert import Cert
from ._errors import (
    AddressError,
    AuthError,
    CertificateError,
    EtcdError,
    EtcdPermissionError,
    EtcdUnavailable,
    FileAccessError,
    HandshakeTimeout,
    KeyFormatError,
    LimitError,
    MetadataError,
    PasswordError,
    SocketConfigError,
    ZapError,
    ZplError,
    ZsecError,
    ZsecTypeError,
    ZsecValueError,
)
from ._etcd import EtcdBans, EtcdPasswords, EtcdSource
from ._events import AuditLog, Decision, TrustChange
from ._guard import REVOKED_REPLY, AsyncGuardedSocket, Cut, GuardedSocket
from ._index import StoreChange
from ._monitor import Handshake, HandshakeMonitor
from ._passwords import PasswordFile, PasswordTable
from ._sockets import (
    curve_client,
    curve_server,
    null_server,
    plain_client,
    plain_server,
)
from ._source import TrustFeed, TrustSource
from ._store import CertStore
from ._throttle import FailureLimiter
from ._zap import CURVE_ALLOW_ANY, Policy, ZapReply, ZapRequest

__version__ = "0.1.0"

__all__ = [
    "CURVE_ALLOW_ANY",
    "REVOKED_REPLY",
    "ZAP_ENDPOINT",
    "AddressError",
    "AsyncGuardedSocket",
    "AuditLog",
    "Auth",
    "AuthError",
    "Cert",
    "CertStore",
    "CertificateError",
    "Cut",
    "Decision",
    "EtcdBans",
    "EtcdError",
    "EtcdPasswords",
    "EtcdPermissionError",
    "EtcdSource",
    "EtcdUnavailable",
    "FailureLimiter",
    "FileAccessError",
    "GuardedSocket",
    "Handshake",
    "HandshakeMonitor",
    "HandshakeTimeout",
    "KeyFormatError",
    "LimitError",
    "MetadataError",
    "PasswordError",
    "PasswordFile",
    "PasswordTable",
    "Policy",
    "SocketConfigError",
    "StoreChange",
    "TrustChange",
    "TrustFeed",
    "TrustSource",
    "ZapError",
    "ZapReply",
    "ZapRequest",
    "ZplError",
    "ZsecError",
    "ZsecTypeError",
    "ZsecValueError",
    "__version__",
    "curve_client",
    "curve_server",
    "null_server",
    "plain_client",
    "plain_server",
]
