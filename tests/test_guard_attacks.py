"""Attacks on live revocation: forged grants, missed revocations, wrong cuts."""

from __future__ import annotations

import asyncio
import signal
import socket as socketlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

import zsec

from .helpers import bind_loopback, login, wait_for

SERVER_CERTS: dict[zmq.Socket[Any], zsec.Cert] = {}


def _curve_pair(
    ctx: zmq.Context[Any], tmp_path: Path, client_cert: zsec.Cert, kind: int = zmq.ROUTER
) -> tuple[zsec.Auth, Any, zmq.Socket[Any], zmq.Socket[Any], Path, list[zsec.Cut]]:
    """A guarded CURVE server trusting ``client_cert`` and a client connected to it.

    The server's certificate is left in ``SERVER_CERTS[server]``.
    """
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o700)
    client_cert.save_public(trusted / "client.key")
    auth = zsec.Auth(ctx)
    auth.configure_curve("*", str(trusted))
    server_cert = zsec.Cert()
    server = ctx.socket(kind)
    SERVER_CERTS[server] = server_cert
    server.linger = 0
    server.rcvtimeo = 5000
    zsec.curve_server(server, server_cert)
    cuts: list[zsec.Cut] = []
    guarded = auth.guard(server, on_cut=cuts.append)
    endpoint = bind_loopback(server)
    client = ctx.socket({zmq.ROUTER: zmq.DEALER, zmq.PULL: zmq.PUSH}[kind])
    client.linger = 0
    client.rcvtimeo = 5000
    zsec.curve_client(client, client_cert, server_cert)
    client.connect(endpoint)
    return auth, guarded, server, client, trusted / "client.key", cuts


def test_a_certificate_cannot_name_its_own_grant(ctx: zmq.Context[Any], tmp_path: Path) -> None:
    # Certificate metadata is written by whoever made the certificate; placed
    # before the authenticator's grant, a forged grant would win (libzmq keeps
    # the first of two properties with one name) and outlive the revocation.
    cert = zsec.Cert()
    cert.set_meta("X-Zsec-Grant", "1.n")
    auth, guarded, server, client, path, cuts = _curve_pair(ctx, tmp_path, cert)
    try:
        client.send(b"before")
        frames = guarded.recv_multipart(copy=False)
        assert frames[-1].bytes == b"before"
        assert frames[0].get("X-Zsec-Grant") != "1.n"
        _revoke_with_a_message_queued(server, client, path, cuts)
        with pytest.raises(zmq.Again):
            guarded.recv_multipart(zmq.NOBLOCK)
    finally:
        client.close(linger=0)
        server.close(linger=0)
        auth.stop()


def _revoke_with_a_message_queued(
    server: zmq.Socket[Any], client: zmq.Socket[Any], path: Path, cuts: list[zsec.Cut]
) -> None:
    """Queue a message at the server, then delete the client's certificate and await the cut."""
    client.send(b"{}")
    assert server.poll(5000, zmq.POLLIN)
    path.unlink()
    wait_for(lambda: cuts, what="the revoked connection cut")


