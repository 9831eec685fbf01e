"""The zsec exception tree: one root, leaves that also subclass the builtin."""

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


class KeyFormatError(ZsecError, ValueError):
    """A CURVE key is not 32 raw bytes or 40 valid Z85 characters."""


class ZplError(ZsecError, ValueError):
    """Text is not valid ZPL (ZMQ RFC 4); ``line`` is 1-based, 0 when not tied to a line."""

    def __init__(self, message: str, line: int = 0) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class MetadataError(ZsecError, ValueError):
    """A certificate metadata name or value cannot be stored faithfully."""


class CertificateError(ZsecError, ValueError):
    """A certificate file exists but does not hold a valid certificate."""


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
