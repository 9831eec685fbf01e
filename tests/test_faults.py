"""Faults: no crash, no hang, and no client admitted that the policy would refuse."""

from __future__ import annotations

import datetime
import errno
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

import zsec

from .helpers import attempt, bind_loopback, serve, wait_for
from .helpers import login as plain_login


def _curve_server(ctx: zmq.Context[Any], cert: zsec.Cert) -> tuple[zmq.Socket[Any], str]:
    server = ctx.socket(zmq.PULL)
    server.linger = 0
    zsec.curve_server(server, cert)
    return server, bind_loopback(server)


def _bounded_stop(auth: zsec.Auth) -> None:
    start = time.monotonic()
    auth.stop()
    assert time.monotonic() - start < 5.0
    assert not auth.running


def test_stopping_mid_traffic_admits_no_one_it_should_not(ctx: zmq.Context[Any]) -> None:
    server_cert, member = zsec.Cert(), zsec.Cert()
    store = zsec.CertStore()
    store.insert(member)
    auth = zsec.Auth(ctx)
    auth.configure_curve("*", store)
    _server, endpoint = _curve_server(ctx, server_cert)
    outcomes: list[zsec.Handshake] = []
    stop = threading.Event()

    def intruders() -> None:
        while not stop.is_set():
            try:
                verdict, _ = attempt(
                    ctx, endpoint, lambda s: zsec.curve_client(s, zsec.Cert(), server_cert)
                )
            except zsec.HandshakeTimeout:
                continue  # no outcome at all: certainly not admitted
            outcomes.append(verdict)

    thread = threading.Thread(target=intruders)
    thread.start()
    try:
        wait_for(lambda: len(outcomes) >= 5, what="intruders refused while running")
        assert attempt(ctx, endpoint, lambda s: zsec.curve_client(s, member, server_cert))[0].ok
        _bounded_stop(auth)
        seen = len(outcomes)
        # Generous: what matters is that none of them gets in, and on a loaded
        # machine an attempt can take seconds to get its outcome.
        wait_for(lambda: len(outcomes) >= seen + 3, timeout=30, what="intruders after the stop")
    finally:
        stop.set()
        thread.join(30)
    assert outcomes and not any(o.ok for o in outcomes)
    # Stopped: even the member is refused now (fail closed), not everyone admitted.
    member_after, _ = attempt(ctx, endpoint, lambda s: zsec.curve_client(s, member, server_cert))
    assert not member_after.ok