def test_every_receive_variant_of_a_guarded_socket_drops_a_revoked_peer(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    cert = zsec.Cert()
    auth, guarded, server, client, path, cuts = _curve_pair(ctx, tmp_path, cert, zmq.PULL)
    try:
        client.send(b"{}")
        assert guarded.recv_multipart()[-1] == b"{}"
        _revoke_with_a_message_queued(server, client, path, cuts)
        for name in ("recv_json", "recv_pyobj", "recv_string"):
            with pytest.raises(zmq.Again):
                getattr(guarded, name)(zmq.NOBLOCK)
        with pytest.raises(zmq.Again):
            guarded.recv_serialized(list, zmq.NOBLOCK)
        with pytest.raises(AttributeError):
            guarded.recv_into(bytearray(8), flags=zmq.NOBLOCK)
        assert server.poll(0) == 0  # dropped, not left for a later receive
    finally:
        client.close(linger=0)
        server.close(linger=0)
        auth.stop()


def test_every_receive_variant_of_an_async_guarded_socket_drops_a_revoked_peer(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o700)
    cert = zsec.Cert()
    cert.save_public(trusted / "client.key")
    auth = zsec.Auth(ctx)
    auth.configure_curve("*", str(trusted))
    server_cert = zsec.Cert()
    actx = zmq.asyncio.Context.shadow(ctx.underlying)
    server = actx.socket(zmq.PULL)
    server.linger = 0
    zsec.curve_server(server, server_cert)
    cuts: list[zsec.Cut] = []
    guarded = auth.guard(server, on_cut=cuts.append)
    endpoint = bind_loopback(server)
    client = ctx.socket(zmq.PUSH)
    client.linger = 0
    zsec.curve_client(client, cert, server_cert)
    client.connect(endpoint)

    async def scenario() -> None:
        client.send(b"{}")
        assert await guarded.recv_multipart() == [b"{}"]
        client.send(b"{}")
        assert await server.poll(5000, zmq.POLLIN)
        (trusted / "client.key").unlink()
        wait_for(lambda: cuts, what="the revoked connection cut")
        for name in ("recv_json", "recv_pyobj", "recv_string"):
            with pytest.raises(zmq.Again):
                await getattr(guarded, name)(zmq.NOBLOCK)
        with pytest.raises(zmq.Again):
            await guarded.recv_serialized(list, zmq.NOBLOCK)
        assert await server.poll(0) == 0

    try:
        asyncio.run(scenario())
    finally:
        client.close(linger=0)
        server.close(linger=0)
        auth.stop()


def test_a_user_removed_from_a_password_table_is_dropped_when_the_call_returns(
    ctx: zmq.Context[Any],
) -> None:
    table = zsec.PasswordTable({"alice": "pw-alice", "bob": "pw-bob"})
    auth = zsec.Auth(ctx)
    auth.configure_plain("*", table)
    server = ctx.socket(zmq.PULL)
    server.linger = 0
    zsec.plain_server(server)
    guarded = auth.guard(server)
    endpoint = bind_loopback(server)
    client = ctx.socket(zmq.PUSH)
    client.linger = 0
    zsec.plain_client(client, "alice", "pw-alice")
    client.connect(endpoint)
    try:
        client.send(b"before")
        assert guarded.poll(5000) and guarded.recv() == b"before"
        client.send(b"after")
        assert server.poll(5000, zmq.POLLIN)
        table.replace({"bob": "pw-bob"})  # a configuration call: in force when it returns
        with pytest.raises(zmq.Again):
            guarded.recv(zmq.NOBLOCK)
    finally:
        client.close(linger=0)
        server.close(linger=0)
        auth.stop()


def test_connections_that_never_authenticated_do_not_buy_excuses_from_the_limiter(
    ctx: zmq.Context[Any],
) -> None:
    # An attacker opens raw TCP connections that never handshake; when some
    # identity from its address is revoked, they are cut as silent suspects.
    # Each cut must not excuse one more failed login of that address.
    table = zsec.PasswordTable({"alice": "pw-alice", "mallory": "pw-mallory"})
    auth = zsec.Auth(ctx)
    auth.configure_plain("*", table)
    auth.set_failure_limit(3, window=600, ban=600)
    server = ctx.socket(zmq.PULL)
    server.linger = 0
    zsec.plain_server(server)
    cuts: list[zsec.Cut] = []
    guarded = auth.guard(server, on_cut=cuts.append)
    endpoint = bind_loopback(server)
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    client = ctx.socket(zmq.PUSH)
    client.linger = 0
    zsec.plain_client(client, "mallory", "pw-mallory")
    client.connect(endpoint)
    raw = [socketlib.create_connection((host, int(port)), timeout=5) for _ in range(20)]
    try:
        client.send(b"hello")
        assert guarded.poll(5000) and guarded.recv() == b"hello"
        watch = guarded._watch
        wait_for(lambda: len(watch.accepted) >= len(raw) + 1, what="every connection accepted")
        table.replace({"alice": "pw-alice"})
        wait_for(lambda: len(cuts) >= len(raw) + 1, what="mallory and the silent connections cut")
        for _ in range(8):
            login(ctx, endpoint, "alice", "guess")
        assert auth.policy.limiter is not None
        assert auth.policy.limiter.banned, "wrong passwords went unpunished"
    finally:
        for s in raw:
            s.close()
        client.close(linger=0)
        server.close(linger=0)
        auth.stop()


def test_a_revoked_message_read_after_its_connection_closed_cuts_no_other_connection(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    mallory = zsec.Cert()
    auth, guarded, server, client, path, cuts = _curve_pair(ctx, tmp_path, mallory, zmq.PULL)
    alice_cert = zsec.Cert()
    alice_cert.save_public(path.parent / "alice.key")
    alices: list[subprocess.Popen[bytes]] = []
    try:
        client.send(b"one")
        assert guarded.recv() == b"one"
        watch = guarded._watch
        (fd,) = list(watch.conns)
        client.send(b"two")
        assert server.poll(5000, zmq.POLLIN)  # queued at the server
        client.close(linger=0)
        wait_for(lambda: fd not in watch.accepted, what="mallory's DISCONNECTED")
        # Alice's clients (another address, another process, so that this
        # process's descriptors are the server's) until one gets mallory's number.
        endpoint = server.getsockopt_string(zmq.LAST_ENDPOINT)
        while fd not in watch.accepted and len(alices) < 10:
            alices.append(_alice_process(alice_cert, SERVER_CERTS[server], endpoint))
            wait_for(lambda: len(watch.accepted) >= len(alices), what="alice accepted")
        assert fd in watch.accepted, "the descriptor number was not reused"
        path.unlink()
        store = auth.policy.curve["*"]
        wait_for(lambda: store.lookup(mallory.public_key) is None, what="the store to forget her")
        with pytest.raises(zmq.Again):
            guarded.recv(zmq.NOBLOCK)  # mallory's queued message: dropped
        assert [c for c in cuts if c.address.startswith("127.0.0.2")] == []
        for alice in alices:
            alice.send_signal(signal.SIGUSR1)
        for _ in alices:
            assert guarded.poll(5000) and guarded.recv() == b"still here"
    finally:
        for alice in alices:
            alice.kill()
            alice.wait()
        client.close(linger=0)
        server.close(linger=0)
        auth.stop()


_ALICE = """
import signal, sys, zmq, zsec
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
client_cert = zsec.Cert.from_keys(sys.argv[1], sys.argv[2])
server_cert = zsec.Cert.from_keys(sys.argv[3])
ctx = zmq.Context()
sock = ctx.socket(zmq.PUSH)
sock.linger = 1000
zsec.curve_client(sock, client_cert, server_cert)
sock.connect(sys.argv[4])
signal.sigwait({signal.SIGUSR1})
sock.send(b"still here")
sock.close()
ctx.term()
"""


def _alice_process(cert: zsec.Cert, server: zsec.Cert, endpoint: str) -> subprocess.Popen[bytes]:
    """A CURVE PUSH client in its own process, connected from 127.0.0.2; sends on SIGUSR1.

    No pipe to it: the test needs this process's new descriptors to be the server's.
    """
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _ALICE,
            cert.public_txt,
            cert.secret_txt or "",
            server.public_txt,
            endpoint.replace("tcp://", "tcp://127.0.0.2:0;"),
        ],
        stdin=subprocess.DEVNULL,
    )


