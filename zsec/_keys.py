"""CURVE key handling: Z85 (ZMQ RFC 32), key coercion and keypair generation.

This is the one place that checks key shape; every public entry point that
takes a key goes through ``coerce_key``.
"""

from __future__ import annotations

import struct

from nacl.bindings import crypto_scalarmult_base
from nacl.public import PrivateKey

from ._errors import KeyFormatError, ZsecTypeError

KEY_BYTES = 32
KEY_Z85_CHARS = 40

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_DIGIT = {c: i for i, c in enumerate(_ALPHABET)}
_U32_MAX = 0xFFFFFFFF


def z85_encode(data: bytes) -> str:
    """Encode bytes whose length is a multiple of 4 as Z85 text."""
    if len(data) % 4:
        raise KeyFormatError(f"Z85 encodes a multiple of 4 bytes, got {len(data)}")
    a = _ALPHABET
    return "".join(
        a[v // 52200625 % 85]
        + a[v // 614125 % 85]
        + a[v // 7225 % 85]
        + a[v // 85 % 85]
        + a[v % 85]
        for (v,) in struct.iter_unpack(">I", data)
    )


def z85_decode(text: str) -> bytes | None:
    """Decode Z85 text, or return None when it is not valid Z85.

    Valid means: a length that is a multiple of 5, only alphabet characters,
    and no 5-character group above 0xFFFFFFFF (libzmq's checks).
    """
    if len(text) % 5:
        return None
    words = []
    digit = _DIGIT
    try:
        for i in range(0, len(text), 5):
            value = 0
            for ch in text[i : i + 5]:
                value = value * 85 + digit[ch]
            if value > _U32_MAX:
                return None
            words.append(value)
    except KeyError:
        return None
    return struct.pack(f">{len(words)}I", *words)


def coerce_key(key: object, what: str = "key") -> bytes:
    """Return a CURVE key as 32 raw bytes, from 32 raw bytes or 40 Z85 characters.

    Accepts ``bytes``-like or ``str``. Raises ``KeyFormatError`` (a
    ``ValueError``) or ``ZsecTypeError`` naming the expected shape; the key
    itself never appears in the message, as it may be secret.
    """
    if isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
        if len(raw) == KEY_BYTES:
            return raw
        if len(raw) == KEY_Z85_CHARS:
            try:
                text = raw.decode("ascii")
            except UnicodeDecodeError:
                text = ""
            decoded = z85_decode(text) if text else None
            if decoded is not None:
                return decoded
            raise KeyFormatError(f"{what}: 40 bytes given but they are not valid Z85 text")
        raise KeyFormatError(
            f"{what} must be 32 raw bytes or 40 Z85 characters, got {len(raw)} bytes"
        )
    if isinstance(key, str):
        if len(key) == KEY_Z85_CHARS:
            decoded = z85_decode(key)
            if decoded is not None:
                return decoded
            raise KeyFormatError(f"{what}: 40 characters given but they are not valid Z85")
        raise KeyFormatError(
            f"{what} must be 40 Z85 characters (or 32 raw bytes), got {len(key)} characters"
        )
    raise ZsecTypeError(
        f"{what} must be bytes (32 raw) or str (40 Z85 characters), not {type(key).__name__}"
    )


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a fresh Curve25519 ``(public, secret)`` pair as 32 raw bytes each."""
    private = PrivateKey.generate()
    return bytes(private.public_key), bytes(private)


def public_from_secret(secret: bytes) -> bytes:
    """Derive the Curve25519 public key of a 32-byte secret key."""
    return bytes(crypto_scalarmult_base(secret))
