"""zsec.Auth over real sockets: each pattern admits the right client and refuses the wrong one."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

import zsec

from .helpers import attempt, bind_loopback, login, serve, socket, wait_for


@pytest.fixture
def auth(ctx: zmq.Context[Any]) -> Iterator[zsec.Auth]:
    with zsec.Auth(ctx) as authenticator:
        yield authenticator


# -- the patterns -------------------------------------------------------------------------


def test_strawhouse_null_with_address_filter(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    auth.allow("127.0.0.1")
    server, endpoint = serve(ctx, zsec.null_server)
    verdict, frame = attempt(ctx, endpoint, lambda s: None, server)
    assert verdict.ok and frame is not None and frame.bytes == b"Hello"
    assert frame.get("User-Id") == "anonymous"
    auth.deny("127.0.0.1")  # allow still overrides deny
    assert attempt(ctx, endpoint, lambda s: None)[0].ok
    with zsec.Auth(zmq.Context()) as other:
        assert other.running  # one authenticator per context, not per process


def test_strawhouse_refuses_an_address_not_allowed(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    auth.allow("192.0.2.1")  # in force as soon as allow() returns
    _server_kept, endpoint = serve(ctx, zsec.null_server)
    verdict, _ = attempt(ctx, endpoint, lambda s: None)
    assert verdict.zap_status == 400


def test_deny_list(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    auth.deny("127.0.0.0/8")
    _server_kept, endpoint = serve(ctx, zsec.null_server)
    assert attempt(ctx, endpoint, lambda s: None)[0].zap_status == 400


def test_woodhouse_plain(ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path) -> None:
    passwords = tmp_path / "passwords.txt"
    passwords.write_text("admin=Adm1n!pass\n")
    auth.configure_plain("*", passwords)
    server, endpoint = serve(ctx, zsec.plain_server)
    verdict, frame = attempt(
        ctx, endpoint, lambda s: zsec.plain_client(s, "admin", "Adm1n!pass"), server
    )
    assert verdict.ok and frame is not None and frame.get("User-Id") == "admin"
    wrong, _ = attempt(ctx, endpoint, lambda s: zsec.plain_client(s, "admin", "guess"))
    assert wrong.zap_status == 400


def test_stonehouse_curve_allow_any(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    auth.configure_curve("*", zsec.CURVE_ALLOW_ANY)
    server_cert, client_cert = zsec.Cert(), zsec.Cert()
    server, endpoint = serve(ctx, lambda s: zsec.curve_server(s, server_cert))
    verdict, frame = attempt(
        ctx, endpoint, lambda s: zsec.curve_client(s, client_cert, server_cert.public_key), server
    )
    assert verdict.ok and frame is not None
    assert frame.get("User-Id") == client_cert.public_txt  # never empty, even for allow-any
    # A client with the wrong server key never completes the handshake.
    impostor = zsec.Cert()
    wrong, _ = attempt(ctx, endpoint, lambda s: zsec.curve_client(s, client_cert, impostor))
    assert not wrong.ok


def test_ironhouse_curve_store(ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path) -> None:
    trusted = tmp_path / ".curve"
    trusted.mkdir(mode=0o700)
    server_cert, client_cert, stranger = zsec.Cert(), zsec.Cert(), zsec.Cert()
    client_cert.set_meta("name", "Client One")
    client_cert.set_meta("X-Role", "reader")
    client_cert.save_public(trusted / "client.key")
    auth.configure_curve("*", trusted)
    server, endpoint = serve(ctx, lambda s: zsec.curve_server(s, server_cert))
    verdict, frame = attempt(
        ctx, endpoint, lambda s: zsec.curve_client(s, client_cert, server_cert.public_key), server
    )
    assert verdict.ok and frame is not None
    assert frame.get("User-Id") == client_cert.public_txt
    assert frame.get("name") == "Client One" and frame.get("X-Role") == "reader"
    refused, _ = attempt(
        ctx, endpoint, lambda s: zsec.curve_client(s, stranger, server_cert.public_key)
    )
    assert refused.zap_status == 400


def test_domains_select_their_own_stores(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    server_cert, alice, bob = zsec.Cert(), zsec.Cert(), zsec.Cert()
    admins, users = zsec.CertStore(), zsec.CertStore()
    admins.insert(alice)
    users.insert(bob)
    auth.configure_curve("admin", admins)
    auth.configure_curve("*", users)
    _admin, admin_ep = serve(ctx, lambda s: zsec.curve_server(s, server_cert, "admin"))
    _users, user_ep = serve(ctx, lambda s: zsec.curve_server(s, server_cert, "users"))
    key = server_cert.public_key
    assert attempt(ctx, admin_ep, lambda s: zsec.curve_client(s, alice, key))[0].ok
    assert attempt(ctx, admin_ep, lambda s: zsec.curve_client(s, bob, key))[0].zap_status == 400
    assert attempt(ctx, user_ep, lambda s: zsec.curve_client(s, bob, key))[0].ok
    assert attempt(ctx, user_ep, lambda s: zsec.curve_client(s, alice, key))[0].zap_status == 400


# -- failing closed ---------------------------------------------------------------------------


def test_libzmq_fails_open_without_the_helpers(ctx: zmq.Context[Any]) -> None:
    """Documents libzmq's default: no authenticator bound, any CURVE client gets in."""
    server_cert, anyone = zsec.Cert(), zsec.Cert()

    def plain_curve_server(s: zmq.Socket[Any]) -> None:
        server_cert.apply(s)
        s.curve_server = True  # no ZAP domain, no enforcement: libzmq's defaults

    server, endpoint = serve(ctx, plain_curve_server)
    verdict, frame = attempt(
        ctx, endpoint, lambda s: zsec.curve_client(s, anyone, server_cert.public_key), server
    )
    assert verdict.ok and frame is not None and frame.bytes == b"Hello"


