"""Cert: a CURVE keypair plus metadata, saved as CZMQ-compatible ZPL files."""

from __future__ import annotations

import datetime
import hmac
import re
import sys
from typing import Any

from . import _zpl
from ._errors import (
    CertificateError,
    FileAccessError,
    KeyFormatError,
    MetadataError,
    ZplError,
    ZsecTypeError,
)
from ._files import (
    PUBLIC_MODE,
    SECRET_MODE,
    current_umask,
    fspath,
    mode_problem,
    read_capped,
    read_regular,
    write_atomic,
)
from ._keys import coerce_key, generate_keypair, public_from_secret, z85_decode, z85_encode

#: Largest certificate file zsec reads.
MAX_CERT_BYTES = _zpl.MAX_ZPL_BYTES

_ZERO_KEY = bytes(32)
_META_NAME = re.compile(r"[A-Za-z0-9$\-_@.&+/]{1,255}")
# Control characters other than TAB: they cannot be typed, do not survive C
# strings (NUL) or a line-based file (CR, LF), and only confuse log readers.
_BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# The layout that CZMQ, pyzmq (public files) and zsec write, matched in one go
# so that loading thousands of certificates is cheap. Anything this does not
# match exactly goes through the full ZPL reader, which gives the same result
# wherever both apply (a property test checks it).
# Forty of any character: the key decoder checks the alphabet anyway, and the
# regex engine runs a plain "any" much faster than a set of 85.
_Z85_40 = r".{40}"
# Possessive repeats (Python 3.11+) spare the engine its backtracking records.
# They match exactly what the greedy ones would here: every repeat below
# stops at a character the next part of the pattern cannot start with (a
# line ends at its newline; no comment or blank line starts "metadata" or
# "curve"; a metadata line starts with spaces, "curve" does not).
_P = "+" if sys.version_info >= (3, 11) else ""
# The common comment line (# in the first column) is tried first. No line
# can match two of the alternatives: where the repeats are greedy (before
# Python 3.11) each such line would double the work of a failing match, and
# a few dozen comment lines would hang the loading thread.
_SKIP_LINES = rf"(?:#[^\n]*{_P}\n|[ ]+{_P}#[^\n]*{_P}\n|[ \t]*{_P}\n)*{_P}"
_META_LINE = r"    ([A-Za-z0-9$\-_@.&+/]+) = \"([^\"\n]*)\"[ \t]*\n"
_META_LINES = rf"(?:    [A-Za-z0-9$\-_@.&+/]+{_P} = \"[^\"\n]*{_P}\"[ \t]*{_P}\n)*{_P}"
_CURVE_SECTION = (
    r"curve[ \t]*\n"
    + r"    public-key = \"("
    + _Z85_40
    + r")\"[ \t]*\n(?:    secret-key = \"("
    + _Z85_40
    + r")\"[ \t]*\n)?"
    + _SKIP_LINES
)
_FAST_CERT = re.compile(_SKIP_LINES + r"metadata[ \t]*\n(" + _META_LINES + ")" + _CURVE_SECTION)
_FAST_META = re.compile(_META_LINE)
# Past this size a file is not a common certificate (those are under 1 KiB):
# trying the layout first would only add its cost to the full reader's.
_FAST_MAX_BYTES = 8192

_PUBLIC_BANNER = (
    "   ZeroMQ CURVE Public Certificate",
    "   Exchange securely, or use a secure mechanism to verify the contents",
    "   of this file after exchange. Store public certificates in your home",
    "   directory, in the .curve subdirectory.",
)
_SECRET_BANNER = (
    "   ZeroMQ CURVE **Secret** Certificate",
    "   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.",
)


def check_meta_name(name: object) -> str:
    """Return ``name`` if it can be a metadata name, else raise ``MetadataError``."""
    if not isinstance(name, str):
        raise ZsecTypeError(f"metadata name must be str, not {type(name).__name__}")
    if not _META_NAME.fullmatch(name) or name[0] == "/" or name[-1] == "/":
        raise MetadataError(
            f"metadata name {name!r} must be 1-255 characters from A-Z a-z 0-9 $ - _ @ . & + /"
            " and not start or end with /"
        )
    if name.startswith(("public-key", "secret-key")):
        # pyzmq's load_certificate takes any line starting with these words
        # as a key, so such a name would make pyzmq read the wrong key.
        raise MetadataError(f"metadata name {name!r} is reserved: it starts like a key field")
    return name


def check_meta_value(value: object) -> str:
    """Return ``value`` if a certificate file can hold it exactly, else raise ``MetadataError``."""
    if not isinstance(value, str):
        raise ZsecTypeError(f"metadata value must be str, not {type(value).__name__}")
    if _BAD_VALUE_CHARS.search(value):
        raise MetadataError(
            "metadata value must be printable text (TAB is allowed, line breaks are not)"
        )
    try:
        _zpl.format_value(value)
    except ZplError as exc:
        raise MetadataError(f"metadata value cannot be stored: {exc}") from None
    return value


