"""zsec: ZeroMQ security for Python, safe by default.

CZMQ's security toolkit (zauth, zcert, zcertstore, makecert) rebuilt over
pyzmq: ``Cert`` holds a CURVE keypair and metadata, saved as CZMQ-compatible
files.
"""

from ._cert import Cert
from ._errors import (
    CertificateError,
    FileAccessError,
    KeyFormatError,
    MetadataError,
    ZplError,
    ZsecError,
    ZsecTypeError,
)
from ._store import CertStore, StoreChange

__version__ = "0.1.0"

__all__ = [
    "Cert",
    "CertStore",
    "CertificateError",
    "FileAccessError",
    "KeyFormatError",
    "MetadataError",
    "StoreChange",
    "ZplError",
    "ZsecError",
    "ZsecTypeError",
    "__version__",
]