@pytest.mark.parametrize("mechanism", ["curve", "plain", "null"])
def test_helpers_fail_closed_when_no_authenticator_ever_ran(
    ctx: zmq.Context[Any], mechanism: str
) -> None:
    server_cert, client_cert = zsec.Cert(), zsec.Cert()
    setup = {
        "curve": (
            lambda s: zsec.curve_server(s, server_cert),
            lambda s: zsec.curve_client(s, client_cert, server_cert.public_key),
        ),
        "plain": (zsec.plain_server, lambda s: zsec.plain_client(s, "admin", "pw")),
        "null": (zsec.null_server, lambda s: None),
    }[mechanism]
    server, endpoint = serve(ctx, setup[0])
    with zsec.HandshakeMonitor(server) as monitor, socket(ctx, zmq.PUSH) as client:
        setup[1](client)
        client_monitor = client.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        client.connect(endpoint)
        refusal = monitor.wait(10)
        assert str(refusal).startswith("no ZAP authenticator is running")
        # The server itself reports why: ZAP required and no handler bound (EFAULT).
        assert refusal.event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        assert refusal.value == errno.EFAULT
        assert not client_monitor.poll(0)  # the client never completed a handshake
        client.disable_monitor()
        client_monitor.close(linger=0)


def test_helpers_fail_closed_after_the_authenticator_stops(ctx: zmq.Context[Any]) -> None:
    server_cert, client_cert = zsec.Cert(), zsec.Cert()
    auth = zsec.Auth(ctx)
    auth.configure_curve("*", zsec.CURVE_ALLOW_ANY)
    _server_kept, endpoint = serve(ctx, lambda s: zsec.curve_server(s, server_cert))
    client = lambda s: zsec.curve_client(s, client_cert, server_cert.public_key)  # noqa: E731
    assert attempt(ctx, endpoint, client)[0].ok
    auth.stop()
    auth.stop()  # idempotent
    assert not auth.running
    assert not attempt(ctx, endpoint, client)[0].ok
    with pytest.raises(zsec.AuthError, match="stopped"):
        auth.allow("127.0.0.1")


