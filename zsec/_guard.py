"""Live revocation: no message from a peer that is no longer trusted, and its connection closed.

ZAP runs once per connection, so on its own a revocation only stops new
handshakes. Three parts make it reach established sessions:

* **Grants.** The policy stamps every admission (a ZAP 200) with a
  ``X-Zsec-Grant`` property: a unique number and a tag of what admitted the
  peer (the certificate, the password entry). libzmq gives the
  authenticator's properties precedence over the peer's, so a peer cannot
  forge one.
* **The message guard** (``GuardedSocket``). Each received message is
  checked against the policy in force: its grant's verdict is cached until
  the next trust change, so the check is one property read and one dict
  lookup. A message that fails is dropped and its connection cut.
* **The cutter.** Every connection that has spoken is known by its file
  descriptor (libzmq's ``SRCFD`` property on received frames; ``ACCEPTED``
  and ``DISCONNECTED`` monitor events keep the table current). On a trust
  change, one thread per ``Auth`` re-judges them and cuts those that fail.
  Cutting means: duplicate the descriptor, check that the duplicate still
  has the recorded local and peer addresses (descriptor numbers are reused
  quickly), ``shutdown(SHUT_RDWR)`` it and close the duplicate only. libzmq
  then drops exactly that connection. libzmq's own descriptor is never
  closed: libzmq aborts the process on a later EBADF.

Connections that never sent anything cannot be tied to an identity. When an
identity loses its trust, such connections from an IP address it was
admitted from are cut too; innocent silent peers behind that address
reconnect once and are admitted again.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import logging
import pickle
import socket as socketlib
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import zmq

from . import _zap
from ._errors import SocketConfigError, ZsecTypeError
from ._monitor import subscribe as monitor_subscribe
from ._zap import Policy, ZapReply, ZapRequest, limit_key

if TYPE_CHECKING:
    from ._auth import Auth
    from ._index import StoreChange
    from ._store import CertStore
    from ._throttle import FailureLimiter

log = logging.getLogger("zsec.guard")

_SRCFD = zmq.SRCFD
#: The ZAP metadata property that carries a grant.
GRANT_PROPERTY = "X-Zsec-Grant"
_GRANT_PREFIX = bytes((len(GRANT_PROPERTY),)) + GRANT_PROPERTY.encode("ascii")
# A grant no policy honours: its tag is empty.
_VOID_GRANT = b"0."
#: What a guarded REP socket answers to a request it will not deliver.
REVOKED_REPLY = b"zsec: access revoked"
#: How often password files are looked at for changes, in seconds.
PASSWORD_POLL_SECONDS = 0.05
_CACHE_LIMIT = 100_000
_ADDRESSES_PER_IDENTITY = 64
# Stands for every address, once an identity came from more than the above:
# its silent connections could then be anywhere.
_ANYWHERE = "*"
_RECEIVERS = {
    zmq.ROUTER: "ROUTER",
    zmq.DEALER: "DEALER",
    zmq.PULL: "PULL",
    zmq.PAIR: "PAIR",
    zmq.SUB: "SUB",
    zmq.XSUB: "XSUB",
    zmq.XPUB: "XPUB",
    zmq.REP: "REP",
}
_MECHANISMS = {b"n": "NULL", b"p": "PLAIN", b"a": "CURVE", b"c": "CURVE", b"k": "CURVE"}

Endpoints = tuple[bytes, bytes]  # raw (local, peer) socket addresses of a connection


@dataclass(frozen=True)
class Cut:
    """One connection the guard closed: who, from where, and why.

    ``time`` is ``time.time()`` when it was cut; ``identity`` the User-Id
    it was admitted with (CURVE: the Z85 public key; PLAIN: the user name;
    NULL: ``anonymous``; ``?`` for a connection that never spoke);
    ``address`` the peer's ``ip:port``. Never holds a secret.
    """

    time: float
    identity: str
    mechanism: str
    domain: str
    address: str
    reason: str


# -- grants: recorded at decision time ----------------------------------------------


class Grants:
    """Stamps each admission with a grant; remembers which IPs each identity came from.

    Used by ``Policy.handle`` in the authenticator thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = itertools.count(1)
        # (domain, tag, user id) -> IPs admitted with it: for connections
        # that never spoke, the only link between them and an identity.
        self._seen: dict[tuple[bytes, bytes, bytes], set[bytes]] = {}
        #: (password set, its version) just before the last PLAIN check; the
        #: authenticator thread alone writes and reads it.
        self.checking: tuple[Any, int] | None = None

    def stamp(self, policy: Policy, request: ZapRequest, reply: ZapReply) -> ZapReply:
        """Return ``reply`` with a grant property first in its metadata.

        Always sets the property, to a void grant when nothing admits the
        peer (the guard then refuses the connection): libzmq keeps the
        first property of a name, from the ZAP reply before the peer's own
        handshake metadata, so an unset grant or one after certificate
        metadata could be chosen by the peer.
        """
        try:
            value = self._grant(policy, request, reply)
        except Exception as exc:  # noqa: BLE001 - void: the guard refuses it (fails closed)
            with contextlib.suppress(Exception):
                log.error(
                    "could not record the grant for the live-revocation guard (%s)",
                    type(exc).__name__,
                )
            value = None
        if value is None:
            value = _VOID_GRANT
        prop = _GRANT_PREFIX + len(value).to_bytes(4, "big") + value
        return ZapReply(
            reply.request_id,
            reply.status_code,
            reply.status_text,
            reply.user_id,
            prop + reply.metadata,
        )

    def _grant(self, policy: Policy, request: ZapRequest, reply: ZapReply) -> bytes | None:
        tag = policy.grant_tag(request.mechanism, request.domain, reply.user_id, request.client_key)
        if tag is None:
            return None
        if request.mechanism == b"PLAIN":
            checking, self.checking = self.checking, None
            if checking is None or checking[0].version != checking[1]:
                # The entries changed around the check: the tag might name an
                # entry other than the one the password matched. Void,
                # the guard refuses the connection; the client redials.
                return None
        # CURVE grants name the client key too: the User-Id may be anything
        # (Auth.curve_user_id), and the guard must look the key up.
        suffix = tag + b"." + request.client_key.hex().encode() if request.client_key else tag
        value = b"%x." % next(self._next) + suffix
        key = (request.domain, suffix, reply.user_id)
        addresses = self._seen.get(key)
        if addresses is None or request.address not in addresses:
            with self._lock:
                addresses = self._seen.get(key)
                if addresses is None:
                    # Bounded like the policy's caches: hostile traffic with
                    # ever-new keys (CURVE_ALLOW_ANY) must not grow memory.
                    if len(self._seen) >= _zap._CACHE_LIMIT:
                        self._seen.pop(next(iter(self._seen)))
                    addresses = self._seen[key] = set()
                if len(addresses) < _ADDRESSES_PER_IDENTITY:
                    addresses.add(request.address)
                else:
                    addresses.add(_ANYWHERE.encode())
        return value

    def revoked_addresses(self, policy: Policy) -> dict[bytes, set[str]]:
        """Forget the identities ``policy`` no longer admits; return their IPs per domain."""
        with self._lock:
            seen = list(self._seen.items())
        out: dict[bytes, set[str]] = {}
        for key, addresses in seen:
            domain, suffix, user_id = key
            tag, client_key = _split(suffix)
            if policy.grant_tag(_mechanism(tag), domain, user_id, client_key) != tag:
                ips = {a.decode("ascii", "replace") for a in addresses}
                out.setdefault(domain, set()).update(ips)
                with self._lock:
                    self._seen.pop(key, None)
        return out


