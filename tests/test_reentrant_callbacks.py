"""Code the authenticator runs calling back into it: stop(), or replacing its own provider."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import zmq

import zsec

from .helpers import attempt, serve, wait_for

SERVER = zsec.Cert()
CLIENT = zsec.Cert()


def _connect(ctx: zmq.Context[Any]) -> zsec.Handshake:
    server = serve(ctx, lambda s: zsec.curve_server(s, SERVER, "global"))
    return attempt(ctx, server[1], lambda s: zsec.curve_client(s, CLIENT, SERVER))[0]


def test_a_coroutine_provider_on_zsecs_loop_can_stop_the_authenticator(
    ctx: zmq.Context[Any],
) -> None:
    auth = zsec.Auth(ctx)
    seen: list[object] = []

    async def provider(domain: str, key: bytes) -> bool:
        seen.append(asyncio.get_running_loop())
        try:
            auth.stop()
        except BaseException as exc:  # noqa: BLE001 - the test reports what stop() raised
            seen.append(exc)
        return True

    auth.configure_curve_callback("global", provider)
    assert _connect(ctx).zap_status == 500  # stopping answers what is in progress
    wait_for(lambda: len(seen) == 2 or not auth.running, what="the provider to stop it")
    loop = seen[0]
    assert isinstance(loop, asyncio.AbstractEventLoop)
    # zsec's loop thread ends and its loop is closed (its selector's descriptors freed).
    wait_for(loop.is_closed, what="zsec's event loop to be closed")
    assert seen[1:] == []


def test_a_user_id_hook_that_stops_the_authenticator_logs_no_false_alarm(
    ctx: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    auth = zsec.Auth(ctx)

    def hook(key: bytes) -> str:
        auth.stop()
        return "alice"

    auth.configure_curve("global", zsec.CURVE_ALLOW_ANY)
    auth.curve_user_id = hook
    with caplog.at_level(logging.ERROR, logger="zsec.auth"):
        _connect(ctx)
        wait_for(lambda: not auth.running, what="the authenticator to stop")
    assert not any("did not stop" in r.getMessage() for r in caplog.records)


def test_a_provider_that_keeps_replacing_itself_is_answered_by_its_first_timeout(
    ctx: zmq.Context[Any],
) -> None:
    auth = zsec.Auth(ctx)
    try:

        def provider(domain: str, key: bytes) -> bool:
            # Each answer comes from a provider replaced meanwhile, so it is
            # asked again of the new one: without a bound, forever.
            auth.configure_curve_callback("global", provider, timeout=0.3)
            return True

        auth.configure_curve_callback("global", provider, timeout=0.3)
        assert _connect(ctx).zap_status == 500
    finally:
        auth.stop()
