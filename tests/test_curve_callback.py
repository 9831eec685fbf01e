"""CURVE providers (configure_curve_callback): verdicts, failures, a ZAP thread that never waits."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

import zsec
from zsec._zap import CurveCallback, Pending, Policy, ZapReply

from .helpers import attempt, decide, req, serve, wait_for

SERVER = zsec.Cert()
GOOD = zsec.Cert()
BAD = zsec.Cert()


@pytest.fixture
def auth(ctx: zmq.Context[Any]) -> Iterator[zsec.Auth]:
    with zsec.Auth(ctx) as authenticator:
        yield authenticator


def _server(ctx: zmq.Context[Any], domain: str) -> tuple[zmq.Socket[Any], str]:
    return serve(ctx, lambda s: zsec.curve_server(s, SERVER, domain))


def _connect(
    ctx: zmq.Context[Any], server: tuple[zmq.Socket[Any], str], client: zsec.Cert
) -> tuple[zsec.Handshake, str | None]:
    """The client's handshake outcome, and the User-Id the server saw when it got in."""
    verdict, frame = attempt(
        ctx, server[1], lambda s: zsec.curve_client(s, client, SERVER), server=server[0]
    )
    return verdict, None if frame is None else frame.get("User-Id")


def _knows_good(domain: str, key: bytes) -> bool:
    return key == GOOD.public_key


# -- the decision, without sockets ---------------------------------------------------


def test_the_policy_hands_a_callback_domain_back_as_pending_until_given_a_verdict() -> None:
    callback = CurveCallback(_knows_good, is_async=False, timeout=1.0)
    policy = Policy(curve={"global": callback})
    frames = req(b"CURVE", GOOD.public_key)
    pending = decide(policy, frames)
    assert isinstance(pending, Pending) and pending.callback is callback
    assert pending.request.client_key == GOOD.public_key
    replies = {
        status: policy.handle([b"id", b"", *frames], (callback, status))
        for status in (b"200", b"400", b"500")
    }
    assert replies[b"200"] == [
        b"id",
        b"",
        b"1.0",
        b"7",
        b"200",
        b"OK",
        GOOD.public_txt.encode(),
        b"",
    ]
    assert replies[b"400"] is not None and replies[b"400"][4:6] == [b"400", b"unknown CURVE key"]
    assert replies[b"500"] is not None and replies[b"500"][4:6] == [
        b"500",
        b"CURVE provider failed",
    ]


def test_a_verdict_from_a_replaced_provider_is_asked_of_the_new_one() -> None:
    old = CurveCallback(_knows_good, is_async=False, timeout=1.0)
    new = CurveCallback(_knows_good, is_async=False, timeout=1.0)
    policy = Policy(curve={"*": new})
    frames = [b"id", b"", *req(b"CURVE", GOOD.public_key)]
    again = policy.handle(frames, (old, b"200"))
    assert isinstance(again, Pending) and again.callback is new


def test_the_address_lists_still_come_before_the_provider() -> None:
    callback = CurveCallback(_knows_good, is_async=False, timeout=1.0)
    policy = Policy(deny=["127.0.0.1"], curve={"*": callback})
    reply = decide(policy, req(b"CURVE", GOOD.public_key))
    assert isinstance(reply, ZapReply) and reply.status_code == b"400"


# -- over real sockets ---------------------------------------------------------------