def fast_fields(data: bytes) -> tuple[str, str | None, str] | None:
    """Read the common certificate layout quickly, or return None to use the full reader.

    Returns (public key text, secret key text or None, metadata block); the
    key texts are 40 characters, not yet decoded nor checked against the
    Z85 alphabet (a key that does not decode sends the file to the full reader). The
    metadata block is the section's lines exactly as matched, each known to
    be ``    name = "value"``: ``meta_from_block`` turns it into a dict, and
    a certificate keeps it as it is until its metadata is first asked for,
    which makes loading a large store cheaper in time and memory.
    """
    if len(data) > _FAST_MAX_BYTES or b"\r" in data:
        return None
    # The full reader refuses a document of more than MAX_ZPL_LINES lines,
    # so this must too; a file that short cannot have that many.
    if len(data) > _zpl.MAX_ZPL_LINES and data.count(b"\n") >= _zpl.MAX_ZPL_LINES:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text[-1:] != "\n":
        text += "\n"
    match = _FAST_CERT.fullmatch(text)
    if match is None:
        return None
    block, public_txt, secret_txt = match.groups()
    return public_txt, secret_txt, block


def meta_from_block(block: str) -> dict[str, str]:
    """The metadata of a block ``fast_fields`` matched, the first of two equal names winning."""
    meta: dict[str, str] = {}
    for name, value in _FAST_META.findall(block):
        meta.setdefault(name, value)
    return meta


def _key_field(curve: _zpl.ZplNode | None, name: str, source: str) -> bytes | None:
    """The key in ``curve/<name>`` as 32 bytes, None when absent or empty."""
    text = curve.get(name) if curve is not None else None
    if not text:
        return None
    try:
        return coerce_key(text, name)
    except (KeyFormatError, ZsecTypeError):
        raise CertificateError(f"{source}: curve/{name} must be 40 Z85 characters") from None


def public_cert(public: bytes, public_txt: str, meta: str) -> Cert:
    """Make a read-only public certificate from already checked parts (store fast path).

    ``meta`` is a metadata block as ``fast_fields`` returns it.
    """
    cert = object.__new__(Cert)
    cert._public, cert._public_txt, cert._secret, cert._meta = public, public_txt, None, meta
    cert._frozen = True
    return cert


