"""The zsec exception tree: one root, leaves that also subclass the builtin.

Every error zsec raises on purpose is defined here::

    ZsecError
    ├── ZsecTypeError (TypeError)        an argument of the wrong type
    ├── ZsecValueError (ValueError)      an argument with a bad value
    │   ├── KeyFormatError               not 32 raw bytes or 40 Z85 characters
    │   ├── ZplError                     text that is not ZPL (RFC 4)
    │   ├── MetadataError                certificate metadata a file cannot hold
    │   ├── CertificateError             a file that is not a valid certificate
    │   ├── PasswordError                a username or password a file cannot hold
    │   ├── AddressError                 an allow/deny rule that is not an IP or CIDR
    │   ├── ZapError                     a malformed ZAP request (carries the status)
    │   ├── LimitError                   a failure-limit setting out of range
    │   └── SocketConfigError            a socket option zsec refuses to set
    ├── FileAccessError (OSError)        a file that cannot be read, written or found
    ├── AuthError (RuntimeError)         an authenticator that cannot start or is stopped
    ├── EtcdError (OSError)              etcd failed a request or cannot be used
    │   ├── EtcdUnavailable (ConnectionError)      no etcd endpoint answered in time
    │   └── EtcdPermissionError (PermissionError)  etcd refused the user, password or role
    └── HandshakeTimeout (TimeoutError)  no handshake outcome before the deadline

No message contains a password or a secret key.
"""

from __future__ import annotations


class ZsecError(Exception):
    """Root of every error zsec raises on purpose.

    Messages name what was expected and never contain a password or a
    secret key.
    """


class ZsecTypeError(ZsecError, TypeError):
    """An argument has the wrong type."""


class ZsecValueError(ZsecError, ValueError):
    """An argument has the right type but a value out of range."""


class KeyFormatError(ZsecValueError):
    """A CURVE key is not 32 raw bytes or 40 valid Z85 characters."""


class ZplError(ZsecValueError):
    """Text is not valid ZPL (ZMQ RFC 4); ``line`` is 1-based, 0 when not tied to a line."""

    def __init__(self, message: str, line: int = 0) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class MetadataError(ZsecValueError):
    """A certificate metadata name or value cannot be stored faithfully."""


class CertificateError(ZsecValueError):
    """A certificate file exists but does not hold a valid certificate."""


class PasswordError(ZsecValueError):
    """A username or password cannot be stored in a password file."""


class AddressError(ZsecValueError):
    """An allow/deny rule is not an IP address or CIDR network."""


class ZapError(ZsecValueError):
    """A ZAP request is malformed; ``status`` is the code to answer with (400)."""

    def __init__(self, message: str, status: bytes = b"400") -> None:
        super().__init__(message)
        self.status = status


class LimitError(ZsecValueError):
    """A failure-limit setting is out of range."""


class SocketConfigError(ZsecValueError):
    """A socket option value is not acceptable (for example an empty ZAP domain)."""


class FileAccessError(ZsecError, OSError):
    """A file or directory could not be read, written or found.

    ``errno`` and ``filename`` are those of the underlying OS error when there
    was one.
    """

    def __init__(self, message: str, *, errno: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno = errno
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0])


class AuthError(ZsecError, RuntimeError):
    """The authenticator cannot start, or is used after ``stop()``."""


class EtcdError(ZsecError, OSError):
    """etcd failed a request, or the etcd client (``pip install 'zsec[etcd]'``) is missing."""

    def __str__(self) -> str:
        return str(self.args[0])


class EtcdUnavailable(EtcdError, ConnectionError):
    """No etcd endpoint answered within the timeout."""


class EtcdPermissionError(EtcdError, PermissionError):
    """etcd refused the request: wrong user or password, or a role without the permission."""


class HandshakeTimeout(ZsecError, TimeoutError):
    """No handshake outcome arrived before the deadline."""