def test_certificate_directory_faults_while_serving(
    ctx: zmq.Context[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trusted = tmp_path / "clients"
    trusted.mkdir(mode=0o700)
    server_cert, member = zsec.Cert(), zsec.Cert()
    member.save_public(trusted / "member.key")
    with zsec.Auth(ctx) as auth:
        auth.configure_curve("*", trusted)
        store = auth.policy.curve["*"]
        assert isinstance(store, zsec.CertStore)
        _server, endpoint = _curve_server(ctx, server_cert)

        def member_in() -> bool:
            verdict, _ = attempt(ctx, endpoint, lambda s: zsec.curve_client(s, member, server_cert))
            return verdict.ok

        assert member_in()
        # Deleted: revoked.
        shutil.rmtree(trusted)
        wait_for(lambda: not member_in(), what="revocation when the directory is deleted")
        # Recreated with a half-written file: still refused; whole: admitted.
        trusted.mkdir(mode=0o700)
        data = member._render(False, datetime.datetime(2026, 1, 1))
        with open(trusted / "member.key", "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            store.reload()
            assert not member_in()
            handle.write(data[len(data) // 2 :])
        wait_for(member_in, what="admitted once the file is whole")
        # Unreadable (as root, chmod cannot make it so: fail the open itself).
        real_open = os.open

        def unreadable(path: Any, *args: Any, **kwargs: Any) -> int:
            if str(path).endswith("member.key"):
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", unreadable)
        store.reload()
        assert not member_in()
        monkeypatch.setattr(os, "open", real_open)
        store.reload()
        assert member_in()


def test_truncated_password_file_admits_no_password_prefix(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    path = tmp_path / "passwords"
    path.write_text("admin=known\n")
    with zsec.Auth(ctx) as auth:
        auth.configure_plain("*", path)
        _server, endpoint = serve(ctx, zsec.plain_server)

        def login(user: str, password: str) -> zsec.Handshake:
            return plain_login(ctx, endpoint, user, password)

        assert login("admin", "known").ok
        with open(path, "ab") as handle:  # a writer caught halfway through a line
            handle.write(b"carol=sec")
            handle.flush()
            auth.policy.plain["*"].reload()
            assert login("carol", "sec").zap_status == 400
            assert login("admin", "known").ok
            handle.write(b"ret-value\n")
        wait_for(lambda: login("carol", "secret-value").ok, what="the completed line")
        assert login("carol", "sec").zap_status == 400
        # Truncated to nothing: nobody.
        path.write_bytes(b"")
        wait_for(lambda: login("admin", "known").zap_status == 400, what="empty file")


def test_context_terminated_with_requests_in_flight(caplog: pytest.LogCaptureFixture) -> None:
    context: zmq.Context[Any] = zmq.Context()
    auth = zsec.Auth(context)
    answered = [0]
    errors: list[BaseException] = []

    def flood() -> None:
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(zsec.ZAP_ENDPOINT)
        request = [b"", b"1.0", b"1", b"d", b"127.0.0.1", b"", b"NULL"]
        try:
            while True:
                for _ in range(50):
                    sock.send_multipart(request)
                for _ in range(50):
                    sock.recv_multipart()
                    answered[0] += 1
        except zmq.ContextTerminated:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            sock.close(linger=0)

    sender = threading.Thread(target=flood)
    sender.start()
    wait_for(lambda: answered[0] > 500, what="traffic flowing")
    terminator = threading.Thread(target=context.term)
    terminator.start()
    terminator.join(10)
    assert not terminator.is_alive(), "context.term() hung"
    sender.join(10)
    assert errors == []
    wait_for(lambda: not auth.running, what="authenticator stopped by ETERM")
    _bounded_stop(auth)
    assert "unexpected error" not in caplog.text


def test_a_dead_watcher_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="zsec.store")
    with zsec.CertStore(tmp_path) as store:
        assert store._directory is not None and store._directory._watch is not None
        observer = store._directory._watch.observer
        observer.stop()  # the watchdog thread dies behind the store's back
        observer.join(5)
        cert = zsec.Cert()
        cert.save_public(tmp_path / "late.key")
        # _table: what the watcher published, without a lookup's read-your-writes help.
        wait_for(lambda: cert.public_key in store._table, what="change seen after the restart")
        assert "stopped unexpectedly" in caplog.text
        another = zsec.Cert()
        another.save_public(tmp_path / "later.key")
        wait_for(lambda: another.public_key in store._table, what="the new watcher works")


def test_stop_is_bounded_even_when_the_context_is_gone() -> None:
    context: zmq.Context[Any] = zmq.Context()
    auth = zsec.Auth(context)
    context.term()
    wait_for(lambda: not auth.running)
    _bounded_stop(auth)
    _bounded_stop(auth)


def test_the_pump_survives_a_failing_socket_call(
    ctx: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    auth = zsec.Auth(ctx)
    calls = {"n": 0}
    real_handle = zsec.Policy.handle

    def flaky_handle(self: zsec.Policy, frames: list[bytes]) -> list[bytes] | None:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise MemoryError("simulated")  # what Policy.handle itself never raises
        return real_handle(self, frames)

    monkeypatch.setattr(zsec.Policy, "handle", flaky_handle)
    server = ctx.socket(zmq.PULL)
    server.linger = 0
    zsec.null_server(server)
    endpoint = bind_loopback(server)
    # The first requests are lost (the client retries on its own); then it gets in.
    wait_for(lambda: attempt(ctx, endpoint, lambda s: None)[0].ok, timeout=20)
    assert auth.running and "unexpected error, continuing" in caplog.text
    _bounded_stop(auth)


def test_requests_queued_at_stop_are_answered(
    ctx: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = zsec.Auth(ctx)
    entered, release = threading.Event(), threading.Event()
    real_handle = zsec.Policy.handle

    def slow_handle(self: zsec.Policy, frames: list[bytes]) -> list[bytes] | None:
        if not entered.is_set():
            entered.set()
            release.wait(10)
        return real_handle(self, frames)

    monkeypatch.setattr(zsec.Policy, "handle", slow_handle)
    client = ctx.socket(zmq.DEALER)
    client.linger = 0
    client.rcvtimeo = 5000
    client.connect(zsec.ZAP_ENDPOINT)
    for request_id in (b"A", b"B", b"C"):
        client.send_multipart([b"", b"1.0", request_id, b"d", b"127.0.0.1", b"", b"NULL"])
    assert entered.wait(5)  # the pump is busy with A; B and C wait in its queue
    stopper = threading.Thread(target=auth.stop)
    stopper.start()
    release.set()
    replies = {client.recv_multipart()[2] for _ in range(3)}  # none left hanging
    stopper.join(10)
    assert replies == {b"A", b"B", b"C"} and not auth.running
    client.close()


def test_the_pump_survives_a_raising_log_filter_and_sweep(
    ctx: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("a log filter with a bug")

    swept: list[int] = []

    def broken_sweep(self: zsec.FailureLimiter) -> None:
        swept.append(1)
        raise RuntimeError("sweep bug")

    monkeypatch.setattr(zsec.FailureLimiter, "sweep", broken_sweep)
    logger = logging.getLogger("zsec.auth")
    bad = Broken()
    logger.addFilter(bad)
    try:
        auth = zsec.Auth(ctx, verbose=True)  # every decision now logs through the filter
        auth.set_failure_limit(3)
        server = ctx.socket(zmq.PULL)
        server.linger = 0
        zsec.null_server(server)
        endpoint = bind_loopback(server)
        assert attempt(ctx, endpoint, lambda s: None)[0].ok
        wait_for(lambda: swept, timeout=5, what="an idle sweep")
        assert auth.running
        assert attempt(ctx, endpoint, lambda s: None)[0].ok
        auth.stop()
    finally:
        logger.removeFilter(bad)
