"""``AsyncioAuthenticator``: pyzmq's ``zmq.auth.asyncio`` API; the event loop never waits for it.

Where each piece runs:

- every decision (addresses, password digests and argon2 hashes, certificate
  lookups, the ``curve_user_id`` hook): zsec's ZAP thread, never the loop;
- a coroutine ``credentials_provider.callback``: the event loop that was
  running when ``start()`` was called, concurrently with the loop's other work;
- a plain ``callback``: a worker thread, so a slow one cannot stall the loop.
"""

from __future__ import annotations

import asyncio as _asyncio
import warnings
from typing import Any

import zmq

from .._errors import AuthError
from .base import Authenticator


class AsyncioAuthenticator(Authenticator):
    """ZAP authentication for asyncio programs (``zmq.asyncio.Context`` works).

    Call ``start()`` from a coroutine (or pass ``loop``) so that coroutine
    callbacks know their loop.
    """

    def __init__(
        self,
        context: zmq.Context[Any] | None = None,
        loop: Any = None,
        encoding: str = "utf-8",
        log: Any = None,
    ) -> None:
        super().__init__(context, encoding, log)
        if loop is not None:
            warnings.warn(
                f"{type(self).__name__}(loop=...) is deprecated: start() uses the running loop",
                DeprecationWarning,
                stacklevel=2,
            )
        self._given_loop: _asyncio.AbstractEventLoop | None = loop
        self._loop: _asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start answering; coroutine callbacks will run on the running event loop."""
        try:
            self._loop = _asyncio.get_running_loop()
        except RuntimeError:
            if self._given_loop is None:
                raise AuthError(
                    "AsyncioAuthenticator.start() needs a running event loop: call it from "
                    "a coroutine (or use ThreadAuthenticator)"
                ) from None
            self._loop = self._given_loop
        super().start()

    def _provider_loop(self) -> _asyncio.AbstractEventLoop | None:
        return self._loop


__all__ = ["AsyncioAuthenticator"]