def _mechanism(tag: bytes) -> bytes:
    return _MECHANISMS.get(tag[:1], "?").encode()


def _split(suffix: bytes) -> tuple[bytes, bytes]:
    """A grant's tag, and the raw CURVE client key it names (b"" if none)."""
    tag, _, hexkey = suffix.partition(b".")
    try:
        return tag, bytes.fromhex(hexkey.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return tag, b""


def judge(policy: Policy, domain: bytes, grant: str, user_id: str, address: str) -> str:
    """Why a connection admitted with ``grant`` is no longer trusted by ``policy``; "" if it is."""
    raw_address = address.encode("utf-8", "replace")
    limiter = policy.limiter
    if limiter is not None and limiter.is_banned(limit_key(raw_address)):
        return "address banned"
    refused = policy.address_verdict(raw_address)
    if refused:
        return refused.decode()
    tag, client_key = _split(grant.partition(".")[2].encode("ascii", "replace"))
    mechanism = _mechanism(tag)
    raw_user = user_id.encode("utf-8", "surrogateescape")
    now = policy.grant_tag(mechanism, domain, raw_user, client_key)
    if now == tag:
        return ""
    if mechanism == b"PLAIN":
        return "user removed" if now is None else "password changed"
    if mechanism == b"CURVE":
        if now is None:
            return "key no longer trusted"
        if now[:1] == tag[:1] == b"c":
            return "certificate changed"
        return "CURVE configuration changed"
    return "not admitted by this authenticator"


# -- cutting --------------------------------------------------------------------------


# The descriptor calls go through libc with the GIL held (ctypes.PyDLL): none
# of them blocks, and releasing the GIL around each would let every other
# Python thread delay the cutting by a switch interval (5 ms) per call.
_libc = ctypes.PyDLL(None, use_errno=True)
_dup = _libc.dup
_dup.argtypes, _dup.restype = (ctypes.c_int,), ctypes.c_int
_close = _libc.close
_close.argtypes, _close.restype = (ctypes.c_int,), ctypes.c_int
_shutdown = _libc.shutdown
_shutdown.argtypes, _shutdown.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
_NAME_ARGS = (ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32))
_getsockname = _libc.getsockname
_getsockname.argtypes, _getsockname.restype = _NAME_ARGS, ctypes.c_int
_getpeername = _libc.getpeername
_getpeername.argtypes, _getpeername.restype = _NAME_ARGS, ctypes.c_int
_BSD_SOCKADDR = sys.platform == "darwin" or "bsd" in sys.platform  # sa_len before sa_family


