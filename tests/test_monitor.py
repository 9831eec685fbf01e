"""Socket monitoring: one shared libzmq monitor per socket, HandshakeMonitor on sync and asyncio."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import zmq
import zmq.asyncio

import zsec
from zsec._monitor import subscribe

from .helpers import bind_loopback, socket, wait_for


def test_handshake_monitor_works_on_an_asyncio_socket() -> None:
    actx = zmq.asyncio.Context()
    auth = zsec.Auth(actx)
    try:
        server_cert, good_cert = zsec.Cert(), zsec.Cert()
        trusted = zsec.CertStore()
        trusted.insert(good_cert)
        auth.configure_curve("*", trusted)
        server = actx.socket(zmq.PULL)
        server.linger = 0
        zsec.curve_server(server, server_cert)
        endpoint = bind_loopback(server)

        async def run() -> tuple[zsec.Handshake, zsec.Handshake]:
            good = actx.socket(zmq.PUSH)
            bad = actx.socket(zmq.PUSH)
            for sock in (good, bad):
                sock.linger = 0
            zsec.curve_client(good, good_cert, server_cert)
            zsec.curve_client(bad, zsec.Cert(), server_cert)  # an unknown key
            with zsec.HandshakeMonitor(good) as m1, zsec.HandshakeMonitor(bad) as m2:
                good.connect(endpoint)
                bad.connect(endpoint)
                first = await m1.wait_async(5)
                second = m2.wait(5)  # the blocking form works on asyncio sockets too
            good.close()
            bad.close()
            return first, second

        ok, refused = asyncio.run(run())
        assert ok.ok
        assert refused.zap_status == 400
        server.close()
    finally:
        auth.stop()
        actx.destroy(linger=0)


def test_two_watchers_of_one_socket_both_hear_every_event(ctx: zmq.Context[Any]) -> None:
    # A second zmq_socket_monitor would silently replace the first: they must share.
    heard: list[tuple[int, int]] = []
    with socket(ctx, zmq.PULL) as server, socket(ctx, zmq.PUSH) as client:
        unsubscribe = subscribe(server, lambda e, v: heard.append((e, v)))
        with zsec.HandshakeMonitor(server) as monitor:
            client.connect(bind_loopback(server))
            assert monitor.wait(5).ok
        events = wait_for(lambda: [e for e, _ in heard if e == zmq.EVENT_HANDSHAKE_SUCCEEDED])
        assert events and any(e == zmq.EVENT_ACCEPTED for e, _ in heard)
        # The monitor leaving does not stop the other watcher.
        client.close(linger=0)
        wait_for(lambda: any(e == zmq.EVENT_DISCONNECTED for e, _ in heard))
        unsubscribe()


def test_a_failing_listener_does_not_starve_the_others(ctx: zmq.Context[Any]) -> None:
    def broken(event: int, value: int) -> None:
        raise RuntimeError("listener bug")

    with socket(ctx, zmq.PULL) as server, socket(ctx, zmq.PUSH) as client:
        unsubscribe = subscribe(server, broken)
        with zsec.HandshakeMonitor(server) as monitor:
            client.connect(bind_loopback(server))
            assert monitor.wait(5).ok
        unsubscribe()


def test_a_context_with_a_watched_socket_can_still_be_destroyed() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    server = ctx.socket(zmq.PULL)
    zsec.HandshakeMonitor(server)  # never closed
    done = threading.Event()

    def destroy() -> None:
        ctx.destroy(linger=0)
        done.set()

    threading.Thread(target=destroy, daemon=True).start()
    assert done.wait(10), "ctx.destroy() hung on the monitor's reader"


def test_monitor_subscribe_refuses_what_is_not_a_socket() -> None:
    with pytest.raises(zsec.ZsecTypeError):
        subscribe(object(), lambda e, v: None)
    with pytest.raises(zsec.ZsecTypeError):
        zsec.HandshakeMonitor(object())
