"""Auth: the authenticator thread that answers ZAP requests for one zmq context.

The thread is a dumb pump: receive, ``Policy.handle``, send. Configuration
methods build a new immutable ``Policy`` and swap it in with one assignment,
so each is in force for the next request as soon as it returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from ._errors import AuthError, ZsecTypeError
from ._guard import Grants
from ._passwords import PasswordFile
from ._source import TrustSource
from ._store import CertStore
from ._throttle import FailureLimiter
from ._zap import (
    CURVE_ALLOW_ANY,
    Policy,
    _AllowAny,
    check_domain,
    error_reply,
    parse_address_rule,
)

if TYPE_CHECKING:
    from ._guard import Cut, GuardedSocket

log = logging.getLogger("zsec.auth")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_STOP_SECONDS = 5.0


class Auth:
    """A ZAP authenticator (CZMQ's zauth) running in its own thread.

    ``Auth(ctx)`` binds ``inproc://zeromq.zap.01`` on the context (default
    ``zmq.Context.instance()``; a ``zmq.asyncio.Context`` works too) before
    it returns, and fails with ``AuthError`` if another authenticator holds
    that endpoint. Until configured it admits NULL clients and refuses PLAIN
    and CURVE ones.

    Security: libzmq admits CURVE clients without asking anyone when no
    authenticator is bound (docs/protocol.md, section 4). Configure server sockets with
    ``zsec.curve_server`` / ``plain_server`` / ``null_server`` so that a
    stopped or missing authenticator refuses clients instead.
    """

    def __init__(self, ctx: zmq.Context[Any] | None = None, *, verbose: bool = False) -> None:
        base = zmq.Context.instance() if ctx is None else ctx
        if not isinstance(base, zmq.Context):
            raise ZsecTypeError(f"Auth needs a zmq.Context, not {type(base).__name__}")
        # Keep the caller's context alive as long as this authenticator: a
        # collected Context object terminates the libzmq context under us.
        self._base = base
        # A plain context on the same libzmq context: inproc endpoints are
        # shared, and the pump gets blocking sockets even under asyncio.
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(base.underlying)
        self._lock = threading.Lock()
        self._policy = Policy(verbose=verbose, grants=Grants())
        self._owned: dict[str, CertStore] = {}
        self._stopped = False
        self._done = threading.Event()
        self._token = secrets.token_bytes(16)
        socket = self._ctx.socket(zmq.ROUTER)
        socket.linger = 0
        # Wake up now and then when idle, to end bans that have run out.
        socket.rcvtimeo = 1000
        try:
            socket.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            socket.close()
            if exc.errno == zmq.EADDRINUSE:
                raise AuthError(
                    f"another authenticator is already bound to {ZAP_ENDPOINT} on this "
                    "context; stop it first (one authenticator per context)"
                ) from None
            raise AuthError(f"cannot bind {ZAP_ENDPOINT}: {exc}") from None
        self._socket = socket
        self._thread = threading.Thread(target=self._run, name="zsec-auth", daemon=True)
        self._thread.start()
        log.debug("authenticator started on %s", ZAP_ENDPOINT)

    # -- the pump -------------------------------------------------------------

    def _run(self) -> None:
        socket = self._socket
        recv, send = socket.recv_multipart, socket.send_multipart
        token = self._token
        failures = 0
        frames: list[bytes] = []
        try:
            while True:
                try:
                    frames = []
                    frames = recv()
                    if len(frames) == 3 and frames[2] == token:
                        self._drain(socket)
                        return
                    reply = self._policy.handle(frames)
                    if reply is not None:
                        send(reply)
                    failures = 0
                except zmq.Again:
                    limiter = self._policy.limiter
                    if limiter is not None:
                        try:
                            limiter.sweep()
                        except Exception:  # noqa: BLE001 - e.g. a raising log filter
                            failures = self._survive(failures, [])
                except zmq.ContextTerminated:
                    log.warning("zmq context terminated: authenticator stopped")
                    return
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.ENOTSOCK:
                        with contextlib.suppress(Exception):
                            log.error("the authenticator's socket was closed under it: stopped")
                        return
                    failures = self._survive(failures, frames)
                except Exception:  # noqa: BLE001 - logged in _survive; the pump must go on
                    failures = self._survive(failures, frames)
        finally:
            # Whatever ended the loop, later configuration calls must say so.
            self._stopped = True
            # Unbind first: close() releases the endpoint only later, and a
            # new Auth on this context right after stop() must be able to bind.
            with contextlib.suppress(zmq.ZMQError):
                socket.unbind(ZAP_ENDPOINT)
            socket.close(linger=0)
            self._done.set()

    @staticmethod
    def _drain(socket: zmq.Socket[bytes]) -> None:
        """Stop taking requests, and refuse those already queued.

        Unanswered, their clients would wait out the 30 s handshake timeout.
        """
        with contextlib.suppress(zmq.ZMQError):
            socket.unbind(ZAP_ENDPOINT)
        while True:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            reply = error_reply(frames, b"500", b"authenticator stopping")
            if reply is not None:
                with contextlib.suppress(zmq.ZMQError):
                    socket.send_multipart(reply, zmq.NOBLOCK)

    def _survive(self, failures: int, frames: list[bytes]) -> int:
        # Policy.handle never raises, so this is a socket error or worse.
        # Answer the request in hand with a 500 (or its client would wait for
        # the handshake timeout), keep going (a dead handler fails open), and
        # back off so that a fault that repeats cannot spin or flood the log.
        # Nothing in here may raise: not even logging (a filter could).
        with contextlib.suppress(Exception):
            log.exception("authenticator: unexpected error, continuing")
        with contextlib.suppress(Exception):
            reply = error_reply(frames, b"500", b"internal error") if frames else None
            if reply is not None:
                self._socket.send_multipart(reply)
        time.sleep(min(0.001 * 2**failures, 1.0))
        return min(failures + 1, 10)

    # -- configuration --------------------------------------------------------

    # Told of every new policy (the live-revocation guard), whichever method made it.
    _policy_listeners: tuple[Callable[[Policy], None], ...] = ()
    _warden: Any = None

    @property
    def _policy(self) -> Policy:
        return self.__policy

    @_policy.setter
    def _policy(self, policy: Policy) -> None:
        self.__policy = policy
        for listener in self._policy_listeners:
            listener(policy)

    @property
    def policy(self) -> Policy:
        """The policy in force now (immutable)."""
        return self._policy

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._check_running()
            self._policy = self._policy.replace(**changes)

    def _check_running(self) -> None:
        if self._stopped:
            raise AuthError("this authenticator is stopped")

    @property
    def verbose(self) -> bool:
        """Whether each decision is logged (INFO, ``zsec.auth`` logger; no passwords)."""
        return self._policy.verbose

    @verbose.setter
    def verbose(self, value: bool) -> None:
        self._update(verbose=bool(value))

    def set_verbose(self, value: bool = True) -> None:
        """Turn the decision trace on or off (CZMQ's VERBOSE)."""
        self.verbose = value

    def set_failure_limit(
        self, max_failures: int | None = 5, window: float = 60.0, ban: float = 300.0
    ) -> None:
        """Ban an address for ``ban`` seconds after ``max_failures`` refusals within ``window``.

        Off by default; ``set_failure_limit(None)`` turns it off again. A
        banned address is refused before its credentials are checked, so
        the right password does not get in during a ban. Each ban's start
        and end is logged (WARNING, ``zsec.auth``). Counting is per IP
        address: clients behind one NAT share a count.
        """
        if max_failures is None:
            self._update(limiter=None)
            return
        with self._lock:
            self._check_running()
            current = self._policy.limiter
            if current is not None:
                # Same object, new limits: bans and counts in progress carry on.
                current.reconfigure(max_failures, window, ban)
            else:
                self._policy = self._policy.replace(
                    limiter=FailureLimiter(max_failures, window, ban)
                )

    def allow(self, *addresses: str) -> None:
        """Admit only these addresses (IPs or CIDR networks); overrides ``deny``.

        An IPv4 rule also matches the IPv4-mapped IPv6 form of the address.
        """
        self._add_rules("allow", addresses)

    def deny(self, *addresses: str) -> None:
        """Refuse these addresses (IPs or CIDR networks), unless an allow list is set."""
        self._add_rules("deny", addresses)

    def _add_rules(self, which: str, addresses: tuple[str, ...]) -> None:
        rules = tuple(parse_address_rule(a) for a in addresses)
        with self._lock:
            self._check_running()
            current = getattr(self._policy, which)
            self._policy = self._policy.replace(**{which: current + rules})
        log.debug("%s %s", which, ", ".join(str(r) for r in rules))

    def configure_plain(self, domain: str, filename: Any) -> None:
        """Check PLAIN logins in ``domain`` (``"*"``: every domain without its own) against a file.

        The file is CZMQ's ``name=password`` format (``zsec passwd`` adds
        hashed entries) and is reloaded when it changes. ``None`` removes
        the domain's PLAIN configuration.
        """
        check_domain(domain)
        passwords = None if filename is None else PasswordFile(filename)
        with self._lock:
            self._check_running()
            plain = dict(self._policy.plain)
            if passwords is None:
                plain.pop(domain, None)
            else:
                plain[domain] = passwords
            self._policy = self._policy.replace(plain=plain)

    def configure_curve(self, domain: str, location: Any) -> None:
        """Check CURVE clients in ``domain`` (``"*"``: every domain without its own).

        ``location`` is a directory of trusted public certificates (followed
        live), a ``CertStore`` or ``TrustSource``, ``zsec.CURVE_ALLOW_ANY`` (any client that
        knows the server key) or ``None`` to remove the configuration.
        """
        check_domain(domain)
        owned: CertStore | None = None
        source: CertStore | _AllowAny | None
        if location is None or location is CURVE_ALLOW_ANY or isinstance(location, CertStore):
            source = location
        elif isinstance(location, (str, bytes, os.PathLike, TrustSource)):
            source = owned = CertStore(location)
        else:
            raise ZsecTypeError(
                "location must be a directory path, a CertStore, a TrustSource, "
                "zsec.CURVE_ALLOW_ANY or None"
            )
        with self._lock:
            if self._stopped:
                if owned is not None:
                    owned.close()
                self._check_running()
            curve = dict(self._policy.curve)
            if source is None:
                curve.pop(domain, None)
            else:
                curve[domain] = source
            self._policy = self._policy.replace(curve=curve)
            previous = self._owned.pop(domain, None)
            if owned is not None:
                self._owned[domain] = owned
        if previous is not None:
            previous.close()

    # -- live revocation ----------------------------------------------------------

    def guard(self, socket: Any, *, on_cut: Callable[[Cut], None] | None = None) -> GuardedSocket:
        """Guard a server socket: deliver only messages from peers still trusted, cut the others.

        Returns a ``GuardedSocket`` to receive from in place of ``socket`` (a
        zsec-configured server of this authenticator's context; awaitables
        for a ``zmq.asyncio`` socket). When a trust change revokes a peer,
        its connections on every guarded socket are closed within
        milliseconds; ``on_cut(Cut)`` hears of each one. Linux/POSIX, TCP.
        """
        from ._guard import warden_of

        return warden_of(self).guard(socket, on_cut)

    def subscribe_cuts(self, listener: Callable[[Cut], None]) -> Callable[[], None]:
        """Call ``listener(Cut)`` for every connection any guard cuts; returns the unsubscriber."""
        from ._guard import warden_of

        return warden_of(self).subscribe(listener)

    # -- lifecycle --------------------------------------------------------------

    def stop(self) -> None:
        """Stop answering and unbind the ZAP endpoint; idempotent and bounded.

        Directory stores this authenticator opened are closed; stores passed
        in by the caller are left open.
        """
        with self._lock:
            already = self._stopped
            self._stopped = True
            owned, self._owned = list(self._owned.values()), {}
        if not already and not self._done.is_set():
            self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(_STOP_SECONDS)
        if self._thread.is_alive():
            log.error("authenticator thread did not stop within %.0fs", _STOP_SECONDS)
        for store in owned:
            store.close()

    def _wake(self) -> None:
        try:
            waker = self._ctx.socket(zmq.DEALER)
        except zmq.ZMQError:
            return  # context already terminated: the pump has seen ETERM
        try:
            waker.linger = int(_STOP_SECONDS * 1000)
            waker.sndtimeo = int(_STOP_SECONDS * 1000)
            waker.connect(ZAP_ENDPOINT)
            waker.send_multipart([b"", self._token])
        except zmq.ZMQError as exc:
            log.debug("could not wake the authenticator thread: %s", exc)
        finally:
            waker.close()

    @property
    def running(self) -> bool:
        """True while the thread answers ZAP requests."""
        return not self._done.is_set()

    def __enter__(self) -> Auth:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<zsec.Auth {state} allow={len(self._policy.allow)} deny={len(self._policy.deny)} "
            f"plain={sorted(self._policy.plain)} curve={sorted(self._policy.curve)}>"
        )