def endpoints(fd: int) -> Endpoints | None:
    """The raw (local, peer) socket addresses of the connection on ``fd``, or None."""
    buffer = ctypes.create_string_buffer(128)
    size = ctypes.c_uint32(128)
    if _getsockname(fd, buffer, ctypes.byref(size)) != 0:
        return None
    local = buffer.raw[: size.value]
    size.value = 128
    if _getpeername(fd, buffer, ctypes.byref(size)) != 0:
        return None
    return local, buffer.raw[: size.value]


def shut_down(fd: int, expected: Endpoints) -> bool:
    """Shut down the connection on ``fd`` if it still has ``expected`` addresses; True if done.

    Works on a duplicate and closes only the duplicate: closing libzmq's
    descriptor would make libzmq abort on its next use of it.
    """
    dup = _dup(fd)
    if dup < 0:
        return False
    try:
        if endpoints(dup) != expected:
            return False  # the number now belongs to another connection, or to none
        return bool(_shutdown(dup, socketlib.SHUT_RDWR) == 0)
    finally:
        _close(dup)


def ip_port(raw: bytes) -> tuple[str, int]:
    """The IP text and port of a raw IPv4/IPv6 socket address (("?", 0) for others)."""
    family = raw[1] if _BSD_SOCKADDR else int.from_bytes(raw[:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socketlib.AF_INET and len(raw) >= 8:
        return socketlib.inet_ntop(socketlib.AF_INET, raw[4:8]), port
    if family == socketlib.AF_INET6 and len(raw) >= 24:
        return socketlib.inet_ntop(socketlib.AF_INET6, raw[8:24]), port
    return "?", 0


def _show(raw: bytes) -> str:
    host, port = ip_port(raw)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Conn(NamedTuple):
    grant: str
    identity: str
    address: str  # the Peer-Address property: the IP
    ends: Endpoints


class _Watch:
    """The connections of one guarded socket, by file descriptor."""

    def __init__(self, warden: Warden, socket: zmq.Socket[Any], domain: bytes, on_cut: Any):
        self.warden = warden
        self.socket = socket
        self.domain = domain
        self.domain_text = domain.decode("utf-8", "replace")
        self.on_cut: Callable[[Cut], None] | None = on_cut
        self.lock = threading.Lock()
        self.conns: dict[int, _Conn] = {}  # fd -> a connection that has spoken
        self.accepted: dict[int, Endpoints] = {}  # fd -> every connection accepted
        self.done: dict[int, Endpoints] = {}  # fd -> cut already (log each cut once)
        self.unsubscribe: Callable[[], None] | None = None

    def heard(self, event: int, value: int) -> None:
        """Monitor events (monitor thread): keep the descriptor tables current."""
        if event == zmq.EVENT_ACCEPTED:
            ends = endpoints(value)
            if ends is not None:
                with self.lock:
                    self.accepted[value] = ends
        elif event == zmq.EVENT_DISCONNECTED:
            self.warden.trusted.discard(value)
            with self.lock:
                self.accepted.pop(value, None)
                self.conns.pop(value, None)
                self.done.pop(value, None)

    def admit(self, frame: zmq.Frame) -> bool:
        """Judge a message from a connection not known to be trusted; learn or cut it."""
        warden = self.warden
        trusted = warden.trusted  # before judging: a change meanwhile discards this set
        fd = _get(frame, zmq.SRCFD)
        grant = _get(frame, GRANT_PROPERTY)
        identity = _get(frame, "User-Id")
        address = _get(frame, "Peer-Address")
        policy = warden.policy()
        if isinstance(grant, str) and isinstance(identity, str) and isinstance(address, str):
            reason = judge(policy, self.domain, grant, identity, address)
        else:
            reason = "not admitted by this authenticator"
        if not isinstance(fd, int):
            return not reason
        if reason:
            with self.lock:
                if fd in self.done:
                    return False  # its cut is under way; more queued messages follow
            ends = self._ends_of(fd, grant, address)
            if ends is not None:
                mechanism = _MECHANISMS.get((grant or "").partition(".")[2][:1].encode(), "?")
                who = _who(grant, identity)
                warden.cut(self, fd, ends, str(identity or "?"), mechanism, reason, who=who)
            return False
        ends = endpoints(fd)
        if ends is not None and isinstance(grant, str) and _from(ends, address):
            with self.lock:
                self.conns[fd] = _Conn(grant, str(identity), str(address), ends)
        # Even when the connection is gone already (its messages are still
        # queued): a later connection reusing the number was admitted under
        # the policy in force, or a trust change has replaced this set.
        if len(trusted) >= _CACHE_LIMIT:
            trusted.clear()
        trusted.add(fd)
        return True

    def _ends_of(self, fd: int, grant: Any, address: Any) -> Endpoints | None:
        """The addresses of the connection a message on ``fd`` came from; None if unsure.

        The message may have been queued by a connection that has closed
        since, its descriptor number now another connection's: cutting that
        one would hit a bystander. So the connection must be the one that
        spoke with this grant, or (never heard) be from the message's IP.
        """
        with self.lock:
            conn = self.conns.get(fd)
            ends = self.accepted.get(fd)
        if conn is not None:
            return conn.ends if conn.grant == grant else None
        if ends is None:
            ends = endpoints(fd)
        return ends if ends is not None and _from(ends, address) else None


def _who(grant: Any, identity: Any) -> bytes:
    """Whose failures a cut connection's refused reconnect will be: PLAIN user, CURVE key."""
    if not isinstance(grant, str) or not isinstance(identity, str):
        return b""
    tag, key = _split(grant.partition(".")[2].encode("ascii", "replace"))
    if tag[:1] == b"p":
        return identity.encode("utf-8", "surrogateescape")
    return key


def _from(ends: Endpoints, address: Any) -> bool:
    """True if the peer of ``ends`` has the IP of a ``Peer-Address`` property.

    Also True for a peer that has no IP (ipc): there is nothing to compare.
    """
    host = ip_port(ends[1])[0]
    return host == "?" or (isinstance(address, str) and host == address.partition("%")[0])


def _get(frame: zmq.Frame, name: Any) -> Any:
    try:
        return frame.get(name)
    except zmq.ZMQError:
        return None


class Warden:
    """One per ``Auth``: follows trust changes and cuts what they revoke on every guarded socket."""

    def __init__(self, auth: Auth) -> None:
        self._auth = auth
        # Descriptors of connections judged trusted since the last trust change;
        # replaced (not cleared) on a change, so a judgement made under the old
        # policy can only land in the discarded set. A descriptor number reused
        # by a new connection stays in it only if no trust change came since:
        # the new connection was then admitted under the policy in force.
        self.trusted: set[int] = set()
        self._watches: tuple[_Watch, ...] = ()
        self._listeners: tuple[Callable[[Cut], None], ...] = ()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stores: dict[int, tuple[CertStore, Callable[[], None]]] = {}
        self._limiter: tuple[FailureLimiter, Callable[[], None]] | None = None
        self._versions: dict[int, int] = {}
        # Password sets told to call changed() as soon as their entries change:
        # PasswordTable.replace is a configuration call, in force when it returns.
        self._plains: dict[int, tuple[object, Callable[[], None]]] = {}
        self._watch_passwords(auth.policy)
        self._thread = threading.Thread(target=self._run, name="zsec-guard", daemon=True)
        self._thread.start()

    def policy(self) -> Policy:
        return self._auth.policy

    # -- hearing about trust changes (any thread) ---------------------------------

    def changed(self, *_: object) -> None:
        """Trust may have changed: judge every message afresh and re-judge every connection.

        In force for the message guard when this returns; connections are
        cut by the guard thread moments later.
        """
        if self._auth._stopped:
            # Stopping closes the stores the authenticator opened, which
            # empties them; that is not a revocation of anyone.
            return
        self.trusted = set()
        self._wake.set()
        if _ and isinstance(_[0], Policy):
            self._watch_passwords(_[0])

    def _watch_passwords(self, policy: Policy) -> None:
        """Hear at once of changes to the password sets ``policy`` uses (any thread)."""
        with self._lock:
            sets = {id(p): p for p in policy.plain.values() if hasattr(p, "on_change")}
            for key in [k for k in self._plains if k not in sets]:
                self._plains.pop(key)[1]()
            for key, passwords in sets.items():
                if key not in self._plains:
                    self._plains[key] = (passwords, passwords.on_change(self.changed))

    def _store_changed(self, change: StoreChange) -> None:
        if change.removed or change.updated:
            self.changed()

    # -- guarding ------------------------------------------------------------------

    def guard(self, socket: Any, on_cut: Callable[[Cut], None] | None) -> GuardedSocket:
        if not isinstance(socket, zmq.Socket):
            raise ZsecTypeError(f"guard() needs a zmq.Socket, not {type(socket).__name__}")
        if on_cut is not None and not callable(on_cut):
            raise ZsecTypeError("on_cut must be callable")
        kind = socket.type
        if kind not in _RECEIVERS:
            hint = " (use XPUB with XPUB_VERBOSE)" if kind == zmq.PUB else ""
            raise SocketConfigError(
                f"guard() needs a socket that receives: one of "
                f"{', '.join(sorted(_RECEIVERS.values()))}{hint}"
            )
        if socket.context.underlying != self._auth._ctx.underlying:
            raise SocketConfigError(
                "guard() needs a socket of the context this authenticator serves"
            )
        domain = socket.getsockopt(zmq.ZAP_DOMAIN)
        if not domain:
            raise SocketConfigError(
                "guard() needs a server socket with a ZAP domain: set it up with "
                "zsec.curve_server, plain_server or null_server first"
            )
        assert isinstance(domain, bytes)
        watch = _Watch(self, socket, domain, on_cut)
        watch.unsubscribe = monitor_subscribe(socket, watch.heard)
        with self._lock:
            self._watches = (*self._watches, watch)
        cls = AsyncGuardedSocket if _is_async(socket) else GuardedSocket
        return cls(watch)

    def release(self, watch: _Watch) -> None:
        with self._lock:
            self._watches = tuple(w for w in self._watches if w is not watch)
        unsubscribe, watch.unsubscribe = watch.unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def subscribe(self, listener: Callable[[Cut], None]) -> Callable[[], None]:
        if not callable(listener):
            raise ZsecTypeError("a cut listener must be callable")
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    # -- the guard thread ----------------------------------------------------------

    def _run(self) -> None:
        while self._auth.running:
            try:
                self._wake.wait(PASSWORD_POLL_SECONDS)
                policy = self._auth.policy
                self._follow(policy)
                if self._wake.is_set() and not self._auth._stopped:
                    self._wake.clear()
                    self.sweep(self._auth.policy)
            except Exception:  # the guard must go on
                with contextlib.suppress(Exception):
                    log.exception("guard thread: unexpected error, continuing")
                time.sleep(PASSWORD_POLL_SECONDS)
        for _, unsubscribe in self._stores.values():
            unsubscribe()
        with self._lock:
            plains, self._plains = list(self._plains.values()), {}
        for _, unsubscribe in plains:
            unsubscribe()
        if self._limiter is not None:
            self._limiter[1]()

    def _follow(self, policy: Policy) -> None:
        """Listen to the stores and limiter ``policy`` uses; notice password changes."""
        from ._store import CertStore

        stores = {id(s): s for s in policy.curve.values() if isinstance(s, CertStore)}
        for key in list(self._stores):
            if key not in stores:
                self._stores.pop(key)[1]()
        for key, store in stores.items():
            if key not in self._stores:
                self._stores[key] = (store, store.subscribe(self._store_changed))
                self.changed()  # changes before the subscription must not be missed
        limiter = policy.limiter
        if self._limiter is None or self._limiter[0] is not limiter:
            if self._limiter is not None:
                self._limiter[1]()
            self._limiter = None if limiter is None else (limiter, limiter.on_ban(self.changed))
        versions = {}
        for passwords in policy.plain.values():
            reload = getattr(passwords, "reload", None)
            if reload is not None:
                reload()
            versions[id(passwords)] = getattr(passwords, "version", 0)
        if versions != self._versions:
            self._versions = versions
            self.changed()

    def sweep(self, policy: Policy) -> None:
        """Re-judge every known connection of every guarded socket; cut those that fail."""
        grants = policy.grants
        revoked = {} if grants is None else grants.revoked_addresses(policy)
        # (tag, identity, address) -> reason ("" when trusted): connections
        # admitted alike are judged once.
        verdicts: dict[tuple[str, str, str], str] = {}
        for watch in self._watches:
            with watch.lock:
                conns = list(watch.conns.items())
                silent = [(fd, e) for fd, e in watch.accepted.items() if fd not in watch.conns]
            for fd, conn in conns:
                alike = (conn.grant.partition(".")[2], conn.identity, conn.address)
                reason = verdicts.get(alike)
                if reason is None:
                    reason = judge(policy, watch.domain, conn.grant, conn.identity, conn.address)
                    verdicts[alike] = reason
                if reason:
                    mechanism = _MECHANISMS.get(conn.grant.partition(".")[2][:1].encode(), "?")
                    who = _who(conn.grant, conn.identity)
                    self.cut(watch, fd, conn.ends, conn.identity, mechanism, reason, who=who)
            suspects = revoked.get(watch.domain, set())
            # Silent connections may never have authenticated: anyone can open
            # them by the thousand. Each cut excuses a failure of its address,
            # so at most max_failures - 1 of them per address and sweep do: a
            # revoked key's silent connections cannot alone ban their address,
            # and an attacker's cannot buy more than one allowance of guesses.
            excuses: dict[str, int] = {}
            for fd, ends in silent:
                ip = ip_port(ends[1])[0]
                raw = ip.encode()
                reason = ""
                limiter = policy.limiter
                if limiter is not None and limiter.is_banned(limit_key(raw)):
                    reason = "address banned"
                elif refused := policy.address_verdict(raw):
                    reason = refused.decode()
                elif ip in suspects or _ANYWHERE in suspects:
                    reason = "silent connection from an address a revoked identity used"
                if reason:
                    allowance = 0 if limiter is None else limiter.max_failures - 1
                    excuse = excuses.get(ip, 0) < allowance
                    if self.cut(watch, fd, ends, "?", "?", reason, excuse=excuse) and excuse:
                        excuses[ip] = excuses.get(ip, 0) + 1

    def cut(
        self,
        watch: _Watch,
        fd: int,
        ends: Endpoints,
        identity: str,
        mechanism: str,
        reason: str,
        *,
        excuse: bool = True,
        who: bytes = b"",
    ) -> bool:
        """Close one connection (once), excuse its refused reconnect, log it, tell listeners.

        True if this call cut it.
        """
        with watch.lock:
            if watch.done.get(fd) == ends:
                return False
            if not shut_down(fd, ends):
                # Gone already, or the number was reused: forget the stale entry.
                if watch.accepted.get(fd) == ends:
                    del watch.accepted[fd]
                if (conn := watch.conns.get(fd)) is not None and conn.ends == ends:
                    del watch.conns[fd]
                return False
            watch.done[fd] = ends
            watch.conns.pop(fd, None)
            watch.accepted.pop(fd, None)
        peer = ends[1]
        limiter = self._auth.policy.limiter
        if limiter is not None and excuse and reason != "address banned":
            with contextlib.suppress(Exception):
                limiter.excuse(limit_key(ip_port(peer)[0].encode()), who)
        record = Cut(time.time(), identity, mechanism, watch.domain_text, _show(peer), reason)
        log.warning(
            "cut %s connection of %s from %s in domain %s: %s",
            record.mechanism,
            record.identity,
            record.address,
            record.domain,
            record.reason,
        )
        for listener in (watch.on_cut, *self._listeners):
            if listener is None:
                continue
            try:
                listener(record)
            except Exception:  # a listener must not stop the cutting
                with contextlib.suppress(Exception):
                    log.exception("cut listener failed")
        return True


def _is_async(socket: zmq.Socket[Any]) -> bool:
    import zmq.asyncio

    return isinstance(socket, zmq.asyncio.Socket)


def warden_of(auth: Auth) -> Warden:
    """The warden of ``auth``, started on first use."""
    with auth._lock:
        auth._check_running()
        if auth._warden is None:
            warden = Warden(auth)
            auth._warden = warden
            auth._policy_listeners = (*auth._policy_listeners, warden.changed)
        return auth._warden  # type: ignore[no-any-return]


# -- the guarded sockets -----------------------------------------------------------


class GuardedSocket:
    """A server socket that delivers only messages from peers that are still trusted.

    Made by ``Auth.guard(socket)``; use it in place of the socket. ``recv``,
    ``recv_multipart`` and ``poll`` deliver or report only messages whose
    peer the authenticator's current policy still admits (CURVE key still
    trusted, PLAIN user still there with the same password, address not
    denied or banned). Any other message is dropped and its connection cut.
    Everything else (``send*``, ``bind``, options) is the socket's own.

    ``recv`` returns the frames of admitted messages one at a time. A REP
    socket cannot drop a request: it answers ``REVOKED_REPLY`` instead.
    A blocking receive that drops a message waits again with the socket's
    full receive timeout. With a ``zmq.Poller`` on ``.socket``, receive with
    ``zmq.NOBLOCK`` and expect ``zmq.Again`` when all that was there was dropped.
    """

    def __init__(self, watch: _Watch) -> None:
        self._watch = watch
        self._socket = watch.socket
        self._frames: deque[zmq.Frame] = deque()
        self._rep = watch.socket.type == zmq.REP
        #: How many messages this guard has dropped.
        object.__setattr__(self, "dropped", 0)

    @property
    def socket(self) -> Any:
        """The guarded socket itself."""
        return self._socket

    def __getattr__(self, name: str) -> Any:
        if name.startswith("recv"):
            # Passed through, a receive variant this class does not define
            # (recv_into, a future pyzmq's) would deliver unguarded messages.
            raise AttributeError(
                f"{type(self).__name__} has no {name}: receive with recv or recv_multipart"
            )
        return getattr(self._socket, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Options (guarded.rcvtimeo = 1000) belong to the socket, as reading
        # them does: kept on the wrapper, they would be silently ignored.
        if name.startswith("_") or name in self.__dict__ or hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            setattr(self._socket, name, value)

    def __repr__(self) -> str:
        return f"<zsec.GuardedSocket {self._socket!r}>"

    def _admitted(self, frame: zmq.Frame) -> bool:
        """The slow path: judge the connection ``frame`` came from."""
        if self._watch.admit(frame):
            return True
        self.dropped += 1
        if self._rep:
            with contextlib.suppress(zmq.ZMQError):
                self._socket.send(REVOKED_REPLY, zmq.NOBLOCK)
        return False

    def _message(self, flags: int) -> list[zmq.Frame]:
        recv = self._socket.recv
        warden = self._watch.warden
        while True:
            first = frame = recv(flags, copy=False)
            parts = [frame]
            while frame.more:
                frame = recv(copy=False)
                parts.append(frame)
            # Every frame of a message carries its connection's properties: the
            # first is enough. One int property and one set lookup per message.
            try:
                if first.get(_SRCFD) in warden.trusted:
                    return parts
            except zmq.ZMQError:
                pass
            if self._admitted(first):
                return parts

    def recv_multipart(self, flags: int = 0, copy: bool = True, track: bool = False) -> Any:
        """Receive the next admitted message (see the class docstring)."""
        if self._frames:
            parts = list(self._frames)
            self._frames.clear()
        else:
            parts = self._message(flags)
        return [f.bytes for f in parts] if copy else parts

    def recv(self, flags: int = 0, copy: bool = True, track: bool = False) -> Any:
        """Receive the next frame of an admitted message."""
        if not self._frames:
            self._frames.extend(self._message(flags))
        frame = self._frames.popleft()
        return frame.bytes if copy else frame

    def recv_string(self, flags: int = 0, encoding: str = "utf-8") -> str:
        """Receive the next frame of an admitted message as text."""
        return str(self.recv(flags).decode(encoding))

    recv_unicode = recv_string

    def recv_json(self, flags: int = 0, **kwargs: Any) -> Any:
        """Receive the next frame of an admitted message as JSON."""
        return json.loads(self.recv(flags), **kwargs)

    def recv_pyobj(self, flags: int = 0) -> Any:
        """Receive the next frame of an admitted message as a pickle (trusted peers only)."""
        return pickle.loads(self.recv(flags))  # noqa: S301 - what recv_pyobj means

    def recv_serialized(
        self, deserialize: Callable[[Any], Any], flags: int = 0, copy: bool = True
    ) -> Any:
        """Receive the next admitted message through ``deserialize``."""
        return deserialize(self.recv_multipart(flags, copy=copy))

    def poll(self, timeout: int | None = None, flags: int = zmq.POLLIN) -> int:
        """Like ``Socket.poll``, reporting POLLIN only for a message a receive will deliver."""
        if self._frames:
            return zmq.POLLIN
        deadline = _deadline(timeout)
        while True:
            remaining = _remaining(deadline)
            events = int(self._socket.poll(remaining, flags))
            if events & zmq.POLLIN:
                try:
                    self._frames.extend(self._message(zmq.NOBLOCK))
                    return events
                except zmq.Again:
                    events &= ~zmq.POLLIN
            if events or (deadline is not None and time.monotonic() >= deadline):
                return events

    def close(self, linger: int | None = None) -> None:
        """Stop guarding and close the socket."""
        self.unguard()
        self._socket.close(linger)

    def unguard(self) -> None:
        """Stop guarding (idempotent); the socket stays open and unguarded."""
        self._watch.warden.release(self._watch)

    def __enter__(self) -> GuardedSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGuardedSocket(GuardedSocket):
    """``GuardedSocket`` for a ``zmq.asyncio`` socket: receive and poll are awaitables."""

    async def _message_async(self, flags: int) -> list[zmq.Frame]:
        # One recv_multipart: pyzmq's async receives of single frames from
        # concurrent tasks interleave, which would mix two messages (one
        # peer's routing id with another's body).
        recv_multipart: Any = self._socket.recv_multipart
        warden = self._watch.warden
        while True:
            parts: list[zmq.Frame] = await recv_multipart(flags, copy=False)
            try:
                if parts[0].get(_SRCFD) in warden.trusted:
                    return parts
            except zmq.ZMQError:
                pass
            if self._admitted(parts[0]):
                return parts

    async def recv_multipart(self, flags: int = 0, copy: bool = True, track: bool = False) -> Any:
        """Receive the next admitted message."""
        if self._frames:
            parts = list(self._frames)
            self._frames.clear()
        else:
            parts = await self._message_async(flags)
        return [f.bytes for f in parts] if copy else parts

    async def recv(self, flags: int = 0, copy: bool = True, track: bool = False) -> Any:
        """Receive the next frame of an admitted message."""
        if not self._frames:
            self._frames.extend(await self._message_async(flags))
        frame = self._frames.popleft()
        return frame.bytes if copy else frame

    async def recv_string(  # type: ignore[override]
        self, flags: int = 0, encoding: str = "utf-8"
    ) -> str:
        """Receive the next frame of an admitted message as text."""
        return str((await self.recv(flags)).decode(encoding))

    recv_unicode = recv_string  # type: ignore[assignment]

    async def recv_json(self, flags: int = 0, **kwargs: Any) -> Any:
        """Receive the next frame of an admitted message as JSON."""
        return json.loads(await self.recv(flags), **kwargs)

    async def recv_pyobj(self, flags: int = 0) -> Any:
        """Receive the next frame of an admitted message as a pickle (trusted peers only)."""
        return pickle.loads(await self.recv(flags))  # noqa: S301 - as above

    async def recv_serialized(
        self, deserialize: Callable[[Any], Any], flags: int = 0, copy: bool = True
    ) -> Any:
        """Receive the next admitted message through ``deserialize``."""
        return deserialize(await self.recv_multipart(flags, copy=copy))

    async def poll(  # type: ignore[override]
        self, timeout: int | None = None, flags: int = zmq.POLLIN
    ) -> int:
        """Like ``Socket.poll``, reporting POLLIN only for a message a receive will deliver."""
        if self._frames:
            return zmq.POLLIN
        deadline = _deadline(timeout)
        while True:
            remaining = _remaining(deadline)
            poll: Any = self._socket.poll
            events = int(await poll(remaining, flags))
            if events & zmq.POLLIN:
                try:
                    self._frames.extend(await self._message_async(zmq.NOBLOCK))
                    return events
                except zmq.Again:
                    events &= ~zmq.POLLIN
            if events or (deadline is not None and time.monotonic() >= deadline):
                return events


def _deadline(timeout: int | None) -> float | None:
    return None if timeout is None or timeout < 0 else time.monotonic() + timeout / 1000


def _remaining(deadline: float | None) -> int | None:
    return None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
