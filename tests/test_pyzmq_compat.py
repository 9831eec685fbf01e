"""zsec.auth, pyzmq's zmq.auth API over zsec: every mechanism, lists, callbacks, User-Id, runtimes.

Servers here are set up the way pyzmq programs do it (socket options, no zsec
helpers), since that is the code a migration keeps. Each test runs under the
thread and the asyncio authenticator; the asyncio one is started from a
coroutine on an event loop that keeps running in the background, where its
coroutine callbacks run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
import zmq.auth

import zsec
import zsec.auth
from zsec.auth.asyncio import AsyncioAuthenticator
from zsec.auth.base import Authenticator
from zsec.auth.thread import ThreadAuthenticator

from .helpers import attempt, bind_loopback, wait_for


class Harness:
    """One authenticator of the kind under test, and how to start it."""

    def __init__(self, kind: str, ctx: zmq.Context[Any]) -> None:
        self.kind = kind
        self.ctx = ctx
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.made: list[Authenticator] = []
        if kind == "asyncio":
            self.loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
            self._thread.start()
        self.auth = self.make()

    def make(self, cls: type[Authenticator] | None = None) -> Authenticator:
        if cls is None:
            cls = ThreadAuthenticator if self.kind == "thread" else AsyncioAuthenticator
        # The asyncio authenticator gets a zmq.asyncio context, as in asyncio programs.
        context: zmq.Context[Any] = self.ctx
        if self.kind == "asyncio":
            context = zmq.asyncio.Context.shadow(self.ctx.underlying)
        auth = cls(context)
        self.made.append(auth)
        return auth

    def start(self, auth: Authenticator | None = None) -> Authenticator:
        auth = auth or self.auth
        if self.loop is None:
            auth.start()
        else:

            async def start() -> None:
                auth.start()

            asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return auth

    def close(self) -> None:
        for auth in self.made:
            auth.stop()
        if self.loop is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


@pytest.fixture(params=["thread", "asyncio"])
def harness(request: pytest.FixtureRequest, ctx: zmq.Context[Any]) -> Iterator[Harness]:
    made = Harness(request.param, ctx)
    yield made
    made.close()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    """Server and client certificates made with zsec.auth, public files in their own directory."""
    made = tmp_path / "made"
    public = tmp_path / "public_keys"
    made.mkdir(mode=0o700)
    public.mkdir(mode=0o700)
    paths = {name: zsec.auth.create_certificates(made, name) for name in ("server", "client")}
    for name, (public_file, _) in paths.items():
        os.replace(public_file, public / f"{name}.key")
    loaded = {name: zsec.auth.load_certificate(secret) for name, (_, secret) in paths.items()}
    return {"public_dir": str(public), **loaded}


# -- pyzmq-style sockets ------------------------------------------------------------------


def _pull(ctx: zmq.Context[Any], setup: Callable[[zmq.Socket[Any]], None]) -> tuple[Any, str]:
    server = ctx.socket(zmq.PULL)
    server.linger = 0
    server.rcvtimeo = 5000
    setup(server)
    return server, bind_loopback(server)


def _curve_server(
    ctx: zmq.Context[Any], server_keys: tuple[bytes, bytes], domain: bytes = b""
) -> tuple[Any, str]:
    def setup(s: zmq.Socket[Any]) -> None:
        s.curve_publickey, s.curve_secretkey = server_keys
        s.curve_server = True
        if domain:
            s.zap_domain = domain

    return _pull(ctx, setup)


def _curve_client(
    client_keys: tuple[bytes, bytes], server_public: bytes
) -> Callable[[zmq.Socket[Any]], None]:
    def setup(s: zmq.Socket[Any]) -> None:
        s.curve_publickey, s.curve_secretkey = client_keys
        s.curve_serverkey = server_public

    return setup


def _plain_client(user: bytes, password: bytes) -> Callable[[zmq.Socket[Any]], None]:
    def setup(s: zmq.Socket[Any]) -> None:
        s.plain_username, s.plain_password = user, password

    return setup


def _connect(
    ctx: zmq.Context[Any], server: tuple[Any, str], setup: Callable[[zmq.Socket[Any]], None]
) -> tuple[zsec.Handshake, str | None]:
    verdict, frame = attempt(ctx, server[1], setup, server=server[0])
    return verdict, None if frame is None else frame.get("User-Id")


def _null_server(ctx: zmq.Context[Any]) -> tuple[Any, str]:
    def setup(s: zmq.Socket[Any]) -> None:
        s.zap_domain = b"global"  # a domain switches the authenticator on for NULL

    return _pull(ctx, setup)


# -- NULL and the address lists ----------------------------------------------------------


def test_null_clients_pass_until_their_address_is_denied(
    ctx: zmq.Context[Any], harness: Harness
) -> None:
    auth = harness.start()
    server = _null_server(ctx)
    verdict, user_id = _connect(ctx, server, lambda s: None)
    assert verdict.ok and user_id == "anonymous"
    auth.deny("127.0.0.1")
    assert _connect(ctx, server, lambda s: None)[0].zap_status == 400
    with pytest.raises(ValueError, match="allow"):
        auth.allow("127.0.0.2")


def test_allow_admits_only_the_listed_addresses(ctx: zmq.Context[Any], harness: Harness) -> None:
    auth = harness.start()
    server = _null_server(ctx)
    auth.allow("127.0.0.2")
    assert _connect(ctx, server, lambda s: None)[0].zap_status == 400
    auth.allow("127.0.0.0/8")  # zsec also takes networks
    assert _connect(ctx, server, lambda s: None)[0].ok
    with pytest.raises(ValueError, match="deny"):
        auth.deny("127.0.0.3")


# -- PLAIN ---------------------------------------------------------------------------------


def test_plain_logins_are_checked_against_the_password_dictionary(
    ctx: zmq.Context[Any], harness: Harness
) -> None:
    auth = harness.start()
    server = _pull(ctx, lambda s: setattr(s, "plain_server", True))
    right = _plain_client(b"admin", b"correct")
    assert _connect(ctx, server, right)[0].zap_status == 400  # nothing configured yet
    auth.configure_plain("*", {"admin": "correct"})
    verdict, user_id = _connect(ctx, server, right)
    assert verdict.ok and user_id == "admin"
    assert _connect(ctx, server, _plain_client(b"admin", b"incorrect"))[0].zap_status == 400
    assert _connect(ctx, server, _plain_client(b"root", b"correct"))[0].zap_status == 400
    auth.configure_plain("*", None)  # pyzmq: None changes nothing
    assert _connect(ctx, server, right)[0].ok
    auth.configure_plain("*", {})  # an empty dictionary admits nobody
    assert _connect(ctx, server, right)[0].zap_status == 400


def test_star_covers_named_domains_and_a_domain_of_its_own_wins(
    ctx: zmq.Context[Any], harness: Harness
) -> None:
    auth = harness.start()
    auth.configure_plain("*", {"admin": "everywhere"})
    auth.configure_plain("billing", {"admin": "billing-only"})

    def server_in(domain: bytes) -> tuple[Any, str]:
        def setup(s: zmq.Socket[Any]) -> None:
            s.plain_server = True
            s.zap_domain = domain

        return _pull(ctx, setup)

    other, billing = server_in(b"other"), server_in(b"billing")
    assert _connect(ctx, other, _plain_client(b"admin", b"everywhere"))[0].ok
    assert _connect(ctx, billing, _plain_client(b"admin", b"billing-only"))[0].ok
    assert _connect(ctx, billing, _plain_client(b"admin", b"everywhere"))[0].zap_status == 400


def test_no_password_reaches_any_log(
    ctx: zmq.Context[Any], harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    secret, guess = "Dr0pin-Secret-Value", "Dr0pin-Wrong-Guess"
    with caplog.at_level(logging.DEBUG):
        auth = harness.start()
        auth.verbose = True
        auth.configure_plain("*", {"admin": secret})
        server = _pull(ctx, lambda s: setattr(s, "plain_server", True))
        assert _connect(ctx, server, _plain_client(b"admin", secret.encode()))[0].ok
        assert not _connect(ctx, server, _plain_client(b"admin", guess.encode()))[0].ok
        texts = [caplog.text, repr(auth), repr(auth._engine)]
    assert "ALLOWED (PLAIN)" in caplog.text and "DENIED (PLAIN)" in caplog.text
    for text in texts:
        assert secret not in text and guess not in text


# -- CURVE -----------------------------------------------------------------------------------


@pytest.mark.parametrize("location", ["directory", "allow-any", "star"])
def test_curve_admits_known_clients_and_refuses_strangers(
    ctx: zmq.Context[Any], harness: Harness, keys: dict[str, Any], location: str
) -> None:
    auth = harness.auth
    auth.allow("127.0.0.1")
    where = {
        "directory": keys["public_dir"],
        "allow-any": zsec.auth.CURVE_ALLOW_ANY,
        "star": "*",  # pyzmq's value of CURVE_ALLOW_ANY
    }[location]
    auth.configure_curve("*", where)  # before start(): applied by it
    harness.start()
    server = _curve_server(ctx, keys["server"])
    client_public = keys["client"][0]
    verdict, user_id = _connect(ctx, server, _curve_client(keys["client"], keys["server"][0]))
    assert verdict.ok and user_id == client_public.decode()
    stranger = zmq.curve_keypair()
    refused = _connect(ctx, server, _curve_client(stranger, keys["server"][0]))[0]
    assert refused.ok is (location != "directory")
    # A client without CURVE keys never gets in.
    assert not _connect(ctx, server, lambda s: None)[0].ok


def test_curve_without_configuration_refuses(
    ctx: zmq.Context[Any], harness: Harness, keys: dict[str, Any]
) -> None:
    harness.start()
    server = _curve_server(ctx, keys["server"])
    setup = _curve_client(keys["client"], keys["server"][0])
    assert _connect(ctx, server, setup)[0].zap_status == 400


def test_a_certificate_directory_is_followed_live(
    ctx: zmq.Context[Any], harness: Harness, keys: dict[str, Any]
) -> None:
    auth = harness.start()
    auth.configure_curve("*", keys["public_dir"])
    server = _curve_server(ctx, keys["server"])
    setup = _curve_client(keys["client"], keys["server"][0])
    assert _connect(ctx, server, setup)[0].ok
    os.remove(Path(keys["public_dir"]) / "client.key")  # pyzmq needs configure_curve again
    wait_for(lambda: _connect(ctx, server, setup)[0].zap_status == 400, what="revocation")


class _Provider:
    """A pyzmq credentials provider: callback(domain, z85_key) -> bool, plain or coroutine."""

    def __init__(self, known: bytes, coroutine: bool) -> None:
        self.known = known
        self.calls: list[tuple[str, bytes, bool]] = []
        if coroutine:
            self.callback = self._async_callback  # type: ignore[method-assign]

    def _record(self, domain: str, key: bytes) -> bool:
        on_loop = True
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            on_loop = False
        self.calls.append((domain, key, on_loop))
        return key == self.known

    def callback(self, domain: str, key: bytes) -> bool:
        return self._record(domain, key)

    async def _async_callback(self, domain: str, key: bytes) -> bool:
        await asyncio.sleep(0.01)
        return self._record(domain, key)


@pytest.mark.parametrize("coroutine", [False, True], ids=["plain", "coroutine"])
def test_a_credentials_provider_decides_curve_clients(
    ctx: zmq.Context[Any], harness: Harness, keys: dict[str, Any], coroutine: bool
) -> None:
    auth = harness.start()
    provider = _Provider(keys["client"][0], coroutine)
    auth.configure_curve_callback(credentials_provider=provider)
    server = _curve_server(ctx, keys["server"])
    verdict, user_id = _connect(ctx, server, _curve_client(keys["client"], keys["server"][0]))
    assert verdict.ok and user_id == keys["client"][0].decode()
    stranger = zmq.curve_keypair()
    assert _connect(ctx, server, _curve_client(stranger, keys["server"][0]))[0].zap_status == 400
    # pyzmq's shape: the domain ("*" for an empty one) and the key as Z85 bytes;
    # coroutines on the event loop, plain callbacks on a thread without one.
    assert [(d, k) for d, k, _ in provider.calls] == [("*", keys["client"][0]), ("*", stranger[0])]
    assert all(on_loop is coroutine for _, _, on_loop in provider.calls)


def test_a_credentials_provider_must_have_a_callback(harness: Harness) -> None:
    with pytest.raises(TypeError):
        harness.auth.configure_curve_callback("*", None)
    with pytest.raises(TypeError):
        harness.auth.configure_curve_callback("*", object())


def test_curve_user_id_can_be_assigned_or_overridden(
    ctx: zmq.Context[Any], harness: Harness, keys: dict[str, Any]
) -> None:
    auth = harness.start()
    auth.configure_curve("*", keys["public_dir"])
    server = _curve_server(ctx, keys["server"])
    setup = _curve_client(keys["client"], keys["server"][0])
    assert _connect(ctx, server, setup)[1] == keys["client"][0].decode()
    auth.curve_user_id = lambda key: "custom"  # type: ignore[method-assign]
    assert _connect(ctx, server, setup)[1] == "custom"
    auth.stop()

    class Named(type(auth)):  # type: ignore[misc]
        def curve_user_id(self, client_public_key: bytes) -> str:
            return f"key-{client_public_key[:2].hex()}"

    named = harness.start(harness.make(Named))
    named.configure_curve("*", keys["public_dir"])
    raw = zsec.Cert.from_keys(keys["client"][0]).public_key
    assert _connect(ctx, server, setup)[1] == f"key-{raw[:2].hex()}"


# -- lifecycle ----------------------------------------------------------------------------


def test_configuration_is_kept_across_stop_and_start(
    ctx: zmq.Context[Any], harness: Harness
) -> None:
    auth = harness.auth
    assert not auth.is_alive()
    auth.configure_plain("*", {"admin": "correct"})
    harness.start()
    assert auth.is_alive()
    server = _pull(ctx, lambda s: setattr(s, "plain_server", True))
    right = _plain_client(b"admin", b"correct")
    assert _connect(ctx, server, right)[0].ok
    auth.stop()
    auth.stop()  # idempotent
    assert not auth.is_alive()
    assert not _connect(ctx, server, right)[0].ok  # PLAIN with no handler: refused by libzmq
    harness.start()
    assert _connect(ctx, server, right)[0].ok


def test_the_authenticator_shows_the_thread_that_answers(
    ctx: zmq.Context[Any], harness: Harness
) -> None:
    auth = harness.auth
    assert auth.context.underlying == ctx.underlying and auth.thread is None
    harness.start()
    assert auth.thread is not None and auth.thread.is_alive()
    assert auth.thread.ident != threading.get_ident()
    auth.stop()
    assert auth.thread is None


def test_a_second_authenticator_on_one_context_is_refused(
    ctx: zmq.Context[Any], harness: Harness
) -> None:
    harness.start()
    with pytest.raises(zsec.AuthError):
        harness.start(harness.make())


def test_the_asyncio_authenticator_needs_a_running_loop(ctx: zmq.Context[Any]) -> None:
    with pytest.raises(zsec.AuthError, match="running event loop"):
        AsyncioAuthenticator(ctx).start()


# -- asyncio, first class -------------------------------------------------------------------


def test_concurrent_handshakes_under_the_asyncio_authenticator(
    keys: dict[str, Any],
) -> None:
    async def main() -> None:
        actx = zmq.asyncio.Context()
        sync_ctx: zmq.Context[Any] = zmq.Context.shadow(actx.underlying)
        loop_thread = threading.get_ident()
        in_flight, most = 0, 0
        threads: set[int] = set()
        good_keys = [zmq.curve_keypair() for _ in range(8)]
        bad_keys = [zmq.curve_keypair() for _ in range(8)]
        good = {public for public, _ in good_keys}

        class Provider:
            async def callback(self, domain: str, key: bytes) -> bool:
                nonlocal in_flight, most
                threads.add(threading.get_ident())
                in_flight += 1
                most = max(most, in_flight)
                await asyncio.sleep(0.05)
                in_flight -= 1
                return key in good

        auth = AsyncioAuthenticator(actx)
        auth.start()
        auth.configure_curve_callback("*", Provider())
        server, endpoint = _curve_server(sync_ctx, keys["server"])
        pool = concurrent.futures.ThreadPoolExecutor(len(good_keys) + len(bad_keys))
        loop = asyncio.get_running_loop()
        try:
            attempts = [
                loop.run_in_executor(
                    pool,
                    attempt,
                    sync_ctx,
                    endpoint,
                    _curve_client(client, keys["server"][0]),
                )
                for client in good_keys + bad_keys
            ]
            results = await asyncio.gather(*attempts)
            assert [verdict.ok for verdict, _ in results] == [True] * 8 + [False] * 8
            assert {verdict.zap_status for verdict, _ in results[8:]} == {400}
            assert threads == {loop_thread}
            assert most > 1  # the provider's coroutines overlapped on the loop
        finally:
            pool.shutdown()
            auth.stop()
            server.close(linger=0)
            actx.destroy(linger=0)

    asyncio.run(main())


def test_the_event_loop_runs_while_a_plain_callback_waits(keys: dict[str, Any]) -> None:
    async def main() -> None:
        actx = zmq.asyncio.Context()
        sync_ctx: zmq.Context[Any] = zmq.Context.shadow(actx.underlying)
        called, released = threading.Event(), threading.Event()

        class Provider:
            def callback(self, domain: str, key: bytes) -> bool:
                called.set()
                # Only the event loop sets this: were the callback run on the
                # loop, it would wait here until its timeout and refuse.
                return released.wait(10)

        async def release_when_called() -> None:
            while not called.is_set():
                await asyncio.sleep(0.005)
            released.set()

        auth = AsyncioAuthenticator(actx)
        auth.start()
        auth.configure_curve_callback("*", Provider())
        server, endpoint = _curve_server(sync_ctx, keys["server"])
        loop = asyncio.get_running_loop()
        try:
            releaser = asyncio.ensure_future(release_when_called())
            verdict, _ = await loop.run_in_executor(
                None, attempt, sync_ctx, endpoint, _curve_client(keys["client"], keys["server"][0])
            )
            await releaser
            assert verdict.ok
        finally:
            auth.stop()
            server.close(linger=0)
            actx.destroy(linger=0)

    asyncio.run(main())


def test_the_ioloop_authenticator_is_the_asyncio_one_and_warns(ctx: zmq.Context[Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import zsec.auth.ioloop

    with pytest.warns(DeprecationWarning, match="AsyncioAuthenticator"):
        ioloop = importlib.reload(zsec.auth.ioloop)

    async def main() -> None:
        auth = ioloop.IOLoopAuthenticator(ctx)
        assert isinstance(auth, AsyncioAuthenticator) and auth.context is ctx
        auth.start()
        try:
            auth.deny("127.0.0.1")
            server, endpoint = _null_server(ctx)
            loop = asyncio.get_running_loop()
            verdict, _ = await loop.run_in_executor(None, attempt, ctx, endpoint, lambda s: None)
            server.close(linger=0)
            assert verdict.zap_status == 400
        finally:
            auth.stop()

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no other warning on the way
        asyncio.run(main())


# -- certificates -----------------------------------------------------------------------------


def test_create_certificates_writes_czmq_files_with_a_private_secret(tmp_path: Path) -> None:
    public_file, secret_file = zsec.auth.create_certificates(
        tmp_path, "node", metadata={"name": "Node 1"}
    )
    assert (public_file, secret_file) == (
        str(tmp_path / "node.key"),
        str(tmp_path / "node.key_secret"),
    )
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    public, secret = zsec.auth.load_certificate(secret_file)
    assert zsec.auth.load_certificate(public_file) == (public, None)
    assert secret is not None and zmq.curve_public(secret) == public
    assert zsec.Cert.load(public_file).meta("name") == "Node 1"


def test_certificates_move_both_ways_between_pyzmq_and_zsec(tmp_path: Path) -> None:
    ours = zsec.auth.create_certificates(tmp_path, "ours")
    theirs = zmq.auth.create_certificates(str(tmp_path), "theirs")
    for public_file, secret_file in (ours, theirs):
        assert zsec.auth.load_certificate(secret_file) == zmq.auth.load_certificate(secret_file)
        assert zsec.auth.load_certificate(public_file) == zmq.auth.load_certificate(public_file)
    assert zsec.auth.load_certificates(tmp_path) == zmq.auth.load_certificates(str(tmp_path))
    assert len(zsec.auth.load_certificates(tmp_path)) == 2


def test_certificate_helpers_raise_pyzmqs_builtin_kinds(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        zsec.auth.load_certificate(tmp_path / "missing.key")
    with pytest.raises(OSError):
        zsec.auth.load_certificates(tmp_path / "missing")
    (tmp_path / "junk.key").write_text("curve\n    nothing = here\n")
    with pytest.raises(ValueError):
        zsec.auth.load_certificate(tmp_path / "junk.key")


def test_the_package_exports_pyzmqs_names() -> None:
    import zmq.auth.base
    import zmq.auth.certs

    for name in zmq.auth.base.__all__ + zmq.auth.certs.__all__:
        assert hasattr(zsec.auth, name), name
    assert zsec.auth.CURVE_ALLOW_ANY is zsec.CURVE_ALLOW_ANY
