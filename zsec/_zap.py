"""ZAP (ZMQ RFC 27): request parsing, reply encoding and the policy decision. No sockets.

``ZapRequest.from_frames`` validates a request, ``Policy.decide`` answers
it, ``ZapReply.frames`` encodes the answer exactly as libzmq requires
(docs/protocol.md, section 3). ``Policy.handle`` composes the three on raw ROUTER frames
for the authenticator thread, with caches that keep the common cases to a
few dictionary lookups.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import itertools
import logging
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from ._errors import (
    AddressError,
    SocketConfigError,
    ZapError,
    ZsecError,
    ZsecTypeError,
    ZsecValueError,
)
from ._keys import KEY_BYTES, coerce_key, z85_encode

if TYPE_CHECKING:
    from ._guard import Grants
    from ._passwords import PasswordFile
    from ._store import CertStore
    from ._throttle import FailureLimiter

log = logging.getLogger("zsec.auth")

ZAP_VERSION = b"1.0"
#: RFC 27 limits every string field to 255 octets.
MAX_FIELD = 255
#: User-Id given to NULL clients: never empty, so a peer cannot supply its own.
NULL_USER_ID = b"anonymous"


class _AllowAny:
    """The ``CURVE_ALLOW_ANY`` marker: any client that knows the server key."""

    _instance: _AllowAny | None = None

    def __new__(cls) -> _AllowAny:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "zsec.CURVE_ALLOW_ANY"

    def __reduce__(self) -> str:
        return "CURVE_ALLOW_ANY"


CURVE_ALLOW_ANY = _AllowAny()

# ZAP metadata names that libzmq gives a meaning of its own (docs/protocol.md, section 2):
# from a certificate they could change a peer's routing id or fail every
# handshake, so they are never sent. Nor is the live-revocation guard's grant
# (zsec._guard.GRANT_PROPERTY): the client writes its certificate's metadata,
# libzmq keeps the first of two equal names, and a forged grant (a NULL one,
# say) would make the connection unrevocable.
RESERVED_PROPERTIES = frozenset(
    {"user-id", "identity", "routing-id", "socket-type", "peer-address", "resource", "x-zsec-grant"}
)


class CurveCallback:
    """A CURVE key decision delegated to the application's ``provider(domain, public_key)``.

    The policy never calls the provider: a request it must decide comes back
    from ``Policy.handle`` as a ``Pending``, the authenticator runs the
    provider off its thread and hands the verdict back with ``handle(frames,
    verdict=(callback, status))``. ``is_async`` says the provider is a
    coroutine function; ``loop`` is the event loop its coroutines run on
    (None: the authenticator's own); ``timeout`` bounds one decision.
    """

    __slots__ = ("is_async", "loop", "max_outstanding", "provider", "serial", "timeout")
    _serials = itertools.count(1)

    def __init__(
        self,
        provider: Callable[[str, bytes], Any],
        *,
        is_async: bool,
        timeout: float,
        loop: Any = None,
        max_outstanding: int = 64,
    ) -> None:
        self.provider = provider
        self.is_async = is_async
        self.timeout = timeout
        self.loop = loop
        self.max_outstanding = max_outstanding
        self.serial = next(self._serials)

    def __repr__(self) -> str:
        name = getattr(self.provider, "__qualname__", type(self.provider).__qualname__)
        return f"<CurveCallback {name} timeout={self.timeout:g}s>"


class Pending(NamedTuple):
    """A CURVE request that waits for its domain's ``CurveCallback`` to decide."""

    request: ZapRequest
    callback: CurveCallback


CurveSource: TypeAlias = "CertStore | _AllowAny | CurveCallback"


class ZapRequest(NamedTuple):
    """A validated ZAP request (the frames after the envelope), immutable.

    ``credentials`` is () for NULL, (username, password) for PLAIN and
    (32-byte client key,) for CURVE.
    """

    version: bytes
    request_id: bytes
    domain: bytes
    address: bytes
    identity: bytes
    mechanism: bytes
    credentials: tuple[bytes, ...] = ()

    @classmethod
    def from_frames(cls, frames: list[bytes] | tuple[bytes, ...], start: int = 0) -> ZapRequest:
        """Parse request frames beginning at ``frames[start]`` (the version frame).

        Raises ``ZapError`` naming what was expected. Total: any list of
        bytes gives a request or a ``ZapError``.
        """
        count = len(frames) - start
        if count < 6:
            raise ZapError(f"expected at least 6 frames, got {max(count, 0)}")
        version, request_id, domain, address, identity, mechanism = frames[start : start + 6]
        if version != ZAP_VERSION:
            raise ZapError("unsupported ZAP version, expected 1.0")
        if (
            len(request_id) > MAX_FIELD
            or len(domain) > MAX_FIELD
            or len(address) > MAX_FIELD
            or len(identity) > MAX_FIELD
            or len(mechanism) > MAX_FIELD
        ):
            raise ZapError("a request field is longer than 255 bytes")
        credentials = tuple(frames[start + 6 :])
        expected = _CREDENTIAL_FRAMES.get(mechanism)
        if expected is None:
            raise ZapError(f"unsupported mechanism {_show(mechanism)}")
        if len(credentials) != expected:
            raise ZapError(
                f"{mechanism.decode()} expects {expected} credential frame(s), "
                f"got {len(credentials)}"
            )
        if mechanism == b"CURVE":
            if len(credentials[0]) != KEY_BYTES:
                raise ZapError(f"CURVE key must be 32 bytes, got {len(credentials[0])}")
        elif mechanism == b"PLAIN" and (
            len(credentials[0]) > MAX_FIELD or len(credentials[1]) > MAX_FIELD
        ):
            raise ZapError("PLAIN username and password are at most 255 bytes")
        return cls(version, request_id, domain, address, identity, mechanism, credentials)

    @property
    def username(self) -> bytes:
        """PLAIN username ("" for other mechanisms)."""
        return self.credentials[0] if self.mechanism == b"PLAIN" else b""

    @property
    def client_key(self) -> bytes:
        """CURVE client public key, 32 bytes (b"" for other mechanisms)."""
        return self.credentials[0] if self.mechanism == b"CURVE" else b""

    def __repr__(self) -> str:
        # Never show the PLAIN password.
        creds = "()"
        if self.mechanism == b"PLAIN":
            creds = f"(username={self.credentials[0]!r}, password=[secure])"
        elif self.credentials:
            creds = f"({len(self.credentials)} frame(s))"
        return (
            f"ZapRequest(request_id={self.request_id!r}, domain={self.domain!r}, "
            f"address={self.address!r}, mechanism={self.mechanism!r}, credentials={creds})"
        )


_CREDENTIAL_FRAMES = {b"NULL": 0, b"PLAIN": 2, b"CURVE": 1}


class ZapReply(NamedTuple):
    """A ZAP reply; ``frames()`` gives the six frames after the envelope."""

    request_id: bytes
    status_code: bytes
    status_text: bytes = b""
    user_id: bytes = b""
    metadata: bytes = b""

    def frames(self) -> list[bytes]:
        """The reply frames, version first, as libzmq requires them."""
        return [
            ZAP_VERSION,
            self.request_id,
            self.status_code,
            self.status_text,
            self.user_id,
            self.metadata,
        ]

    @property
    def allowed(self) -> bool:
        return self.status_code == b"200"


def encode_properties(properties: Mapping[str, str | bytes]) -> bytes:
    """Encode properties in ZMTP metadata format (name-len, name, 4-byte value-len, value)."""
    out = bytearray()
    for name, value in properties.items():
        raw_name = name.encode("ascii")
        if not 0 < len(raw_name) <= 255:
            raise ZapError(f"property name must be 1-255 bytes, got {len(raw_name)}")
        raw_value = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        out += bytes((len(raw_name),)) + raw_name + struct.pack(">I", len(raw_value)) + raw_value
    return bytes(out)


def decode_properties(data: bytes) -> dict[str, bytes]:
    """Decode a ZMTP property blob; raises ``ZapError`` on trailing or truncated bytes."""
    props: dict[str, bytes] = {}
    at = 0
    while at < len(data):
        size = data[at]
        name = data[at + 1 : at + 1 + size]
        at += 1 + size
        if size == 0 or len(name) != size or at + 4 > len(data):
            raise ZapError("truncated property")
        (length,) = struct.unpack_from(">I", data, at)
        at += 4
        if at + length > len(data):
            raise ZapError("truncated property value")
        props[name.decode("ascii", "replace")] = data[at : at + length]
        at += length
    return props


def cert_properties(meta: Mapping[str, str]) -> bytes:
    """Encode certificate metadata as ZAP metadata.

    Leaves out libzmq's reserved names and names over 255 bytes (a file may
    hold them; a ZMTP property cannot), so such a certificate still works.
    """
    return encode_properties(
        {
            name: value
            for name, value in meta.items()
            if len(name) <= 255 and name.lower() not in RESERVED_PROPERTIES
        }
    )


def check_domain(domain: object, *, server: bool = False) -> str:
    """Return ``domain`` if it can be a ZAP domain, else raise.

    A ZAP domain is text of at most 255 bytes (RFC 27). A server socket's
    domain must also be non-empty: with an empty one libzmq skips the
    authenticator for CURVE and NULL.
    """
    if not isinstance(domain, str):
        raise ZsecTypeError(f"a ZAP domain must be str, not {type(domain).__name__}")
    size = len(domain.encode("utf-8"))
    if size > MAX_FIELD:
        raise SocketConfigError(f"a ZAP domain is at most 255 bytes, got {size}")
    if server and not size:
        raise SocketConfigError(
            "a server's ZAP domain must be 1-255 bytes: an empty domain lets libzmq skip "
            "the authenticator"
        )
    return domain


def check_user_id(user_id: object) -> bytes:
    """Return a User-Id as bytes if libzmq can carry it intact, else raise.

    1-255 bytes (RFC 27), and no NUL: ``zmq_msg_gets`` would cut the value
    there and the application would read a different identity.
    """
    if isinstance(user_id, str):
        user_id = user_id.encode("utf-8")
    if not isinstance(user_id, bytes):
        raise ZsecTypeError(f"a User-Id must be str or bytes, not {type(user_id).__name__}")
    if not 0 < len(user_id) <= MAX_FIELD or b"\0" in user_id:
        raise ZsecValueError("a User-Id must be 1-255 bytes without NUL")
    return user_id


# -- addresses -------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address_rule(rule: object) -> Network:
    """Parse an allow/deny rule: an IPv4 or IPv6 address or CIDR network."""
    if isinstance(rule, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return rule
    if isinstance(rule, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_network(rule)
    if not isinstance(rule, str):
        raise ZsecTypeError(f"an address rule must be str, not {type(rule).__name__}")
    try:
        network = ipaddress.ip_network(rule.strip(), strict=False)
    except ValueError:
        raise AddressError(
            f"address rule {rule!r} is not an IPv4/IPv6 address or CIDR network "
            "(for example 192.0.2.7, 10.0.0.0/8 or 2001:db8::/32)"
        ) from None
    # An IPv4-mapped IPv6 rule means its IPv4 address.
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        mapped = network.network_address.ipv4_mapped
        prefix = max(0, network.prefixlen - 96)
        return ipaddress.ip_network(f"{mapped}/{prefix}", strict=False)
    return network


IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _peer_ip(address: bytes) -> tuple[IP, ...] | None:
    """The peer's IP, plus its IPv4 form first when it is IPv4-mapped; None for non-IP peers."""
    try:
        text = address.decode("ascii").split("%", 1)[0].strip("[]")
        ip = ipaddress.ip_address(text)
    except (UnicodeDecodeError, ValueError):
        return None  # IPC peers ("localhost:uid:gid:pid") and garbage match no rule
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d: IPv4
        # rules match them, and so do IPv6 rules covering that form.
        return (ip.ipv4_mapped, ip)
    return (ip,)


@functools.lru_cache(maxsize=4096)
def limit_key(address: bytes) -> bytes:
    """The key failures count under: the canonical IP (IPv4-mapped as IPv4), else the address."""
    ips = _peer_ip(address)
    if ips is None:
        return address
    ip = ips[0]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64:
            # Translated IPv4 clients: the IPv4 address is the last 32 bits.
            return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)).encode("ascii")
        # One host usually holds a whole /64: count the prefix, not the address.
        return str(ipaddress.ip_network(f"{ip}/64", strict=False)).encode("ascii")
    return str(ip).encode("ascii")


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _matches(ips: tuple[IP, ...], rules: tuple[Network, ...]) -> bool:
    return any(ip.version == net.version and ip in net for ip in ips for net in rules)


def _show(value: bytes, limit: int = 64) -> str:
    """Render peer-supplied bytes for a log line: printable, escaped, bounded."""
    text = value[:limit].decode("utf-8", "backslashreplace")
    text = text.encode("unicode_escape").decode("ascii")
    return text + ("..." if len(value) > limit else "")


# -- the policy --------------------------------------------------------------------

_OK = b"OK"
BANNED = b"address banned after repeated failures"
UNKNOWN_USER = b"unknown user"
WRONG_PASSWORD = b"wrong password"
UNKNOWN_KEY = b"unknown CURVE key"
PROVIDER_FAILED = b"CURVE provider failed"
NOT_ALLOWED = b"address not in the allow list"
DENIED = b"address is in the deny list"
# Refusals the client caused; server-side trouble (a missing password file,
# no configuration) does not count toward a ban.
CLIENT_FAULTS = frozenset({UNKNOWN_USER, WRONG_PASSWORD, UNKNOWN_KEY, NOT_ALLOWED, DENIED})
_CACHE_LIMIT = 10_000


class Policy:
    """An immutable authentication policy: address lists plus per-domain PLAIN and CURVE.

    ``plain`` and ``curve`` map a domain (``"*"`` for every domain without
    its own entry) to a ``PasswordFile`` (or ``PasswordTable``) and to a
    ``CertStore``, ``CURVE_ALLOW_ANY`` or a ``CurveCallback``. An optional
    ``limiter`` bans addresses that fail too often (``handle`` records the
    failures); an optional ``curve_user_id(public_key) -> str | bytes``
    chooses the User-Id of admitted CURVE clients (default: the key in
    Z85). Change it by making a new one with ``replace``.
    """

    __slots__ = (
        "_address_cache",
        "_curve",
        "_curve_cache",
        "_plain",
        "_tag_cache",
        "allow",
        "curve",
        "curve_user_id",
        "deny",
        "emit",
        "grants",
        "limiter",
        "plain",
        "verbose",
    )

    def __init__(
        self,
        *,
        allow: Iterable[object] = (),
        deny: Iterable[object] = (),
        plain: Mapping[str, PasswordFile] | None = None,
        curve: Mapping[str, CurveSource] | None = None,
        verbose: bool = False,
        limiter: FailureLimiter | None = None,
        emit: Callable[..., None] | None = None,
        curve_user_id: Callable[[bytes], str | bytes] | None = None,
        grants: Grants | None = None,
    ) -> None:
        put = object.__setattr__
        put(self, "allow", tuple(parse_address_rule(r) for r in allow))
        put(self, "deny", tuple(parse_address_rule(r) for r in deny))
        put(self, "plain", dict(plain or {}))
        put(self, "curve", dict(curve or {}))
        put(self, "verbose", bool(verbose))
        put(self, "limiter", limiter)
        # Receives each decision (t0, request, reply, cert, frames): the
        # authenticator's event hub. It must not block or raise.
        put(self, "emit", emit)
        put(self, "curve_user_id", curve_user_id)
        put(self, "grants", grants)
        # Byte-keyed views for the request path, and caches of derived answers
        # (valid for this policy only, since a new policy starts empty).
        put(self, "_plain", {k.encode(): v for k, v in self.plain.items()})
        put(self, "_curve", {k.encode(): v for k, v in self.curve.items()})
        put(self, "_address_cache", {})
        put(self, "_curve_cache", {})
        put(self, "_tag_cache", {})

    def replace(self, **changes: Any) -> Policy:
        """Return a copy with some of allow, deny, plain, curve, verbose changed."""
        fields: dict[str, Any] = {
            "allow": self.allow,
            "deny": self.deny,
            "plain": self.plain,
            "curve": self.curve,
            "verbose": self.verbose,
            "limiter": self.limiter,
            "emit": self.emit,
            "curve_user_id": self.curve_user_id,
            "grants": self.grants,
        }
        fields.update(changes)
        return Policy(**fields)

    allow: tuple[Network, ...]
    deny: tuple[Network, ...]
    plain: dict[str, PasswordFile]
    curve: dict[str, CurveSource]
    verbose: bool
    limiter: FailureLimiter | None
    emit: Callable[..., None] | None
    curve_user_id: Callable[[bytes], str | bytes] | None
    grants: Grants | None
    _plain: dict[bytes, PasswordFile]
    _curve: dict[bytes, CurveSource]
    _address_cache: dict[bytes, bytes]
    _curve_cache: dict[bytes, tuple[object, bytes, bytes]]
    _tag_cache: dict[bytes, tuple[object, bytes]]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Policy is immutable; use replace()")

    # -- deciding ----------------------------------------------------------------

    def address_verdict(self, address: bytes) -> bytes:
        """Return b"" when the address may continue, else the reason it is refused."""
        verdict = self._address_cache.get(address)
        if verdict is None:
            verdict = self._address_verdict(address)
            if len(self._address_cache) >= _CACHE_LIMIT:
                self._address_cache.clear()
            self._address_cache[address] = verdict
        return verdict

    def _address_verdict(self, address: bytes) -> bytes:
        if not self.allow and not self.deny:
            return b""
        ip = _peer_ip(address)
        if self.allow:
            # A non-empty allow list admits only its addresses and overrides deny.
            if ip is not None and _matches(ip, self.allow):
                return b""
            return NOT_ALLOWED
        if ip is not None and _matches(ip, self.deny):
            return DENIED
        return b""

    def decide(
        self, request: ZapRequest, verdict: tuple[CurveCallback, bytes] | None = None
    ) -> ZapReply | Pending:
        """Answer a validated request: 200 with a User-Id and metadata, or 400 with a reason.

        A CURVE request in a domain decided by a ``CurveCallback`` gives a
        ``Pending`` instead, until it is asked again with ``verdict`` =
        (that callback, b"200" | b"400" | b"500").
        """
        if self.limiter is not None and self.limiter.is_banned(limit_key(request.address)):
            # Refused before any credential is looked at: the right password
            # does not get through a ban either. 400, not 300: with 300
            # libzmq 4.3.5 leaves a PLAIN connection open until the handshake
            # timeout (30 s), so a banned attacker could pile connections up;
            # 400 closes at once (and the client does not redial).
            return ZapReply(request.request_id, b"400", BANNED)
        refused = self.address_verdict(request.address)
        if refused:
            return ZapReply(request.request_id, b"400", refused)
        mechanism = request.mechanism
        if mechanism == b"NULL":
            return ZapReply(request.request_id, b"200", _OK, NULL_USER_ID)
        if mechanism == b"PLAIN":
            # "is None", not "or": an empty store or password file is still this
            # domain's configuration and must not hand the decision to "*".
            passwords = self._plain.get(request.domain)
            if passwords is None:
                passwords = self._plain.get(b"*")
            if passwords is None:
                return ZapReply(request.request_id, b"400", b"no PLAIN passwords for this domain")
            username, password = request.credentials
            if self.grants is not None:
                # The grant must name the entry this check used (see Grants.stamp).
                self.grants.checking = (passwords, passwords.version)
            reason = passwords.check(username, password)
            if reason:
                return ZapReply(request.request_id, b"400", reason)
            return ZapReply(request.request_id, b"200", _OK, username)
        if mechanism == b"CURVE":
            return self._decide_curve(request, verdict)
        return ZapReply(request.request_id, b"400", b"unsupported mechanism")

    def _decide_curve(
        self, request: ZapRequest, verdict: tuple[CurveCallback, bytes] | None
    ) -> ZapReply | Pending:
        source = self._curve.get(request.domain)
        if source is None:
            source = self._curve.get(b"*")
        if source is None:
            return ZapReply(request.request_id, b"400", b"no CURVE configuration for this domain")
        key = request.credentials[0]
        if source is CURVE_ALLOW_ANY:
            cached = self._curve_cache.get(key)
            if cached is None or cached[0] is not CURVE_ALLOW_ANY:
                cached = (CURVE_ALLOW_ANY, z85_encode(key).encode("ascii"), b"")
                self._remember_curve(key, cached)
            return ZapReply(request.request_id, b"200", _OK, self._user_id(key, cached[1]))
        if type(source) is CurveCallback:
            # A verdict counts only if this domain's callback gave it: one from
            # a provider replaced meanwhile is asked again of the new one.
            if verdict is None or verdict[0] is not source:
                return Pending(request, source)
            if verdict[1] == b"200":
                # No certificate admitted it: the event must not name one
                # another domain's store left here (handle reads this cache).
                self._curve_cache.pop(key, None)
                user_id = self._user_id(key, None)
                return ZapReply(request.request_id, b"200", _OK, user_id)
            if verdict[1] == b"400":
                return ZapReply(request.request_id, b"400", UNKNOWN_KEY)
            return ZapReply(request.request_id, b"500", PROVIDER_FAILED)
        cert = source.lookup(key)  # type: ignore[union-attr]
        if cert is None:
            return ZapReply(request.request_id, b"400", UNKNOWN_KEY)
        cached = self._curve_cache.get(key)
        if cached is None or cached[0] is not cert:
            cached = (cert, cert.public_txt.encode("ascii"), cert_properties(cert.metadata))
            self._remember_curve(key, cached)
        return ZapReply(request.request_id, b"200", _OK, self._user_id(key, cached[1]), cached[2])

    def _user_id(self, key: bytes, default: bytes | None) -> bytes:
        """The User-Id of an admitted CURVE client: the hook's answer, else its key in Z85."""
        hook = self.curve_user_id
        if hook is None:
            return default if default is not None else z85_encode(key).encode("ascii")
        return check_user_id(hook(key))

    def grant_tag(
        self, mechanism: bytes, domain: bytes, user_id: bytes, key: bytes = b""
    ) -> bytes | None:
        """What admits ``user_id`` in ``domain`` under this policy now, or None if nothing does.

        The live-revocation guard compares it with the tag recorded when a
        connection was admitted: any difference means the credentials that
        admitted it have changed. Addresses are judged separately. For
        CURVE, ``key`` (the raw client key, when known) spares decoding
        ``user_id``.
        """
        if mechanism == b"NULL":
            return b"n"
        if mechanism == b"PLAIN":
            passwords = self._plain.get(domain)
            if passwords is None:
                passwords = self._plain.get(b"*")
            if passwords is None:
                return None
            version = passwords.version
            cached = self._tag_cache.get(user_id)
            if cached is not None and cached[0] == (passwords, version):
                return cached[1]
            entry = passwords.entry_tag(user_id)
            if entry is None:
                return None
            tag = b"p" + entry.hex().encode()
            if len(self._tag_cache) >= _CACHE_LIMIT:
                self._tag_cache.clear()
            self._tag_cache[user_id] = ((passwords, version), tag)
            return tag
        if mechanism == b"CURVE":
            source = self._curve.get(domain)
            if source is None:
                source = self._curve.get(b"*")
            if source is None:
                return None
            if source is CURVE_ALLOW_ANY:
                return b"a"
            if type(source) is CurveCallback:
                # A provider is not asked again for a live connection: it
                # stands while the same provider decides the domain.
                return b"k%x" % source.serial
            if len(key) != KEY_BYTES:
                try:
                    key = coerce_key(user_id.decode("ascii"))
                except (ZsecError, UnicodeDecodeError):
                    return None
            cert = source.lookup(key)  # type: ignore[union-attr]
            if cert is None:
                return None
            cached = self._tag_cache.get(key)
            if cached is not None and cached[0] is cert:
                return cached[1]
            meta = hashlib.blake2b(cert_properties(cert.metadata), digest_size=8).hexdigest()
            tag = b"c" + meta.encode()
            if len(self._tag_cache) >= _CACHE_LIMIT:
                self._tag_cache.clear()
            self._tag_cache[key] = (cert, tag)
            return tag
        return None

    def _remember_curve(self, key: bytes, entry: tuple[object, bytes, bytes]) -> None:
        if len(self._curve_cache) >= _CACHE_LIMIT:
            self._curve_cache.clear()
        self._curve_cache[key] = entry

    # -- the authenticator's entry point --------------------------------------

    def handle(
        self,
        frames: list[bytes],
        verdict: tuple[CurveCallback, bytes] | None = None,
        t0: float | None = None,
    ) -> list[bytes] | Pending | None:
        """Answer one ROUTER message: ``[routing-id..., b"", request frames...]``.

        Returns the reply frames to send (the same envelope, then the
        reply), None to drop a message that has no envelope, or a
        ``Pending`` when a CURVE provider must decide first (pass its
        ``verdict`` with the same frames to get the reply, and ``t0``, the
        ``perf_counter`` time the request came, for its event). Never raises:
        a malformed request gets a 400 and an internal failure a 500.
        """
        emit = self.emit
        if t0 is None:
            t0 = time.perf_counter() if emit is not None else 0.0
        start = envelope_end(frames)
        if start is None:
            log.warning("dropped a message without a ZAP envelope (%d frames)", len(frames))
            return None
        try:
            request = ZapRequest.from_frames(frames, start)
        except ZapError as exc:
            reply_frames = error_reply(frames, exc.status, str(exc).encode())
            if emit is None:
                log.warning("malformed ZAP request: %s", exc)
            elif reply_frames is not None:
                with contextlib.suppress(Exception):
                    emit(t0, None, ZapReply(*reply_frames[start + 1 : start + 6]), None, frames)
            return reply_frames
        try:
            reply = self.decide(request, verdict)
            if isinstance(reply, Pending):
                return reply
        except BaseException as exc:  # noqa: BLE001 - the handler must answer whatever happens
            # BaseException too: the curve_user_id hook is application code,
            # and a sys.exit() in it must not end the ZAP thread.
            log.error(
                "ZAP decision failed (%s: %s); answered 500 for mechanism=%s address=%s",
                type(exc).__name__,
                exc,
                _show(request.mechanism),
                _show(request.address),
            )
            reply = ZapReply(request.request_id, b"500", b"internal error")
        if reply.status_code == b"200" and self.grants is not None:
            # Never raises: a grant it cannot make is void, and the guard
            # refuses a void grant (fails closed).
            reply = self.grants.stamp(self, request, reply)
        try:
            if self.limiter is not None and reply.status_text in CLIENT_FAULTS:
                who = request.username if request.mechanism == b"PLAIN" else request.client_key
                self.limiter.failed(limit_key(request.address), who)
            if emit is not None:
                cert = None
                if reply.status_code == b"200" and request.mechanism == b"CURVE":
                    entry = self._curve_cache.get(request.credentials[0])
                    cert = None if entry is None or entry[0] is CURVE_ALLOW_ANY else entry[0]
                emit(t0, request, reply, cert)
            elif self.verbose:
                _trace(request, reply)
        except Exception:
            with contextlib.suppress(Exception):
                log.exception("ZAP bookkeeping failed after the decision")
        if start == 2:
            return [
                frames[0],
                b"",
                ZAP_VERSION,
                reply.request_id,
                reply.status_code,
                reply.status_text,
                reply.user_id,
                reply.metadata,
            ]
        return [*frames[:start], *reply.frames()]


def envelope_end(frames: list[bytes]) -> int | None:
    """Index of the first frame after the envelope (routing ids + empty delimiter), or None."""
    # One routing id when the request comes straight from libzmq; more when
    # it crossed a proxy (RFC 27: a handler echoes the whole envelope).
    if len(frames) > 2 and frames[1] == b"":
        return 2
    try:
        return frames.index(b"", 1) + 1
    except ValueError:
        return None


def error_reply(frames: list[bytes], status: bytes, text: bytes) -> list[bytes] | None:
    """A failure reply to whatever request ``frames`` holds, or None if it has no envelope."""
    start = envelope_end(frames)
    if start is None:
        return None
    request_id = b""
    if len(frames) > start + 1 and len(frames[start + 1]) <= MAX_FIELD:
        request_id = frames[start + 1]
    return [*frames[:start], ZAP_VERSION, request_id, status, text, b"", b""]


def _trace(request: ZapRequest, reply: ZapReply) -> None:
    """Log a decision in CZMQ's spirit, without passwords or secret keys."""
    mechanism = request.mechanism.decode("ascii", "replace")
    if reply.status_text == BANNED:
        mechanism = "banned"
    elif reply.status_text == DENIED:
        mechanism = "deny list"
    elif reply.status_text == NOT_ALLOWED:
        mechanism = "allow list"
    verdict = "ALLOWED" if reply.allowed else "DENIED"
    detail = f"domain={_show(request.domain)} address={_show(request.address)}"
    if request.mechanism == b"PLAIN":
        detail += f" username={_show(request.credentials[0])}"
    elif request.mechanism == b"CURVE":
        detail += f" client_key={z85_encode(request.credentials[0])}"
    reason = "" if reply.allowed else f": {reply.status_text.decode('utf-8', 'replace')}"
    log.info("%s (%s) %s%s", verdict, mechanism, detail, reason)


__all__ = [
    "CURVE_ALLOW_ANY",
    "AddressError",
    "CurveCallback",
    "Pending",
    "Policy",
    "ZapError",
    "ZapReply",
    "ZapRequest",
    "cert_properties",
    "check_user_id",
    "decode_properties",
    "encode_properties",
    "parse_address_rule",
]