def test_a_revoked_user_cut_many_times_buys_no_guesses_at_other_users(
    ctx: zmq.Context[Any],
) -> None:
    # Each cut excuses the cut client's refused reconnect. A client that
    # never reconnects must not leave that excuse for someone else's failures.
    table = zsec.PasswordTable({"alice": "pw-alice", "mallory": "pw-mallory"})
    auth = zsec.Auth(ctx)
    auth.configure_plain("*", table)
    auth.set_failure_limit(3, window=600, ban=600)
    server = ctx.socket(zmq.PULL)
    server.linger = 0
    zsec.plain_server(server)
    cuts: list[zsec.Cut] = []
    guarded = auth.guard(server, on_cut=cuts.append)
    endpoint = bind_loopback(server)
    clients = []
    try:
        for _ in range(8):
            client = ctx.socket(zmq.PUSH)
            client.linger = 0
            client.reconnect_ivl = -1  # never redials: keeps its excuse unused
            zsec.plain_client(client, "mallory", "pw-mallory")
            client.connect(endpoint)
            clients.append(client)
            client.send(b"hello")
            assert guarded.poll(5000) and guarded.recv() == b"hello"
        table.replace({"alice": "pw-alice"})
        wait_for(lambda: len(cuts) >= len(clients), what="mallory's connections cut")
        for _ in range(8):
            login(ctx, endpoint, "alice", "guess")
        assert auth.policy.limiter is not None
        assert auth.policy.limiter.banned, "wrong passwords went unpunished"
    finally:
        for client in clients:
            client.close(linger=0)
        server.close(linger=0)
        auth.stop()


