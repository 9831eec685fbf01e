"""``ThreadAuthenticator``: pyzmq's ``zmq.auth.thread`` API over zsec's ZAP thread.

Decisions run on zsec's ZAP thread; plain ``credentials_provider``
callbacks on a worker thread; coroutine callbacks on an event loop thread
that zsec starts when the first one is needed.
"""

from __future__ import annotations

from typing import Any

import zmq

from .base import Authenticator


class ThreadAuthenticator(Authenticator):
    """Run ZAP authentication in a background thread (zsec's, which never dies)."""

    def __init__(
        self, context: zmq.Context[Any] | None = None, encoding: str = "utf-8", log: Any = None
    ) -> None:
        super().__init__(context=context, encoding=encoding, log=log)


__all__ = ["ThreadAuthenticator"]
