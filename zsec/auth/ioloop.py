"""``IOLoopAuthenticator``: pyzmq's deprecated tornado name for ``AsyncioAuthenticator``.

Tornado runs on asyncio, so this is the asyncio authenticator; importing the
module warns, as pyzmq's does.
"""

from __future__ import annotations

import warnings
from typing import Any

import zmq

from .asyncio import AsyncioAuthenticator

warnings.warn(
    "zsec.auth.ioloop.IOLoopAuthenticator is deprecated; use "
    "zsec.auth.asyncio.AsyncioAuthenticator",
    DeprecationWarning,
    stacklevel=2,
)


class IOLoopAuthenticator(AsyncioAuthenticator):
    """ZAP authentication for tornado programs (deprecated: use ``AsyncioAuthenticator``)."""

    def __init__(
        self,
        context: zmq.Context[Any] | None = None,
        encoding: str = "utf-8",
        log: Any = None,
        io_loop: Any = None,
    ) -> None:
        super().__init__(context=context, encoding=encoding, log=log)
        if io_loop is not None:
            warnings.warn(
                f"{type(self).__name__}(io_loop=...) is deprecated: start() uses the running loop",
                DeprecationWarning,
                stacklevel=2,
            )
            self._given_loop = io_loop.asyncio_loop


__all__ = ["IOLoopAuthenticator"]
