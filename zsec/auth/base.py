"""``Authenticator``: pyzmq's ``zmq.auth.Authenticator`` API over zsec's engine.

The class only records configuration and forwards it to a ``zsec.Auth``
made by ``start()``: every decision is zsec's (one ZAP thread that never
dies, domains honoured, live certificate directories, no secret in any
log). Configuration made before ``start()`` is applied by it, and kept
across ``stop()`` / ``start()``, as in pyzmq.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from .._auth import Auth
from .._errors import FileAccessError, ZsecTypeError, ZsecValueError
from .._files import fspath
from .._keys import z85_encode
from .._passwords import PasswordFile, PasswordTable, _as_bytes
from .._zap import CURVE_ALLOW_ANY, check_domain, parse_address_rule


class Authenticator:
    """ZAP authentication for a zmq context, configured the way pyzmq's is.

    ``start()`` binds ``inproc://zeromq.zap.01`` and starts answering (zsec's
    ZAP thread does the work, whatever the subclass); ``stop()`` unbinds.
    ``"*"`` configures every domain that has no configuration of its own
    (in pyzmq it only covers requests with an empty domain).
    """

    context: zmq.Context[Any]
    encoding: str
    log: logging.Logger | logging.LoggerAdapter[Any]

    def __init__(
        self, context: zmq.Context[Any] | None = None, encoding: str = "utf-8", log: Any = None
    ) -> None:
        self.context = context or zmq.Context.instance()
        self.encoding = encoding
        self.log = log or logging.getLogger("zsec.auth")
        self._engine: Auth | None = None
        self._lock = threading.RLock()
        self._allowed: list[str] = []
        self._denied: list[str] = []
        self._plain: dict[str, Any] = {}
        # domain -> a location, zsec.CURVE_ALLOW_ANY or ("provider", object)
        self._curve: dict[str, Any] = {}
        self._verbose = False

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Bind the ZAP endpoint and start answering with the configuration so far.

        It answers until ``stop()`` or until its context ends, referenced or
        not, as pyzmq's does: a collected authenticator that stopped would
        leave CURVE servers set up the pyzmq way admitting every client.
        """
        with self._lock:
            if self._engine is not None:
                if self._engine.running:
                    return
                self._engine.stop()  # ended under us (its context was terminated)
            engine = Auth(self.context, verbose=self._verbose)
            try:
                self._engine = engine
                self._apply(engine)
            except BaseException:
                self._engine = None
                engine.stop()
                raise
        self.log.debug("zsec authenticator started")

    def stop(self) -> None:
        """Stop answering and unbind the ZAP endpoint (idempotent); the configuration is kept."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.stop()

    def is_alive(self) -> bool:
        """True while ZAP requests are being answered."""
        engine = self._engine
        return engine is not None and engine.running

    @property
    def thread(self) -> threading.Thread | None:
        """zsec's ZAP thread while started, else None (every runtime answers on it)."""
        engine = self._engine
        return None if engine is None else engine._thread

    @property
    def verbose(self) -> bool:
        """Log each decision (INFO, ``zsec.auth`` logger; never a password)."""
        return self._verbose

    @verbose.setter
    def verbose(self, value: bool) -> None:
        with self._lock:
            self._verbose = bool(value)
            if self._engine is not None:
                self._engine.verbose = self._verbose

    # -- configuration (recorded, and forwarded when running) -----------------

    def allow(self, *addresses: str) -> None:
        """Admit only these addresses (IPs or CIDR networks); cannot be mixed with ``deny``."""
        with self._lock:
            if self._denied:
                raise ZsecValueError(
                    "allow() after deny(): zsec.auth keeps pyzmq's rule of one list or the "
                    "other (zsec.Auth takes both, allow overriding deny)"
                )
            for address in addresses:
                parse_address_rule(address)
            self._allowed.extend(addresses)
            if self._engine is not None:
                self._engine.allow(*addresses)
        self.log.debug("allowing %s", ", ".join(addresses))

    def deny(self, *addresses: str) -> None:
        """Refuse these addresses (IPs or CIDR networks); cannot be mixed with ``allow``."""
        with self._lock:
            if self._allowed:
                raise ZsecValueError(
                    "deny() after allow(): zsec.auth keeps pyzmq's rule of one list or the "
                    "other (zsec.Auth takes both, allow overriding deny)"
                )
            for address in addresses:
                parse_address_rule(address)
            self._denied.extend(addresses)
            if self._engine is not None:
                self._engine.deny(*addresses)
        self.log.debug("denying %s", ", ".join(addresses))

    def configure_plain(self, domain: str = "*", passwords: Any = None) -> None:
        """Check PLAIN logins in ``domain`` against ``{user: password}`` (or a password file).

        The passwords are kept only as keyed digests and never logged.
        ``None`` changes nothing, as in pyzmq; ``{}`` admits nobody.
        """
        check_domain(domain)
        if passwords is None:
            self.log.debug("configure_plain(%r, None): nothing to change", domain)
            return
        if isinstance(passwords, Mapping):
            passwords = _password_table(passwords, self.encoding)
        elif not isinstance(passwords, (PasswordFile, PasswordTable)):
            passwords = PasswordFile(passwords)
        self._configure(self._plain, domain, passwords)
        self.log.debug("PLAIN configured for domain %r", domain)

    def configure_curve(self, domain: str = "*", location: Any = ".") -> None:
        """Check CURVE clients in ``domain`` against a directory of public certificates.

        The directory is followed live (no need to call this again after a
        change). ``CURVE_ALLOW_ANY`` (or pyzmq's ``'*'``) admits any client
        that knows the server key, in this domain only.
        """
        check_domain(domain)
        if location is CURVE_ALLOW_ANY or location in ("*", b"*"):
            location = CURVE_ALLOW_ANY
        else:
            path = fspath(location, "certificate directory")
            if not os.path.isdir(path):
                raise FileAccessError(f"certificate directory {path} is not a directory")
            location = path
        self._configure(self._curve, domain, location)
        self.log.debug("CURVE configured for domain %r: %s", domain, location)

    def configure_curve_callback(self, domain: str = "*", credentials_provider: Any = None) -> None:
        """Let ``credentials_provider.callback(domain, z85_key)`` decide CURVE clients.

        ``callback`` gets the domain (``'*'`` for an empty one) and the
        client's key as 40 Z85 bytes, and returns True or False; it may be a
        coroutine function. A plain callback runs on a worker thread, a
        coroutine on the event loop (see the subclasses). An exception,
        another return value or no answer within 5 s refuses the client
        (ZAP 500), logged once.
        """
        check_domain(domain)
        callback = getattr(credentials_provider, "callback", None)
        if not callable(callback):
            raise ZsecTypeError(
                "credentials_provider must have a callback(domain, key) method, not "
                f"{type(credentials_provider).__name__}"
            )
        self._configure(self._curve, domain, ("provider", callback))
        self.log.debug("CURVE callback configured for domain %r", domain)

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The User-Id of an admitted CURVE client: its 32-byte key in Z85.

        Override it in a subclass, or assign ``auth.curve_user_id = f``, to
        choose another (1-255 bytes, no NUL). It runs on zsec's ZAP thread.
        """
        return z85_encode(client_public_key)

    def __setattr__(self, name: str, value: object) -> None:
        if name == "curve_user_id" and value is not None and not callable(value):
            # Accepted, it would only show up later as a 500 for every client.
            raise ZsecTypeError(
                f"curve_user_id must be callable or None, not {type(value).__name__}"
            )
        object.__setattr__(self, name, value)
        if name == "curve_user_id":
            with self._lock:
                if self._engine is not None:
                    self._engine.curve_user_id = self._user_id_hook()

    # -- forwarding -------------------------------------------------------------

    def _configure(self, table: dict[str, Any], domain: str, value: Any) -> None:
        with self._lock:
            table[domain] = value
            if self._engine is not None:
                if table is self._plain:
                    self._engine.configure_plain(domain, value)
                else:
                    self._apply_curve(self._engine, domain, value)

    def _apply(self, engine: Auth) -> None:
        if self._allowed:
            engine.allow(*self._allowed)
        if self._denied:
            engine.deny(*self._denied)
        for domain, passwords in self._plain.items():
            engine.configure_plain(domain, passwords)
        for domain, location in self._curve.items():
            self._apply_curve(engine, domain, location)
        engine.curve_user_id = self._user_id_hook()

    def _apply_curve(self, engine: Auth, domain: str, value: Any) -> None:
        if isinstance(value, tuple):
            engine.configure_curve_callback(
                domain, _pyzmq_provider(value[1]), loop=self._provider_loop()
            )
        else:
            engine.configure_curve(domain, value)

    def _provider_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop coroutine callbacks run on (None: zsec's own loop thread)."""
        return None

    def _user_id_hook(self) -> Callable[[bytes], str | bytes] | None:
        hook = self.__dict__.get("curve_user_id")
        if hook is None and type(self).curve_user_id is Authenticator.curve_user_id:
            return None  # the default: zsec's own, cached per key
        user_id = self.curve_user_id
        encoding = self.encoding

        def named(key: bytes) -> str | bytes:
            value = user_id(key)
            return value.encode(encoding) if isinstance(value, str) else value

        return named


def _password_table(passwords: Mapping[Any, Any], encoding: str) -> PasswordTable:
    return PasswordTable(
        {
            _as_bytes(user, "a username", encoding): _as_bytes(password, "a password", encoding)
            for user, password in passwords.items()
        }
    )


def _pyzmq_provider(callback: Callable[..., Any]) -> Callable[[str, bytes], Any]:
    """Adapt pyzmq's ``callback(domain, z85_key)`` to zsec's ``provider(domain, raw_key)``."""
    if inspect.iscoroutinefunction(callback):

        async def call_async(domain: str, key: bytes) -> Any:
            return await callback(domain or "*", z85_encode(key).encode("ascii"))

        return call_async

    def call(domain: str, key: bytes) -> Any:
        return callback(domain or "*", z85_encode(key).encode("ascii"))

    return call


__all__ = ["CURVE_ALLOW_ANY", "Authenticator"]
