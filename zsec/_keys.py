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
_PACK_KEY = struct.Struct(">8I").pack


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


_DIGITS = bytes(_DIGIT.get(chr(i), 0xFF) for i in range(256))


def z85_decode(text: str) -> bytes | None:
    """Decode Z85 text, or return None when it is not valid Z85.

    Valid means: a length that is a multiple of 5, only alphabet characters,
    and no 5-character group above 0xFFFFFFFF (libzmq's checks).
    """
    if len(text) % 5 or not text.isascii():
        return None
    digits = text.encode("ascii").translate(_DIGITS)
    if 0xFF in digits:
        return None
    words = [
        (((a * 85 + b) * 85 + c) * 85 + d) * 85 + e
        for a, b, c, d, e in zip(
            digits[0::5], digits[1::5], digits[2::5], digits[3::5], digits[4::5], strict=True
        )
    ]
    if words and max(words) > _U32_MAX:
        return None
    return _PACK_KEY(*words) if len(words) == 8 else struct.pack(f">{len(words)}I", *words)


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


# Largest valid 5-digit group, 0xFFFFFFFF, as Z85 digit values ("%nSc0").
_MAX_GROUP = bytes(_DIGIT[c] for c in "%nSc0")
# Digit values that can start an overflowing group map to 1, the rest to 0.
_RISKY_FIRST = bytes(1 if i >= _DIGIT["%"] else 0 for i in range(256))


def z85_decode_keys(texts: list[str]) -> list[bytes | None]:
    """Decode many 40-character Z85 keys at once; None for each invalid one.

    Same results as ``z85_decode`` on each text, several times faster for a
    whole directory of certificates: the arithmetic runs on one big integer
    whose 32-bit lanes are the key words, so Python touches each key once.
    """
    count = len(texts)
    if count == 0:
        return []
    joined = "".join(texts)
    if set(map(len, texts)) == {KEY_Z85_CHARS} and joined.isascii():
        invalid: list[int] = []  # the common case, checked without a loop in Python
    else:
        invalid = [i for i, t in enumerate(texts) if len(t) != KEY_Z85_CHARS or not t.isascii()]
        gaps = set(invalid)
        joined = "".join("0" * KEY_Z85_CHARS if i in gaps else t for i, t in enumerate(texts))
    digits = bytearray(joined.encode("ascii").translate(_DIGITS))
    # Characters outside the alphabet, and groups above 0xFFFFFFFF (which
    # would carry into the next lane), disqualify a key; zero its digits so
    # the batch stays exact, and leave its result None.
    bad = {i // KEY_Z85_CHARS for i in _positions(digits, 0xFF)}
    for group in _positions(digits[0::5].translate(_RISKY_FIRST), 1):
        start = group * 5
        if bytes(digits[start : start + 5]) > _MAX_GROUP:
            bad.add(start // KEY_Z85_CHARS)
    bad.update(invalid)
    for i in bad:
        digits[i * KEY_Z85_CHARS : (i + 1) * KEY_Z85_CHARS] = bytes(KEY_Z85_CHARS)
    lanes = bytearray(KEY_BYTES * count)
    value = 0
    for column in range(5):
        lanes[3::4] = digits[column::5]
        value = value * 85 + int.from_bytes(lanes, "big")
    raw = value.to_bytes(KEY_BYTES * count, "big")
    results: list[bytes | None] = [raw[i : i + KEY_BYTES] for i in range(0, len(raw), KEY_BYTES)]
    for i in bad:
        results[i] = None
    return results


def _positions(data: bytes | bytearray, byte: int) -> list[int]:
    found = []
    at = data.find(byte)
    while at >= 0:
        found.append(at)
        at = data.find(byte, at + 1)
    return found
