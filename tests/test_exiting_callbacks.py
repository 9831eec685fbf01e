"""Application code that raises SystemExit or KeyboardInterrupt cannot stop zsec's threads.

A provider or User-Id hook calling ``sys.exit()`` is a bug, but it runs on
zsec's threads: the ZAP thread, a provider's workers, zsec's own loop thread.
Each must answer that request with a 500 and go on; a dead ZAP thread leaves
servers set up the pyzmq way admitting every CURVE client.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

import zsec

from .helpers import attempt, serve

SERVER = zsec.Cert()
CLIENT = zsec.Cert()


@pytest.fixture
def auth(ctx: zmq.Context[Any]) -> Iterator[zsec.Auth]:
    with zsec.Auth(ctx) as authenticator:
        yield authenticator


def _connect(ctx: zmq.Context[Any], server: tuple[zmq.Socket[Any], str]) -> zsec.Handshake:
    return attempt(ctx, server[1], lambda s: zsec.curve_client(s, CLIENT, SERVER))[0]


def _server(ctx: zmq.Context[Any]) -> tuple[zmq.Socket[Any], str]:
    return serve(ctx, lambda s: zsec.curve_server(s, SERVER, "global"))


@pytest.mark.parametrize("exit_with", [SystemExit, KeyboardInterrupt])
def test_a_user_id_hook_that_exits_gets_500_and_the_zap_thread_goes_on(
    ctx: zmq.Context[Any], auth: zsec.Auth, exit_with: type[BaseException]
) -> None:
    exiting = threading.Event()
    exiting.set()

    def hook(key: bytes) -> str:
        if exiting.is_set():
            raise exit_with()
        return "alice"

    auth.configure_curve("global", zsec.CURVE_ALLOW_ANY)
    auth.curve_user_id = hook
    server = _server(ctx)
    assert _connect(ctx, server).zap_status == 500
    assert auth.running
    exiting.clear()
    assert _connect(ctx, server).ok
