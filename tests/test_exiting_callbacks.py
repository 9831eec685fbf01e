"""Application code that raises SystemExit or KeyboardInterrupt cannot stop zsec's threads.

A provider or User-Id hook calling ``sys.exit()`` is a bug, but it runs on
zsec's threads: the ZAP thread, a provider's workers, zsec's own loop thread.
Each must answer that request with a 500 and go on; a dead ZAP thread leaves
servers set up the pyzmq way admitting every CURVE client.
"""

from __future__ import annotations

import logging
import sys
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


@pytest.mark.parametrize("kind", ["plain", "coroutine"])
def test_a_provider_that_exits_gets_500_logged_and_answers_again_afterwards(
    ctx: zmq.Context[Any], auth: zsec.Auth, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    exiting = threading.Event()
    exiting.set()

    def decide() -> bool:
        if exiting.is_set():
            sys.exit(1)
        return True

    def plain(domain: str, key: bytes) -> bool:
        return decide()

    async def coroutine(domain: str, key: bytes) -> bool:
        return decide()

    # More exits than the provider has worker threads: none may be lost.
    auth.configure_curve_callback("global", plain if kind == "plain" else coroutine, timeout=10)
    server = _server(ctx)
    with caplog.at_level(logging.ERROR, logger="zsec.auth"):
        for _ in range(6):
            assert _connect(ctx, server).zap_status == 500
    assert any("SystemExit" in r.getMessage() for r in caplog.records)
    exiting.clear()
    assert _connect(ctx, server).ok
