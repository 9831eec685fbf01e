"""Auth: the authenticator thread that answers ZAP requests for one zmq context.

The thread is a dumb pump: receive, ``Policy.handle``, send. Configuration
methods build a new immutable ``Policy`` and swap it in with one assignment,
so each is in force for the next request as soon as it returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import itertools
import logging
import math
import os
import queue
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import zmq
from zmq.backend import Socket as _RawSocket

from ._errors import AuthError, ZsecTypeError, ZsecValueError
from ._events import (
    AuditLog,
    Event,
    EventHub,
    metrics_registry,
    start_metrics_server,
)
from ._guard import Grants
from ._passwords import PasswordFile, PasswordTable
from ._sockets import running_contexts
from ._source import TrustSource
from ._store import CertStore
from ._throttle import FailureLimiter
from ._zap import (
    CURVE_ALLOW_ANY,
    CurveCallback,
    Pending,
    Policy,
    ZapReply,
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
# How long stop() listens for requests still in flight, and for at most how long.
_DRAIN_QUIET_SECONDS = 0.01
_DRAIN_MAX_SECONDS = 0.25
# The pump's receive timeout: idle, it wakes to end bans that ran out; with
# provider decisions outstanding, often enough to answer 500 on time.
_IDLE_MS = 1000
_PENDING_MS = 20
_RCVMORE, _SNDMORE = zmq.RCVMORE, zmq.SNDMORE


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
        # Registered before binding, so that the socket helpers' probe for a
        # missing authenticator never takes the endpoint from under us.
        running_contexts[base.underlying] += 1
        self._registered = base.underlying
        # CURVE providers (configure_curve_callback) decide off the pump
        # thread; each outcome comes back to the pump as a message carrying
        # this token, so only the pump touches its socket.
        self._result_token = secrets.token_bytes(16)
        self._runners: dict[CurveCallback, _Runner] = {}
        self._jobs: dict[bytes, _Job] = {}  # pump thread only
        self._next_deadline = math.inf  # pump thread only
        self._job_ids = itertools.count()
        self._outcomes: dict[bytes, tuple[_Runner, str, object]] = {}
        self._poster: zmq.Socket[bytes] | None = None
        self._poster_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        socket = self._ctx.socket(zmq.ROUTER)
        socket.linger = 0
        # Wake up now and then when idle, to end bans that have run out.
        socket.rcvtimeo = _IDLE_MS
        try:
            socket.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            socket.close()
            running_contexts[self._registered] -= 1
            if exc.errno == zmq.EADDRINUSE:
                raise AuthError(
                    f"another authenticator is already bound to {ZAP_ENDPOINT} on this "
                    "context; stop it first (one authenticator per context)"
                ) from None
            raise AuthError(f"cannot bind {ZAP_ENDPOINT}: {exc}") from None
        self._socket = socket
        # Decisions and trust changes flow to logs, audit, metrics and
        # subscribers through the hub's own thread, never blocking this one.
        self._events = EventHub(lambda: self._policy)
        self._metrics_server: Any = None
        self._policy = self._policy.replace(emit=self._events.post)
        self._thread = threading.Thread(target=self._run, name="zsec-auth", daemon=True)
        self._thread.start()
        log.debug("authenticator started on %s", ZAP_ENDPOINT)
        # From here on, a public name must already exist (see __setattr__).
        self._sealed = True

    # -- the pump -------------------------------------------------------------

    def _run(self) -> None:
        socket = self._socket
        # pyzmq's Python-level recv_multipart and send_multipart cost more
        # than the decision itself (per-frame type checks and option
        # handling); the backend socket's own methods do the same work for a
        # fraction of it (bench/bench_dropin.py).
        recv, more, send = _RawSocket.recv, _RawSocket.get, _RawSocket.send
        token, result_token = self._token, self._result_token
        jobs = self._jobs
        failures = 0
        frames: list[bytes] = []
        try:
            while True:
                try:
                    frames = []
                    frames = [recv(socket)]
                    while more(socket, _RCVMORE):
                        frames.append(recv(socket))
                    if len(frames) == 3 and frames[2] == token:
                        self._abandon_jobs()
                        self._drain(socket)
                        return
                    if len(frames) == 4 and frames[2] == result_token:
                        self._finish(frames[3])
                    else:
                        reply = self._policy.handle(frames)
                        if type(reply) is list:
                            for frame in reply[:-1]:
                                send(socket, frame, _SNDMORE)
                            send(socket, reply[-1])
                        elif reply is not None:
                            self._defer(frames, reply)  # type: ignore[arg-type]
                    if jobs and time.monotonic() >= self._next_deadline:
                        self._expire()
                    failures = 0
                except zmq.Again:
                    if jobs:
                        self._expire()
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
                except BaseException:  # noqa: BLE001 - logged in _survive; the pump must go on
                    # Even SystemExit: only application code on this thread
                    # (a hook, a log handler) can raise it, never a signal.
                    failures = self._survive(failures, frames)
        finally:
            # Whatever ended the loop, later configuration calls must say so.
            self._stopped = True
            # Unbind first: close() releases the endpoint only later, and a
            # new Auth on this context right after stop() must be able to bind.
            with contextlib.suppress(zmq.ZMQError):
                socket.unbind(ZAP_ENDPOINT)
            socket.close(linger=0)
            running_contexts[self._registered] -= 1
            self._done.set()

    # -- CURVE providers: run off the pump, answered by the pump ---------------

    def _defer(
        self,
        frames: list[bytes],
        pending: Pending,
        deadline: float | None = None,
        t0: float | None = None,
    ) -> None:
        """Start a provider decision for a request; its reply is sent in ``_finish``.

        ``deadline`` is the first one of a request asked again because its
        provider was replaced: one client's decision is bounded as a whole,
        even if every answer comes from a provider replaced meanwhile.
        """
        callback = pending.callback
        if t0 is None:  # when the request came, for its event's time and latency
            t0 = time.perf_counter()
        runner = self._runners.get(callback)
        if deadline is not None and time.monotonic() >= deadline:
            if runner is not None:
                runner.report("replaced", "was replaced during each decision until its timeout")
            self._answer(frames, callback, b"500", t0=t0)
            return
        if runner is None or runner.inflight >= callback.max_outstanding:
            if runner is not None:
                runner.report("overloaded", f"has {runner.inflight} decisions outstanding")
            self._answer(frames, callback, b"500", t0=t0)
            return
        job = next(self._job_ids).to_bytes(8, "big")
        request = pending.request
        try:
            future = runner.start(
                request.domain.decode("utf-8", "replace"),
                request.credentials[0],
                functools.partial(self._post, job, runner),
            )
        except BaseException as exc:  # noqa: BLE001 - e.g. its event loop is closed
            runner.report(f"start:{type(exc).__name__}", f"could not start: {exc!r}")
            self._answer(frames, callback, b"500", t0=t0)
            return
        runner.inflight += 1
        if deadline is None:
            deadline = time.monotonic() + callback.timeout
        self._jobs[job] = _Job(frames, runner, deadline, future, t0)
        if deadline < self._next_deadline:
            self._next_deadline = deadline
        if self._socket.rcvtimeo != _PENDING_MS:
            self._socket.rcvtimeo = _PENDING_MS

    def _post(self, job: bytes, runner: _Runner, kind: str, value: object) -> None:
        """Hand a provider's outcome to the pump (any thread: a worker or an event loop)."""
        self._outcomes[job] = (runner, kind, value)
        with self._poster_lock:
            if self._stopped:
                return
            try:
                if self._poster is None:
                    poster = self._ctx.socket(zmq.DEALER)
                    poster.linger = 0
                    poster.sndhwm = 0  # bounded by max_outstanding, never blocks
                    poster.connect(ZAP_ENDPOINT)
                    self._poster = poster
                self._poster.send_multipart([b"", self._result_token, job], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                # The job then times out with a 500: the client is answered anyway.
                log.error("could not hand a CURVE provider's answer to the authenticator: %s", exc)

    def _finish(self, job: bytes) -> None:
        outcome = self._outcomes.pop(job, None)
        if outcome is None:
            return
        runner, kind, value = outcome
        runner.inflight -= 1
        entry = self._jobs.pop(job, None)
        if entry is None:
            return  # already answered 500 when it timed out
        verdict = runner.verdict(kind, value)
        self._answer(entry.frames, runner.callback, verdict, entry.deadline, entry.t0)
        if not self._jobs:
            self._idle()

    def _expire(self) -> None:
        now = time.monotonic()
        late = [job for job, entry in self._jobs.items() if entry.deadline <= now]
        for job in late:
            entry = self._jobs.pop(job)
            if entry.future is not None:
                entry.future.cancel()
            callback = entry.runner.callback
            entry.runner.report("timeout", f"gave no answer within {callback.timeout:g}s")
            self._answer(entry.frames, callback, b"500", t0=entry.t0)
        if self._jobs:
            self._next_deadline = min(entry.deadline for entry in self._jobs.values())
        else:
            self._idle()

    def _idle(self) -> None:
        self._next_deadline = math.inf
        self._socket.rcvtimeo = _IDLE_MS

    def _answer(
        self,
        frames: list[bytes],
        callback: CurveCallback,
        status: bytes,
        deadline: float | None = None,
        t0: float | None = None,
    ) -> None:
        """Send the reply for a provider's verdict, through the policy in force now."""
        reply = self._policy.handle(frames, (callback, status), t0)
        if type(reply) is list:
            self._socket.send_multipart(reply)
        elif reply is not None:
            # The domain got another provider meanwhile: ask that one, within
            # the time left to this request.
            self._defer(frames, reply, deadline, t0)  # type: ignore[arg-type]

    def _abandon_jobs(self) -> None:
        """Answer every outstanding provider decision with a 500: the authenticator stops."""
        for entry in self._jobs.values():
            if entry.future is not None:
                entry.future.cancel()
            self._refuse(self._socket, entry.frames, b"authenticator stopping", entry.t0)
        self._jobs.clear()

    def _refuse(
        self, socket: zmq.Socket[bytes], frames: list[bytes], text: bytes, t0: float | None = None
    ) -> None:
        """Answer a request 500 outside the policy (stopping, a fault), and record that decision.

        Never raises: it runs where the pump is stopping or recovering.
        """
        with contextlib.suppress(Exception):
            reply = error_reply(frames, b"500", text)
            if reply is None:
                return
            with contextlib.suppress(zmq.ZMQError):
                socket.send_multipart(reply, zmq.NOBLOCK)
            emit = self._policy.emit
            if emit is not None:  # a decision too: the audit trail records it
                emit(
                    time.perf_counter() if t0 is None else t0,
                    None,
                    ZapReply(*reply[-5:]),
                    None,
                    frames,
                )

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The loop coroutine providers without one of their own run on (started on first use)."""
        with self._lock:
            self._check_running()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_run_loop, args=(loop,), name="zsec-auth-loop", daemon=True
                )
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def _drain(self, socket: zmq.Socket[bytes]) -> None:
        """Stop taking requests, and refuse those already queued.

        Unanswered, their clients would wait out the 30 s handshake timeout.
        """
        with contextlib.suppress(zmq.ZMQError):
            socket.unbind(ZAP_ENDPOINT)
        # A request a server sent just before the unbind can still be on its
        # way through the inproc pipe: keep answering until the socket has
        # been quiet for a moment (bounded), since one lost here leaves its
        # client waiting for the 30 s handshake timeout.
        deadline = time.monotonic() + _DRAIN_MAX_SECONDS
        while True:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                left = deadline - time.monotonic()
                try:
                    quiet = left <= 0 or not socket.poll(int(_DRAIN_QUIET_SECONDS * 1000))
                except zmq.ZMQError:
                    return
                if quiet:
                    return
                continue
            self._refuse(socket, frames, b"authenticator stopping")
            if time.monotonic() >= deadline:
                return  # bounded even if requests never stop coming

    def _survive(self, failures: int, frames: list[bytes]) -> int:
        # Policy.handle never raises, so this is a socket error or worse.
        # Answer the request in hand with a 500 (or its client would wait for
        # the handshake timeout), keep going (a dead handler fails open), and
        # back off so that a fault that repeats cannot spin or flood the log.
        # Nothing in here may raise: not even logging (a filter could).
        with contextlib.suppress(Exception):
            log.exception("authenticator: unexpected error, continuing")
        if frames:
            self._refuse(self._socket, frames, b"internal error")
        time.sleep(min(0.001 * 2**failures, 1.0))
        return min(failures + 1, 10)

    # -- configuration --------------------------------------------------------

    # Told of every new policy (the live-revocation guard), whichever method made it.
    _policy_listeners: tuple[Callable[[Policy], None], ...] = ()
    _warden: Any = None
    _cuts_followed = False

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
        """Whether allowed decisions are logged at INFO rather than DEBUG (``zsec.auth``).

        Refusals are logged at INFO either way; no line holds a password.
        """
        return self._policy.verbose

    @verbose.setter
    def verbose(self, value: bool) -> None:
        self._update(verbose=bool(value))
        self._events.refresh()

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
                limiter = FailureLimiter(max_failures, window, ban)
                self._events.follow_bans(limiter)
                self._policy = self._policy.replace(limiter=limiter)

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

    def configure_plain(self, domain: str, passwords: Any) -> None:
        """Check PLAIN logins in ``domain`` (``"*"``: every domain without its own).

        ``passwords`` is a file path (CZMQ's ``name=password`` format; ``zsec
        passwd`` adds hashed entries; reloaded when it changes), a
        ``PasswordFile``, a ``PasswordTable``, or a mapping of user to
        password (str or bytes; made into a ``PasswordTable``: held only as
        keyed digests, or argon2 strings as given, compared in constant time,
        never logged). ``None`` removes the domain's PLAIN configuration.
        """
        check_domain(domain)
        if passwords is not None:
            passwords = _password_source(passwords)
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
        pyzmq's ``'*'`` is refused: a string is always a directory here.
        """
        check_domain(domain)
        owned: CertStore | None = None
        source: CertStore | _AllowAny | None
        if location is None or location is CURVE_ALLOW_ANY or isinstance(location, CertStore):
            source = location
        elif location in ("*", b"*"):
            raise ZsecValueError(
                "'*' is pyzmq's CURVE_ALLOW_ANY; for any client that knows the server key "
                "pass zsec.CURVE_ALLOW_ANY (zsec never reads a path as 'allow any')"
            )
        elif isinstance(location, (str, bytes, os.PathLike, TrustSource)):
            source = owned = CertStore(location)
        else:
            raise ZsecTypeError(
                "location must be a directory path, a CertStore, a TrustSource, "
                "zsec.CURVE_ALLOW_ANY or None"
            )
        self._set_curve(domain, source, owned)

    def configure_curve_callback(
        self,
        domain: str,
        provider: Callable[[str, bytes], bool | Awaitable[bool]] | None,
        *,
        timeout: float = 5.0,
        loop: asyncio.AbstractEventLoop | None = None,
        max_outstanding: int = 64,
    ) -> None:
        """Let ``provider(domain, public_key)`` decide CURVE clients in ``domain``.

        ``public_key`` is the client's 32-byte key (``zsec.Cert.from_keys(key)
        .public_txt`` gives its Z85). The provider returns True to admit and
        False (or None) to refuse; anything else, an exception, or no answer
        within ``timeout`` seconds is a 500, logged once until it answers
        again. A plain function runs on a small thread pool of its own (at
        most 4 calls at once); a coroutine function runs on ``loop`` (default:
        a loop thread this authenticator starts). The ZAP thread never
        waits for a provider, so other domains keep being answered; beyond
        ``max_outstanding`` unfinished calls, requests get a 500 at once.
        Replaces any other CURVE configuration of ``domain``; ``None``
        removes it.
        """
        check_domain(domain)
        if provider is None:
            self._set_curve(domain, None, None)
            return
        if not callable(provider):
            raise ZsecTypeError(f"provider must be callable, not {type(provider).__name__}")
        if not 0 < timeout < math.inf:
            raise ZsecValueError("timeout must be a positive, finite number of seconds")
        if not isinstance(max_outstanding, int) or max_outstanding < 1:
            raise ZsecValueError("max_outstanding must be a positive int")
        is_async = inspect.iscoroutinefunction(provider) or inspect.iscoroutinefunction(
            getattr(provider, "__call__", None)  # noqa: B004 - async __call__ of an object
        )
        callback = CurveCallback(
            provider,
            is_async=is_async,
            timeout=float(timeout),
            loop=loop,
            max_outstanding=max_outstanding,
        )
        self._set_curve(domain, callback, None)

    def _set_curve(
        self, domain: str, source: CertStore | _AllowAny | CurveCallback | None, owned: Any
    ) -> None:
        runner = None
        if type(source) is CurveCallback:
            runner = _Runner(source, domain, self._event_loop)
        with self._lock:
            if self._stopped:
                if owned is not None:
                    owned.close()
                self._check_running()
            curve = dict(self._policy.curve)
            replaced = curve.pop(domain, None)
            if source is not None:
                curve[domain] = source
            if runner is not None:
                self._runners[runner.callback] = runner
            self._policy = self._policy.replace(curve=curve)
            previous = self._owned.pop(domain, None)
            if owned is not None:
                self._owned[domain] = owned
            self._events.watch_stores(self._policy.curve)
            old_runner = None
            if type(replaced) is CurveCallback:
                old_runner = self._runners.pop(replaced, None)
        if previous is not None:
            previous.close()
        if old_runner is not None:
            # Its calls in progress finish (their verdicts go to the new source).
            old_runner.close()

    @property
    def curve_user_id(self) -> Callable[[bytes], str | bytes] | None:
        """The hook that names admitted CURVE clients: ``hook(public_key) -> User-Id``.

        ``None`` (the default) gives the client's key in Z85. The hook gets
        the 32-byte key, runs on the ZAP thread for every admitted client
        (keep it fast) and must return 1-255 bytes (or str) without NUL;
        a failure or a bad value refuses the client with a 500. It applies
        to every CURVE source: directories, stores, ALLOW_ANY and providers.
        The live-revocation guard knows store clients by their key: with a
        hook, guarded sockets refuse clients admitted from a store.
        """
        return self._policy.curve_user_id

    @curve_user_id.setter
    def curve_user_id(self, hook: Callable[[bytes], str | bytes] | None) -> None:
        if hook is not None and not callable(hook):
            raise ZsecTypeError(
                f"curve_user_id must be callable or None, not {type(hook).__name__}"
            )
        self._update(curve_user_id=hook)

    # -- live revocation ----------------------------------------------------------

    def guard(self, socket: Any, *, on_cut: Callable[[Cut], None] | None = None) -> GuardedSocket:
        """Guard a server socket: deliver only messages from peers still trusted, cut the others.

        Returns a ``GuardedSocket`` to receive from in place of ``socket`` (a
        zsec-configured server of this authenticator's context; awaitables
        for a ``zmq.asyncio`` socket). When a trust change revokes a peer,
        its connections on every guarded socket are closed within
        milliseconds; ``on_cut(Cut)`` hears of each one. Linux/POSIX, TCP.
        Guard before binding: connections accepted earlier are known only
        once they speak.
        """
        from ._guard import warden_of

        warden = warden_of(self)
        if not self._cuts_followed:
            # Each cut becomes a "session-cut" event: logs, audit, metrics.
            self._cuts_followed = True
            warden.subscribe(self._events.cut_listener)
        return warden.guard(socket, on_cut)

    def subscribe_cuts(self, listener: Callable[[Cut], None]) -> Callable[[], None]:
        """Call ``listener(Cut)`` for every connection any guard cuts; returns the unsubscriber."""
        from ._guard import warden_of

        return warden_of(self).subscribe(listener)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Do nothing: an ``Auth`` answers from the moment it is constructed.

        Kept so that code written for pyzmq's ``auth.start()`` reads right.
        Raises ``AuthError`` on a stopped one: make a new ``Auth`` instead.
        """
        if self._stopped:
            raise AuthError(
                "this authenticator is stopped and cannot restart; make a new zsec.Auth"
            )

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
        # From the ZAP thread itself (a curve_user_id hook calling stop()),
        # the thread ends once the hook returns: nothing to wait for here.
        if threading.current_thread() is not self._thread:
            self._thread.join(_STOP_SECONDS)
            if self._thread.is_alive():
                log.error("authenticator thread did not stop within %.0fs", _STOP_SECONDS)
        for store in owned:
            store.close()
        self._events.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        with self._lock:
            runners, self._runners = list(self._runners.values()), {}
            loop, thread, self._loop = self._loop, self._loop_thread, None
        for runner in runners:
            runner.close()
        with self._poster_lock:
            if self._poster is not None:
                self._poster.close(linger=0)
                self._poster = None
        if loop is not None and thread is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_stop_loop, loop)
            # The loop thread closes its loop as it ends (_run_loop); from
            # a coroutine on that loop, joining it would raise.
            if threading.current_thread() is not thread:
                thread.join(_STOP_SECONDS)

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

    def __setattr__(self, name: str, value: object) -> None:
        # A misspelt or pyzmq-only setting (auth.verbosity = True, say) must
        # fail loudly, not be silently ignored. Private names are the
        # implementation's; once constructed, a public name must be a
        # property, an attribute set by __init__, or declared by a subclass.
        if (
            not name.startswith("_")
            and self.__dict__.get("_sealed")
            and name not in self.__dict__
            and not isinstance(getattr(type(self), name, None), property)
            and not any(name in getattr(c, "__annotations__", {}) for c in type(self).__mro__)
        ):
            raise AttributeError(
                f"zsec.Auth has no setting {name!r}; see help(zsec.Auth) for its methods "
                "and properties"
            )
        object.__setattr__(self, name, value)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<zsec.Auth {state} allow={len(self._policy.allow)} deny={len(self._policy.deny)} "
            f"plain={sorted(self._policy.plain)} curve={sorted(self._policy.curve)}>"
        )

    # -- operations: events, audit, metrics --------------------------------------

    def subscribe(
        self, callback: Callable[[Event], object], *, queue_size: int = 65_536
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for every decision and trust change; returns an unsubscriber.

        Events are ``zsec.Decision`` and ``zsec.TrustChange`` values
        (immutable, never holding a password or secret key), delivered in
        order from a thread of this subscription's own. A slow, blocking or
        raising callback never delays authentication: when ``queue_size``
        events wait for it, newer ones are dropped and counted
        (``dropped_events``); its exceptions are logged and ignored.
        """
        return self._events.subscribe(callback, queue_size)

    def audit_log(self, path: Any) -> AuditLog | None:
        """Append every decision and trust change to ``path`` as JSON lines; None stops.

        One JSON object per line, appended to an ``O_APPEND`` file (mode
        0600 when created) so that no line straddles a 4 KiB boundary: a
        crash leaves no half line. A rotated file (renamed away) is noticed
        and the path reopened, losing nothing. The schema is in
        docs/operations.md.
        """
        audit = None if path is None else AuditLog(path)
        self._events.set_audit(audit)
        return audit

    def enable_metrics(self, registry: Any = None) -> Any:
        """Export Prometheus metrics into ``registry`` (a new one by default) and return it.

        Needs ``pip install 'zsec[metrics]'`` (prometheus_client); raises
        ``AuthError`` without it.
        """
        return metrics_registry(self._events.enable_metrics(), registry)

    def serve_metrics(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve Prometheus metrics at ``http://addr:port/metrics``; returns the port.

        Bound to loopback unless ``addr`` says otherwise; ``port=0`` picks a
        free port. One server per authenticator, shut down by ``stop()``.
        """
        with self._lock:
            self._check_running()
            if self._metrics_server is not None:
                raise AuthError("this authenticator already serves metrics")
            metrics = self._events.enable_metrics()
            server, _ = start_metrics_server(metrics, port, addr)
            self._metrics_server = server
        return int(server.server_port)

    def flush_events(self, timeout: float = 5.0) -> bool:
        """Wait until events so far are logged, audited, counted and queued to subscribers."""
        return self._events.flush(timeout)

    @property
    def dropped_events(self) -> int:
        """Events dropped so far because a queue was full."""
        return self._events.dropped


def _password_source(passwords: Any) -> PasswordFile | PasswordTable:
    """A ``PasswordFile`` or ``PasswordTable`` for what ``configure_plain`` was given."""
    if isinstance(passwords, (PasswordFile, PasswordTable)):
        return passwords
    if isinstance(passwords, Mapping):
        return PasswordTable(passwords)
    return PasswordFile(passwords)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The body of zsec's loop thread: run until stopped, then close the loop."""
    try:
        loop.run_forever()
    finally:
        loop.close()


def _stop_loop(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()
    # One more turn lets the cancelled tasks unwind before the loop stops.
    loop.call_soon(loop.stop)


class _Job:
    """One provider decision in progress (the pump's bookkeeping)."""

    __slots__ = ("deadline", "frames", "future", "runner", "t0")

    def __init__(
        self, frames: list[bytes], runner: _Runner, deadline: float, future: Any, t0: float
    ) -> None:
        self.frames = frames
        self.runner = runner
        self.deadline = deadline
        self.future = future
        self.t0 = t0


class _Runner:
    """Runs one ``CurveCallback``'s provider off the ZAP thread, and judges what it returns.

    ``inflight`` and the log-once bookkeeping belong to the ZAP thread;
    ``start`` hands the call to a worker thread (plain functions) or an
    event loop (coroutines), which report through ``done(kind, value)``.
    """

    def __init__(
        self,
        callback: CurveCallback,
        domain: str,
        default_loop: Callable[[], asyncio.AbstractEventLoop],
    ) -> None:
        self.callback = callback
        self.domain = domain
        self.inflight = 0
        self._reported: set[str] = set()
        self._default_loop = default_loop
        self._workers = None if callback.is_async else _Workers(f"zsec-curve:{domain}", 4)

    def start(
        self, domain: str, key: bytes, done: Callable[[str, object], None]
    ) -> concurrent.futures.Future[Any] | None:
        """Begin one decision; returns a future to cancel on timeout, if there is one."""
        if self._workers is None:
            result = self.callback.provider(domain, key)
            if not inspect.isawaitable(result):
                done("value", result)
                return None
            return self._on_loop(result, done)
        self._workers.submit(functools.partial(self._call, domain, key, done))
        return None

    def _call(self, domain: str, key: bytes, done: Callable[[str, object], None]) -> None:
        try:
            result = self.callback.provider(domain, key)
            if inspect.isawaitable(result):
                self._on_loop(result, done)
                return
        except BaseException as exc:  # noqa: BLE001 - reported as a 500 by the ZAP thread
            # SystemExit too: uncaught, it would end this worker silently, and
            # with all of them gone the domain would never be answered again.
            done("error", exc)
            return
        done("value", result)

    def _on_loop(
        self, awaitable: Awaitable[Any], done: Callable[[str, object], None]
    ) -> concurrent.futures.Future[Any]:
        own = self.callback.loop is None
        loop = self.callback.loop or self._default_loop()
        try:
            future = asyncio.run_coroutine_threadsafe(_awaited(awaitable, contain=own), loop)
        except BaseException:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never awaited: say nothing about it at exit
            raise
        future.add_done_callback(lambda f: done(*_outcome(f)))
        return future

    def verdict(self, kind: str, value: object) -> bytes:
        """The status for an outcome: 200 for True, 400 for False or None, else 500 (logged)."""
        if kind == "value":
            if value is True or value is False or value is None:
                if self._reported:
                    self._reported.clear()
                    log.warning("CURVE provider for domain %r answers again", self.domain)
                return b"200" if value is True else b"400"
            name = type(value).__name__
            self.report(f"value:{name}", f"returned a {name}, not True or False")
            return b"500"
        exc = value if isinstance(value, BaseException) else None
        name = type(value).__name__
        self.report(f"error:{name}", f"raised {name}: {value}", exc)
        return b"500"

    def report(self, kind: str, detail: str, exc: BaseException | None = None) -> None:
        """Log a provider's failure once per kind, until it gives a verdict again."""
        if kind in self._reported:
            return
        self._reported.add(kind)
        with contextlib.suppress(Exception):
            log.error(
                "CURVE provider %r for domain %r %s; its clients get a 500 "
                "(logged once until it answers again)",
                self.callback,
                self.domain,
                detail,
                exc_info=None if exc is None else (type(exc), exc, exc.__traceback__),
            )

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()


async def _awaited(awaitable: Awaitable[Any], *, contain: bool) -> Any:
    if not contain:
        return await awaitable
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt) as exc:
        # asyncio lets these out of run_forever: zsec's loop thread would end
        # and every coroutine provider without a loop of its own with it.
        # (On the application's loop they are the application's business.)
        raise RuntimeError(f"{type(exc).__name__} raised in a CURVE provider") from None


def _outcome(future: concurrent.futures.Future[Any]) -> tuple[str, object]:
    if future.cancelled():
        return "error", asyncio.CancelledError()
    exc = future.exception()
    if exc is not None:
        return "error", exc
    return "value", future.result()


class _Workers:
    """A few daemon threads running submitted calls in order.

    Not ``ThreadPoolExecutor``: its threads are joined at interpreter exit,
    so one provider that never returns would hang the process's exit.
    """

    def __init__(self, name: str, size: int) -> None:
        self._name = name
        self._size = size
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def submit(self, call: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                raise AuthError("this CURVE provider was replaced or stopped")
            if self._idle == 0 and self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._work, name=self._name, daemon=True).start()
        self._queue.put(call)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            call = self._queue.get()
            with self._lock:
                self._idle -= 1
            if call is None:
                return
            with contextlib.suppress(BaseException):
                call()

    def close(self) -> None:
        """Let the threads finish what is queued, then end."""
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)