def test_concurrent_async_receives_never_mix_the_frames_of_two_messages(
    ctx: zmq.Context[Any],
) -> None:
    auth = zsec.Auth(ctx)
    auth.configure_curve("*", zsec.CURVE_ALLOW_ANY)
    server_cert = zsec.Cert()
    actx = zmq.asyncio.Context.shadow(ctx.underlying)
    server = actx.socket(zmq.ROUTER)
    server.linger = 0
    zsec.curve_server(server, server_cert)
    guarded = auth.guard(server)
    endpoint = bind_loopback(server)
    clients = []
    for i in range(4):
        client = ctx.socket(zmq.DEALER)
        client.linger = 0
        client.routing_id = b"client%d" % i
        zsec.curve_client(client, zsec.Cert(), server_cert)
        client.connect(endpoint)
        clients.append(client)
    rounds = 50

    async def scenario() -> list[list[bytes]]:
        for n in range(rounds):
            for client in clients:
                client.send_multipart([client.routing_id, b"%d" % n])
        total = rounds * len(clients)
        got: list[list[bytes]] = []
        enough = asyncio.Event()

        async def reader() -> None:
            while True:
                got.append(await guarded.recv_multipart())
                if len(got) >= total:
                    enough.set()

        readers = [asyncio.ensure_future(reader()) for _ in range(3)]
        try:
            await asyncio.wait_for(enough.wait(), 10)
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        return got

    try:
        messages = asyncio.run(scenario())
        for message in messages:
            assert len(message) == 3 and message[0] == message[1], message
    finally:
        for client in clients:
            client.close(linger=0)
        server.close(linger=0)
        auth.stop()


def test_silent_connections_of_a_key_shared_by_many_hosts_are_all_cut(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    # One key used from more addresses than the guard remembers per
    # identity (a fleet sharing a client key): revoking it must still close
    # every connection it admitted, not only those from the first addresses.
    cert = zsec.Cert()
    auth, guarded, server, first, path, cuts = _curve_pair(ctx, tmp_path, cert, zmq.PULL)
    endpoint = server.getsockopt_string(zmq.LAST_ENDPOINT)
    clients = [first]
    monitors = []
    try:
        for i in range(2, 2 + zsec._guard._ADDRESSES_PER_IDENTITY + 4):
            client = ctx.socket(zmq.PUSH)
            client.linger = 0
            zsec.curve_client(client, cert, SERVER_CERTS[server])
            monitor = zsec.HandshakeMonitor(client)
            client.connect(endpoint.replace("tcp://", f"tcp://127.0.1.{i}:0;"))
            clients.append(client)
            monitors.append(monitor)
        for monitor in monitors:
            assert monitor.wait(10).ok
        wait_for(lambda: len(guarded._watch.accepted) >= len(clients), what="all accepted")
        path.unlink()
        wait_for(lambda: len(cuts) >= len(clients), what="every connection of the key cut")
    finally:
        for monitor in monitors:
            monitor.close()
        for client in clients:
            client.close(linger=0)
        server.close(linger=0)
        auth.stop()
