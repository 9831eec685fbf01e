"""Socket options set on a GuardedSocket reach the socket it guards."""

from __future__ import annotations

from typing import Any

import pytest
import zmq

import zsec

from .helpers import bind_loopback


def test_a_receive_timeout_set_on_the_guarded_socket_applies(ctx: zmq.Context[Any]) -> None:
    auth = zsec.Auth(ctx)
    server = ctx.socket(zmq.PULL)
    server.linger = 0
    try:
        zsec.null_server(server, "global")
        bind_loopback(server)
        guarded = auth.guard(server)
        # pyzmq code sets options on what it receives from; ignored, a
        # blocking receive with nothing to read would wait forever.
        guarded.rcvtimeo = 50
        assert server.rcvtimeo == 50
        with pytest.raises(zmq.Again):
            guarded.recv()
    finally:
        server.close(linger=0)
        auth.stop()