class Cert:
    """A CURVE keypair (or a public key alone) plus ordered text metadata.

    ``Cert()`` generates a fresh keypair. The secret key never appears in
    ``repr``, ``str`` or any error message; ``==`` compares the keys in
    constant time and ignores metadata.
    """

    __slots__ = ("_frozen", "_meta", "_path", "_public", "_public_txt", "_secret")
    # The file ``load`` read (set only there): lets an error message name it.
    _path: str
    # A dict, or (read-only certificates only) the raw block of a file read
    # by the fast path, turned into a dict on first use (``_metadata``);
    # both hold the same entries.
    _meta: dict[str, str] | str

    def __init__(self) -> None:
        public, secret = generate_keypair()
        self._public = public
        self._secret: bytes | None = secret
        self._public_txt: str | None = None
        self._meta = {}
        self._frozen = False

    @classmethod
    def _new(cls, public: bytes, secret: bytes | None, meta: dict[str, str] | str) -> Cert:
        cert = cls.__new__(cls)
        cert._public = public
        cert._secret = secret
        cert._public_txt = None
        cert._meta = meta
        cert._frozen = False
        return cert

    def _metadata(self) -> dict[str, str]:
        meta = self._meta
        if isinstance(meta, str):
            # Two threads may both get here with a shared certificate: each
            # builds an equal dict, and either assignment is as good, since
            # only a read-only certificate keeps the text (see from_bytes).
            meta = self._meta = meta_from_block(meta)
        return meta

    def _freeze(self) -> None:
        # Certificates shared through a CertStore are read by other threads.
        self._frozen = True

    def _trusted_copy(self) -> Cert:
        """A read-only copy without the secret key, as a trust store keeps it (or self)."""
        if self._frozen and self._secret is None:
            return self
        meta = self._meta if isinstance(self._meta, str) else dict(self._meta)
        cert = self._new(self._public, None, meta)
        cert._public_txt = self._public_txt
        cert._frozen = True
        return cert

    def _check_mutable(self) -> None:
        if self._frozen:
            raise CertificateError(
                "this certificate belongs to a CertStore and is read-only; change a dup()"
            )

    @classmethod
    def from_keys(cls, public: bytes | str, secret: bytes | str | None = None) -> Cert:
        """Make a certificate from existing keys, each 32 raw bytes or 40 Z85 characters.

        With a secret key, it must be the one that belongs to ``public``
        (checked), otherwise ``KeyFormatError``.
        """
        public_raw = coerce_key(public, "public key")
        secret_raw = None if secret is None else coerce_key(secret, "secret key")
        if secret_raw is not None and not hmac.compare_digest(
            public_from_secret(secret_raw), public_raw
        ):
            raise KeyFormatError("the secret key does not belong to the public key")
        return cls._new(public_raw, secret_raw, {})

    @classmethod
    def load(cls, path: Any) -> Cert:
        """Load a certificate file written by zsec, CZMQ, pyzmq or JeroMQ.

        Reads ``<path>_secret`` when it exists and can be read (as CZMQ
        does), else ``path``. A secret key is checked against its public key,
        and against the key in ``path`` when both files exist. Raises
        ``FileAccessError`` when no file can be read or the secret file is
        writable by group or others or owned by another user than this
        process's or root, and ``CertificateError`` when a file is not a
        valid certificate or the two files hold different keys.
        """
        path = fspath(path, "certificate path")
        secret_path = path + "_secret"
        try:
            data, st = read_regular(secret_path, MAX_CERT_BYTES, "certificate")
        except FileAccessError:
            cert = cls.from_bytes(read_capped(path, MAX_CERT_BYTES, "certificate"), path)
            # Not secret: lets an error name the file (read with getattr: unset elsewhere).
            cert._path = path
            return cert
        # Whoever could write or plant the secret file would choose the keys
        # this process then uses: the same rule as for trusted certificates,
        # and it must hold the key of the public file beside it, if any.
        problem = mode_problem(st, secret_path, "secret certificate file", "Cert.from_bytes")
        if problem is not None:
            raise FileAccessError(problem, filename=secret_path)
        cert = cls.from_bytes(data, secret_path)
        cert._path = path
        try:
            public = cls.from_bytes(read_capped(path, MAX_CERT_BYTES, "certificate"), path)
        except FileAccessError:
            return cert
        if not hmac.compare_digest(public.public_key, cert.public_key):
            raise CertificateError(
                f"{secret_path} holds another key than {path} beside it; "
                "save both again with Cert.save, or remove the one that is wrong"
            )
        return cert

    @classmethod
    def from_bytes(cls, data: bytes | str, source: str = "<certificate>") -> Cert:
        """Parse certificate text; ``source`` names it in error messages."""
        fast = fast_fields(data) if isinstance(data, bytes) else None
        if fast is not None and fast[1] is None:
            public = z85_decode(fast[0])
            if public is not None:
                # Made into a dict now: only a read-only certificate may keep
                # the text, since a lazy conversion on one thread could put
                # back a copy made before another thread's set_meta.
                cert = cls._new(public, None, meta_from_block(fast[2]))
                cert._public_txt = fast[0]
                return cert
        return cls._parse(data, source)

    @classmethod
    def _parse(cls, data: bytes | str, source: str) -> Cert:
        try:
            root = _zpl.loads(data)
        except ZplError as exc:
            raise CertificateError(f"{source}: not a valid certificate file: {exc}") from None
        curve = root.child("curve")
        public = _key_field(curve, "public-key", source)
        if public is None:
            raise CertificateError(f"{source}: expected a 'curve' section with a 'public-key'")
        secret = _key_field(curve, "secret-key", source)
        if secret is not None:
            if secret == _ZERO_KEY:
                # CZMQ writes an all-zero secret key for a public-only cert.
                secret = None
            elif not hmac.compare_digest(public_from_secret(secret), public):
                raise CertificateError(f"{source}: the secret key does not match the public key")
        meta: dict[str, str] = {}
        section = root.child("metadata")
        if section is not None:
            for node in section.children:
                # The first of two equal names wins, as in CZMQ.
                meta.setdefault(node.name, node.value or "")
        return cls._new(public, secret, meta)

    # -- keys -------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        """The public key, 32 raw bytes."""
        return self._public

    @property
    def secret_key(self) -> bytes | None:
        """The secret key, 32 raw bytes, or None for a public-only certificate."""
        return self._secret

    @property
    def public_txt(self) -> str:
        """The public key as 40 Z85 characters."""
        if self._public_txt is None:
            self._public_txt = z85_encode(self._public)
        return self._public_txt

    @property
    def secret_txt(self) -> str | None:
        """The secret key as 40 Z85 characters, or None. Handle with care."""
        return None if self._secret is None else z85_encode(self._secret)

    # -- metadata ---------------------------------------------------------

    def set_meta(self, name: str, value: str) -> None:
        """Set a metadata entry, replacing any earlier value (CZMQ keeps the first).

        Names are ZPL names (letters, digits, ``$-_@.&+/``); values are any
        printable text, which ``save`` writes so that it reads back exactly.
        """
        self._check_mutable()
        self._metadata()[check_meta_name(name)] = check_meta_value(value)

    def meta(self, name: str) -> str | None:
        """Return the value of a metadata entry, or None."""
        return self._metadata().get(name)

    def meta_keys(self) -> list[str]:
        """Return the metadata names in the order they were set or read."""
        return list(self._metadata())

    def unset_meta(self, name: str) -> None:
        """Remove a metadata entry; removing a missing one is not an error."""
        self._check_mutable()
        self._metadata().pop(name, None)

    @property
    def metadata(self) -> dict[str, str]:
        """A copy of all metadata, in order."""
        return dict(self._metadata())

    # -- files ------------------------------------------------------------

    def save(self, path: Any, *, now: datetime.datetime | None = None) -> None:
        """Write the public file at ``path`` and the secret file at ``<path>_secret``.

        Both are written atomically; the secret file is created 0600. Needs
        a secret key (use ``save_public`` for a public-only certificate).
        """
        path = fspath(path, "certificate path")
        self._require_secret("save")
        stamp = now or datetime.datetime.now()
        write_atomic(
            [
                (path + "_secret", self._render(True, stamp), SECRET_MODE),
                (path, self._render(False, stamp), PUBLIC_MODE & ~current_umask()),
            ]
        )

    def save_public(self, path: Any, *, now: datetime.datetime | None = None) -> None:
        """Write only the public certificate file at ``path``, atomically."""
        path = fspath(path, "certificate path")
        data = self._render(False, now or datetime.datetime.now())
        write_atomic([(path, data, PUBLIC_MODE & ~current_umask())])

    def save_secret(self, path: Any, *, now: datetime.datetime | None = None) -> None:
        """Write the secret certificate file (both keys) at ``path``, atomically and 0600."""
        path = fspath(path, "certificate path")
        self._require_secret("save_secret")
        write_atomic([(path, self._render(True, now or datetime.datetime.now()), SECRET_MODE)])

    def _require_secret(self, action: str) -> None:
        if self._secret is None:
            raise CertificateError(f"cannot {action}: this certificate has no secret key")

    def _render(self, secret: bool, now: datetime.datetime) -> bytes:
        stamp = now.strftime("%Y-%m-%d %H:%M:%S")
        banner = _SECRET_BANNER if secret else _PUBLIC_BANNER
        header = (f"   ****  Generated on {stamp} by zsec  ****", *banner)
        metadata = _zpl.ZplNode("metadata")
        metadata.children = [_zpl.ZplNode(k, v) for k, v in self._metadata().items()]
        curve = _zpl.ZplNode("curve", None, [_zpl.ZplNode("public-key", self.public_txt)])
        if secret:
            assert self._secret is not None
            curve.children.append(_zpl.ZplNode("secret-key", z85_encode(self._secret)))
        try:
            text = _zpl.dumps(_zpl.ZplNode("root", None, [metadata, curve]), header)
        except ZplError as exc:
            raise MetadataError(f"metadata cannot be saved: {exc}") from None
        data = text.encode("utf-8")
        if len(data) > MAX_CERT_BYTES:
            raise MetadataError(
                f"certificate would be {len(data)} bytes, the limit is {MAX_CERT_BYTES}"
            )
        return data

    # -- sockets ----------------------------------------------------------

    def apply(self, socket: Any) -> None:
        """Set this certificate's keys as a socket's CURVE public and secret key.

        This does not make the socket a server or client; see
        ``zsec.curve_server`` and ``zsec.curve_client``.
        """
        self._require_secret("apply")
        assert self._secret is not None
        import zmq

        if not isinstance(socket, zmq.Socket):
            raise ZsecTypeError(f"apply() needs a zmq.Socket, not {type(socket).__name__}")
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self._public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self._secret)

    # -- value behaviour --------------------------------------------------

    def dup(self) -> Cert:
        """Return an independent copy (keys and metadata)."""
        return self._new(self._public, self._secret, dict(self._metadata()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cert):
            return NotImplemented
        mine = self._public + (self._secret or _ZERO_KEY) + (b"\1" if self._secret else b"\0")
        theirs = other._public + (other._secret or _ZERO_KEY) + (b"\1" if other._secret else b"\0")
        return hmac.compare_digest(mine, theirs)

    def __hash__(self) -> int:
        return hash(self._public)

    def __repr__(self) -> str:
        secret = "[secure]" if self._secret is not None else "None"
        return (
            f"Cert(public_key={self.public_txt!r}, secret_key={secret}, meta={self._metadata()!r})"
        )

    __str__ = __repr__

    def __copy__(self) -> Cert:
        return self.dup()

    def __deepcopy__(self, memo: dict[int, Any]) -> Cert:
        return self.dup()

    def __reduce__(self) -> Any:
        # Pickling would write the secret key wherever the pickle goes.
        raise ZsecTypeError("Cert objects cannot be pickled; save them with save()")