def test_server_helpers_refuse_an_empty_domain(ctx: zmq.Context[Any]) -> None:
    with socket(ctx, zmq.PULL) as s:
        with pytest.raises(zsec.SocketConfigError, match="1-255 bytes"):
            zsec.null_server(s, "")
        with pytest.raises(zsec.ZsecTypeError):
            zsec.curve_server(s, "not a cert")  # type: ignore[arg-type]
        with pytest.raises(zsec.KeyFormatError):
            zsec.curve_client(s, zsec.Cert(), "short")


# -- lifecycle ----------------------------------------------------------------------------


def test_one_authenticator_per_context(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    with pytest.raises(zsec.AuthError, match="already bound"):
        zsec.Auth(ctx)
    auth.stop()
    with zsec.Auth(ctx) as again:
        assert again.running


def test_refuses_to_start_beside_pyzmqs_authenticator(ctx: zmq.Context[Any]) -> None:
    from zmq.auth.thread import ThreadAuthenticator

    theirs = ThreadAuthenticator(ctx)
    theirs.start()
    try:
        with pytest.raises(zsec.AuthError, match="already bound"):
            zsec.Auth(ctx)
    finally:
        theirs.stop()


def test_asyncio_context(tmp_path: Path) -> None:
    async def main() -> tuple[bytes, str]:
        actx = zmq.asyncio.Context()
        try:
            with zsec.Auth(actx) as auth:
                auth.configure_curve("*", zsec.CURVE_ALLOW_ANY)
                server_cert, client_cert = zsec.Cert(), zsec.Cert()
                server = actx.socket(zmq.PULL)
                zsec.curve_server(server, server_cert)
                endpoint = bind_loopback(server)
                client = actx.socket(zmq.PUSH)
                zsec.curve_client(client, client_cert, server_cert.public_key)
                client.connect(endpoint)
                await client.send(b"async hello")
                frame = await asyncio.wait_for(server.recv(copy=False), 10)
                return frame.bytes, frame.get("User-Id")
        finally:
            actx.destroy(linger=0)

    data, user = asyncio.run(main())
    assert data == b"async hello" and len(user) == 40


def test_context_terminated_while_running(caplog: pytest.LogCaptureFixture) -> None:
    context: zmq.Context[Any] = zmq.Context()
    auth = zsec.Auth(context)
    context.term()  # only the authenticator's socket was open: term closes it via ETERM
    wait_for(lambda: not auth.running, what="authenticator noticed the terminated context")
    auth.stop()
    assert "context terminated" in caplog.text


def test_malformed_requests_on_the_zap_endpoint_get_replies(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    with socket(ctx, zmq.DEALER) as intruder:
        intruder.connect(zsec.ZAP_ENDPOINT)
        for garbage in (
            [b"", b"1.0"],
            [b"", b"9.9", b"1", b"d", b"a", b"", b"NULL"],
            [b"", b"1.0", b"2", b"d", b"a", b"", b"CURVE", b"short"],
        ):
            intruder.send_multipart(garbage)
            reply = intruder.recv_multipart()
            assert reply[0] == b"" and reply[1] == b"1.0" and reply[3] == b"400"
    # ... and the thread still decides for real clients.
    _server_kept, endpoint = serve(ctx, zsec.null_server)
    assert attempt(ctx, endpoint, lambda s: None)[0].ok


def test_verbose_trace(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zsec.auth")
    passwords = tmp_path / "p.txt"
    passwords.write_text("admin=s3cret-value\n")
    auth.configure_plain("*", passwords)
    auth.set_verbose(True)
    assert auth.verbose
    auth.deny("192.0.2.66")
    _server_kept, endpoint = serve(ctx, zsec.plain_server)
    attempt(ctx, endpoint, lambda s: zsec.plain_client(s, "admin", "s3cret-value"))
    attempt(ctx, endpoint, lambda s: zsec.plain_client(s, "admin", "bad-guess"))
    assert auth.flush_events()  # decisions are logged from the events thread
    assert "ALLOWED (PLAIN) domain=global address=127.0.0.1 username=admin" in caplog.text
    assert "DENIED (PLAIN)" in caplog.text and "wrong password" in caplog.text
    assert "s3cret-value" not in caplog.text and "bad-guess" not in caplog.text


# -- live reloads while a server runs -------------------------------------------------------


def test_password_file_reload_while_serving(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    passwords = tmp_path / "p.txt"
    passwords.write_text("admin=first\n")
    auth.configure_plain("*", passwords)
    _server_kept, endpoint = serve(ctx, zsec.plain_server)
    assert login(ctx, endpoint, "admin", "first").ok
    tmp = tmp_path / ".p.new"
    tmp.write_text("admin=second\n")
    os.replace(tmp, passwords)
    wait_for(lambda: login(ctx, endpoint, "admin", "second").ok, what="new password accepted")
    assert login(ctx, endpoint, "admin", "first").zap_status == 400


def test_certificate_directory_reload_while_serving(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    trusted = tmp_path / "clients"
    trusted.mkdir(mode=0o700)
    auth.configure_curve("*", trusted)
    server_cert, client_cert = zsec.Cert(), zsec.Cert()
    _server_kept, endpoint = serve(ctx, lambda s: zsec.curve_server(s, server_cert))
    connect = lambda: attempt(  # noqa: E731
        ctx, endpoint, lambda s: zsec.curve_client(s, client_cert, server_cert.public_key)
    )[0]
    assert connect().zap_status == 400
    client_cert.save_public(trusted / "client.key")
    wait_for(lambda: connect().ok, what="client admitted after its certificate was added")
    (trusted / "client.key").unlink()
    wait_for(lambda: connect().zap_status == 400, what="client refused after revocation")


def test_configuration_is_in_force_when_the_call_returns(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    server_cert, client_cert = zsec.Cert(), zsec.Cert()
    _server_kept, endpoint = serve(ctx, lambda s: zsec.curve_server(s, server_cert))
    client = lambda s: zsec.curve_client(s, client_cert, server_cert.public_key)  # noqa: E731
    store = zsec.CertStore()
    auth.configure_curve("*", store)
    assert attempt(ctx, endpoint, client)[0].zap_status == 400
    store.insert(client_cert)
    assert attempt(ctx, endpoint, client)[0].ok
    auth.configure_curve("*", None)
    assert attempt(ctx, endpoint, client)[0].zap_status == 400


def test_owned_stores_are_closed_and_callers_stores_are_not(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    mine = zsec.CertStore()
    mine.insert(zsec.Cert())
    auth = zsec.Auth(ctx)
    auth.configure_curve("a", mine)
    auth.configure_curve("b", tmp_path)
    owned = auth.policy.curve["b"]
    assert isinstance(owned, zsec.CertStore)
    auth.stop()
    assert len(mine) == 1
    assert "closed" in repr(owned)


def test_concurrent_configuration_and_traffic(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    _server_kept, endpoint = serve(ctx, zsec.null_server)
    errors: list[BaseException] = []

    def configure() -> None:
        try:
            for i in range(200):
                auth.deny(f"198.51.100.{i % 250}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=configure)
    thread.start()
    for _ in range(5):
        assert attempt(ctx, endpoint, lambda s: None)[0].ok
    thread.join()
    assert errors == [] and len(auth.policy.deny) == 200


def test_a_new_authenticator_can_bind_right_after_stop(ctx: zmq.Context[Any]) -> None:
    for _ in range(50):
        zsec.Auth(ctx).stop()  # the endpoint is free when stop() returns
