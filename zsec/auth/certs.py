"""pyzmq's certificate helpers (``zmq.auth.certs``), reading and writing with zsec's code.

Same names, arguments and return shapes as pyzmq. What differs: the secret
file is written 0600 and atomically, metadata names and values are checked
(``MetadataError`` for what a file cannot hold), and a file is parsed as
ZPL with its keys checked, so a broken file raises instead of yielding junk.
"""

from __future__ import annotations

import os
from typing import Any

from .._cert import MAX_CERT_BYTES, Cert
from .._errors import FileAccessError, ZsecTypeError
from .._files import fspath, read_capped


def create_certificates(
    key_dir: str | os.PathLike[str], name: str, metadata: dict[str, str] | None = None
) -> tuple[str, str]:
    """Make a fresh keypair in ``key_dir``: ``(public_file, secret_file)`` paths.

    The files are ``<name>.key`` (public) and ``<name>.key_secret`` (both
    keys, mode 0600), in CZMQ's format; ``metadata`` goes into both.
    """
    base = os.path.join(fspath(key_dir, "key directory"), name)
    cert = Cert()
    for key, value in (metadata or {}).items():
        cert.set_meta(_text(key), _text(value))
    public_file = base + ".key"
    cert.save(public_file)
    return public_file, public_file + "_secret"


def load_certificate(filename: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    """Read ``(public_key, secret_key)`` from one certificate file, each as 40 Z85 bytes.

    The secret key is None for a public certificate. Reads exactly this file
    (``zsec.Cert.load`` would prefer ``<file>_secret``). Raises
    ``FileAccessError`` (an ``OSError``) when it cannot be read and
    ``CertificateError`` (a ``ValueError``) when it is not a certificate.
    """
    path = fspath(filename, "certificate file")
    cert = Cert.from_bytes(read_capped(path, MAX_CERT_BYTES, "certificate"), path)
    secret = cert.secret_txt
    return cert.public_txt.encode("ascii"), None if secret is None else secret.encode("ascii")


def load_certificates(directory: str | os.PathLike[str] = ".") -> dict[bytes, bool]:
    """Public keys (40 Z85 bytes) of the ``*.key`` files directly in ``directory``, each -> True.

    A snapshot, as in pyzmq. ``configure_curve`` with a directory follows it
    live instead (``zsec.CertStore``).
    """
    path = fspath(directory, "certificate directory")
    if not os.path.isdir(path):
        raise FileAccessError(f"certificate directory {path} is not a directory", filename=path)
    keys: dict[bytes, bool] = {}
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.name.endswith(".key") and entry.is_file():
            public, _ = load_certificate(entry.path)
            keys[public] = True
    return keys


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if not isinstance(value, str):
        raise ZsecTypeError(f"metadata must be str or bytes, not {type(value).__name__}")
    return value


__all__ = ["create_certificates", "load_certificate", "load_certificates"]