def test_a_plain_provider_admits_the_keys_it_knows(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    seen: list[tuple[str, bytes, str]] = []

    def provider(domain: str, key: bytes) -> bool:
        seen.append((domain, key, threading.current_thread().name))
        return key == GOOD.public_key

    auth.configure_curve_callback("global", provider)
    server = _server(ctx, "global")
    verdict, user_id = _connect(ctx, server, GOOD)
    assert verdict.ok and user_id == GOOD.public_txt
    refused, _ = _connect(ctx, server, BAD)
    assert refused.zap_status == 400
    assert [(d, k) for d, k, _ in seen] == [("global", GOOD.public_key), ("global", BAD.public_key)]
    # Run off the ZAP thread, on the provider's own workers.
    assert all(name.startswith("zsec-curve:global") for _, _, name in seen)


def test_a_coroutine_provider_runs_on_the_given_event_loop(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    threads: list[int] = []

    async def provider(domain: str, key: bytes) -> bool:
        threads.append(threading.get_ident())
        await asyncio.sleep(0)
        return key == GOOD.public_key

    try:
        auth.configure_curve_callback("global", provider, loop=loop)
        server = _server(ctx, "global")
        assert _connect(ctx, server, GOOD)[0].ok
        assert _connect(ctx, server, BAD)[0].zap_status == 400
        assert threads == [runner.ident, runner.ident]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()


def test_a_coroutine_provider_without_a_loop_runs_on_the_authenticators_own(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    names: list[str] = []

    async def provider(domain: str, key: bytes) -> bool:
        names.append(threading.current_thread().name)
        return key == GOOD.public_key

    auth.configure_curve_callback("global", provider)
    server = _server(ctx, "global")
    assert _connect(ctx, server, GOOD)[0].ok
    assert names == ["zsec-auth-loop"]
    auth.stop()
    assert "zsec-auth-loop" not in [t.name for t in threading.enumerate()]


def test_a_plain_function_may_return_an_awaitable(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    auth.configure_curve_callback(
        "global", lambda domain, key: asyncio.sleep(0, result=key == GOOD.public_key)
    )
    server = _server(ctx, "global")
    assert _connect(ctx, server, GOOD)[0].ok
    assert _connect(ctx, server, BAD)[0].zap_status == 400


@pytest.mark.parametrize(
    ("provider", "logged"),
    [
        (lambda domain, key: 1 / 0, "raised ZeroDivisionError"),
        (lambda domain, key: "yes", "returned a str, not True or False"),
        (lambda domain, key: 1, "returned a int, not True or False"),
    ],
    ids=["raising", "returning-text", "returning-one"],
)
def test_a_provider_that_fails_gets_500_and_is_logged_once(
    ctx: zmq.Context[Any],
    auth: zsec.Auth,
    caplog: pytest.LogCaptureFixture,
    provider: Callable[[str, bytes], Any],
    logged: str,
) -> None:
    auth.configure_curve_callback("global", provider)
    server = _server(ctx, "global")
    with caplog.at_level(logging.ERROR, logger="zsec.auth"):
        for _ in range(3):
            assert _connect(ctx, server, GOOD)[0].zap_status == 500
    assert sum(logged in r.getMessage() for r in caplog.records) == 1
    assert auth.running


@pytest.mark.parametrize("result", ["raise", "garbage"])
def test_a_coroutine_provider_that_fails_gets_500(
    ctx: zmq.Context[Any], auth: zsec.Auth, caplog: pytest.LogCaptureFixture, result: str
) -> None:
    async def provider(domain: str, key: bytes) -> Any:
        await asyncio.sleep(0)
        if result == "raise":
            raise KeyError("no such table")
        return [key]

    auth.configure_curve_callback("global", provider)
    with caplog.at_level(logging.ERROR, logger="zsec.auth"):
        assert _connect(ctx, _server(ctx, "global"), GOOD)[0].zap_status == 500
    expected = "raised KeyError" if result == "raise" else "returned a list"
    assert sum(expected in r.getMessage() for r in caplog.records) == 1


def test_a_failing_provider_is_logged_again_after_it_recovers(
    ctx: zmq.Context[Any], auth: zsec.Auth, caplog: pytest.LogCaptureFixture
) -> None:
    broken = threading.Event()
    broken.set()

    def provider(domain: str, key: bytes) -> bool:
        if broken.is_set():
            raise ConnectionError("database down")
        return True

    auth.configure_curve_callback("global", provider)
    server = _server(ctx, "global")
    with caplog.at_level(logging.WARNING, logger="zsec.auth"):
        assert _connect(ctx, server, GOOD)[0].zap_status == 500
        broken.clear()
        assert _connect(ctx, server, GOOD)[0].ok
        broken.set()
        assert _connect(ctx, server, GOOD)[0].zap_status == 500
    messages = [r.getMessage() for r in caplog.records]
    assert sum("raised ConnectionError" in m for m in messages) == 2
    assert sum(m.endswith("answers again") for m in messages) == 1


def test_a_slow_provider_does_not_hold_up_other_domains(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow(domain: str, key: bytes) -> bool:
        entered.set()
        release.wait(30)
        return True

    store = zsec.CertStore()
    store.insert(GOOD)
    auth.configure_curve_callback("slow", slow, timeout=30)
    auth.configure_curve("fast", store)
    slow_server, fast_server = _server(ctx, "slow"), _server(ctx, "fast")
    outcome: list[zsec.Handshake] = []
    waiting = threading.Thread(target=lambda: outcome.append(_connect(ctx, slow_server, GOOD)[0]))
    waiting.start()
    try:
        wait_for(entered.is_set, what="the slow provider to be called")
        # The ZAP thread answers the other domain while the provider sleeps.
        assert _connect(ctx, fast_server, GOOD)[0].ok
        assert _connect(ctx, fast_server, BAD)[0].zap_status == 400
        assert not outcome
    finally:
        release.set()
        waiting.join(15)
    assert outcome and outcome[0].ok


def test_a_provider_that_never_answers_gets_500_at_its_timeout(
    ctx: zmq.Context[Any], auth: zsec.Auth, caplog: pytest.LogCaptureFixture
) -> None:
    never = threading.Event()
    auth.configure_curve_callback("global", lambda d, k: never.wait(30), timeout=0.2)
    server = _server(ctx, "global")
    try:
        with caplog.at_level(logging.ERROR, logger="zsec.auth"):
            assert _connect(ctx, server, GOOD)[0].zap_status == 500
        assert any("no answer within 0.2s" in r.getMessage() for r in caplog.records)
    finally:
        never.set()


def test_a_coroutine_that_never_answers_is_cancelled_at_its_timeout(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    cancelled = threading.Event()

    async def provider(domain: str, key: bytes) -> bool:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return True

    auth.configure_curve_callback("global", provider, timeout=0.2)
    assert _connect(ctx, _server(ctx, "global"), GOOD)[0].zap_status == 500
    wait_for(cancelled.is_set, what="the coroutine to be cancelled")


def test_beyond_max_outstanding_requests_get_500_at_once(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck(domain: str, key: bytes) -> bool:
        entered.set()
        release.wait(30)
        return True

    auth.configure_curve_callback("global", stuck, timeout=30, max_outstanding=1)
    server = _server(ctx, "global")
    first: list[zsec.Handshake] = []
    waiting = threading.Thread(target=lambda: first.append(_connect(ctx, server, GOOD)[0]))
    waiting.start()
    try:
        wait_for(entered.is_set, what="the first call")
        assert _connect(ctx, server, GOOD)[0].zap_status == 500
    finally:
        release.set()
        waiting.join(15)
    assert first and first[0].ok


def test_stopping_answers_the_decisions_in_progress(ctx: zmq.Context[Any]) -> None:
    auth = zsec.Auth(ctx)
    release = threading.Event()
    entered = threading.Event()

    def stuck(domain: str, key: bytes) -> bool:
        entered.set()
        release.wait(30)
        return True

    auth.configure_curve_callback("global", stuck, timeout=30)
    server = _server(ctx, "global")
    outcome: list[zsec.Handshake] = []
    waiting = threading.Thread(target=lambda: outcome.append(_connect(ctx, server, GOOD)[0]))
    waiting.start()
    try:
        wait_for(entered.is_set, what="the provider to be called")
        auth.stop()
        waiting.join(15)
        assert outcome and outcome[0].zap_status == 500
    finally:
        release.set()


def test_a_new_provider_takes_over_the_domain(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    store = zsec.CertStore()
    store.insert(GOOD)
    auth.configure_curve("global", store)
    server = _server(ctx, "global")
    assert _connect(ctx, server, GOOD)[0].ok
    auth.configure_curve_callback("global", lambda d, k: False)
    assert _connect(ctx, server, GOOD)[0].zap_status == 400
    auth.configure_curve_callback("global", None)
    assert "global" not in auth.policy.curve


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"provider": "not callable"}, zsec.ZsecTypeError),
        ({"provider": _knows_good, "timeout": 0}, zsec.ZsecValueError),
        ({"provider": _knows_good, "timeout": float("inf")}, zsec.ZsecValueError),
        ({"provider": _knows_good, "max_outstanding": 0}, zsec.ZsecValueError),
    ],
)
def test_bad_provider_settings_are_refused(
    auth: zsec.Auth, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        auth.configure_curve_callback("global", **kwargs)


# -- with the live-revocation guard -------------------------------------------------------


def test_a_provider_grant_stands_until_the_domain_gets_another_provider() -> None:
    from zsec._guard import judge

    first = CurveCallback(_knows_good, is_async=False, timeout=1.0)
    policy = Policy(curve={"global": first})
    tag = policy.grant_tag(b"CURVE", b"global", GOOD.public_txt.encode())
    assert tag is not None
    grant = "1." + tag.decode()
    assert judge(policy, b"global", grant, GOOD.public_txt, "192.0.2.1") == ""
    second = CurveCallback(_knows_good, is_async=False, timeout=1.0)
    replaced = policy.replace(curve={"global": second})
    assert judge(replaced, b"global", grant, GOOD.public_txt, "192.0.2.1") == (
        "CURVE configuration changed"
    )


def test_a_guarded_server_takes_provider_clients_and_cuts_them_when_it_is_replaced(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    auth.configure_curve_callback("global", _knows_good)
    cuts: list[zsec.Cut] = []
    auth.subscribe_cuts(cuts.append)
    server, endpoint = _server(ctx, "global")
    guarded = auth.guard(server)
    client = ctx.socket(zmq.PUSH)
    client.linger = 0
    try:
        zsec.curve_client(client, GOOD, SERVER)
        client.connect(endpoint)
        client.send(b"hello")
        assert guarded.recv() == b"hello"
        auth.configure_curve_callback("global", lambda domain, key: False)
        wait_for(lambda: cuts, what="the client to be cut")
        assert [c.identity for c in cuts] == [GOOD.public_txt]
    finally:
        client.close(linger=0)
        server.close(linger=0)
