"""zsec.auth authenticators: they answer while running, referenced or not; settings checked."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import zmq

from zsec.auth.thread import ThreadAuthenticator

from .helpers import (
    CLIENT_PUBLIC,
    CLIENT_SECRET,
    SERVER_PUBLIC,
    SERVER_SECRET,
    attempt,
    bind_loopback,
)


def _start_unreferenced(ctx: zmq.Context[Any], directory: Path) -> None:
    # pyzmq programs do this: start the authenticator in a setup function and
    # keep no reference; pyzmq's thread keeps it alive and answering.
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve("*", str(directory))


def test_a_started_authenticator_nobody_references_still_refuses_strangers(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    _start_unreferenced(ctx, tmp_path)  # an empty directory: nobody is trusted
    gc.collect()
    # A server set up the pyzmq way: with no ZAP handler bound, libzmq admits
    # every CURVE client, so an authenticator that stopped fails open.
    server = ctx.socket(zmq.PULL)
    server.linger = 0
    server.curve_publickey = SERVER_PUBLIC.encode()
    server.curve_secretkey = SERVER_SECRET.encode()
    server.curve_server = True
    try:
        endpoint = bind_loopback(server)

        def client(s: zmq.Socket[Any]) -> None:
            s.curve_publickey = CLIENT_PUBLIC.encode()
            s.curve_secretkey = CLIENT_SECRET.encode()
            s.curve_serverkey = SERVER_PUBLIC.encode()

        verdict, _ = attempt(ctx, endpoint, client)
        assert verdict.zap_status == 400, verdict
    finally:
        server.close(linger=0)


def test_a_curve_user_id_that_is_not_callable_is_refused_when_assigned(
    ctx: zmq.Context[Any],
) -> None:
    # Accepted, it would only show up later as a 500 for every CURVE client.
    auth = ThreadAuthenticator(ctx)
    with pytest.raises(TypeError):
        auth.curve_user_id = "alice"  # type: ignore[assignment,method-assign]
    assert callable(auth.curve_user_id)
