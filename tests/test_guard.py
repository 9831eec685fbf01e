"""Live revocation: a revoked peer's messages stop, its connections close, the rest carry on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

import zsec
from zsec._monitor import subscribe as monitor_subscribe

from .helpers import bind_loopback, socket, wait_for

IDENTITIES = 18
PER_IDENTITY = 3  # 54 connections per scenario, all from 127.0.0.1 but the NULL victim's
VICTIM = 0
VICTIM_IP = "127.0.0.2"  # NULL has one identity for all: it is revoked by address
BEFORE, AFTER = 1, 3  # messages per connection before and after the revocation


# -- libzmq behaviour the guard relies on -------------------------------------------


def test_every_received_frame_names_the_connection_it_came_from(ctx: zmq.Context[Any]) -> None:
    auth = zsec.Auth(ctx)
    try:
        auth.configure_curve("*", zsec.CURVE_ALLOW_ANY)
        server_cert = zsec.Cert()
        cases = [(zmq.ROUTER, zmq.DEALER), (zmq.PULL, zmq.PUSH), (zmq.XPUB, zmq.SUB)]
        for server_kind, client_kind in cases:
            with socket(ctx, server_kind) as server, socket(ctx, client_kind) as client:
                zsec.curve_server(server, server_cert)
                if server_kind == zmq.XPUB:
                    server.setsockopt(zmq.XPUB_VERBOSE, 1)
                accepted: list[int] = []
                unsubscribe = monitor_subscribe(
                    server,
                    lambda e, v, seen=accepted: seen.append(v) if e == zmq.EVENT_ACCEPTED else None,
                )
                endpoint = bind_loopback(server)
                client_cert = zsec.Cert()
                zsec.curve_client(client, client_cert, server_cert)
                client.connect(endpoint)
                if client_kind == zmq.SUB:
                    client.subscribe(b"topic")
                else:
                    client.send_multipart([b"part1", b"part2"])
                frames = server.recv_multipart(copy=False)
                wait_for(lambda seen=accepted: seen, what="ACCEPTED")
                for frame in frames:
                    assert frame.get(zmq.SRCFD) == accepted[0]
                    assert frame.get("User-Id") == client_cert.public_txt
                    assert frame.get("X-Zsec-Grant")
                unsubscribe()
    finally:
        auth.stop()


def test_monitor_events_carry_the_descriptor_of_the_connection(ctx: zmq.Context[Any]) -> None:
    events: list[tuple[int, int]] = []
    with socket(ctx, zmq.PULL) as server, socket(ctx, zmq.PUSH) as client:
        unsubscribe = monitor_subscribe(server, lambda e, v: events.append((e, v)))
        endpoint = bind_loopback(server)
        client.connect(endpoint)
        client.send(b"x")
        assert server.recv(copy=False).get(zmq.SRCFD) >= 0
        fd = wait_for(lambda: [v for e, v in events if e == zmq.EVENT_ACCEPTED])[0]
        local, peer = zsec._guard.endpoints(fd) or (b"", b"")
        assert zsec._guard.ip_port(local) == ("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))
        assert zsec._guard.ip_port(peer)[0] == "127.0.0.1"
        client.close(linger=0)
        wait_for(lambda: (zmq.EVENT_DISCONNECTED, fd) in events, what="DISCONNECTED with the fd")
        unsubscribe()


# -- the scenarios --------------------------------------------------------------------


@dataclass
class Scene:
    """An authenticator, a guarded server and its clients, for one mechanism and socket type."""

    mechanism: str
    kind: int
    tmp: Path
    ctx: zmq.Context[Any]
    auth: zsec.Auth = field(init=False)
    server: Any = field(init=False)
    guarded: Any = field(init=False)
    cuts: list[zsec.Cut] = field(default_factory=list)
    clients: list[tuple[int, zmq.Socket[Any], zsec.HandshakeMonitor]] = field(default_factory=list)
    certs: list[zsec.Cert] = field(default_factory=list)

    def start(self, server_ctx: zmq.Context[Any]) -> None:
        self.auth = zsec.Auth(self.ctx)
        server_cert = zsec.Cert()
        self.server = server_ctx.socket(self.kind)
        self.server.linger = 0
        if self.mechanism == "CURVE":
            trusted = self.tmp / "trusted"
            trusted.mkdir(mode=0o700)
            for i in range(IDENTITIES):
                cert = zsec.Cert()
                cert.save_public(trusted / f"client{i}.key")
                self.certs.append(cert)
            self.auth.configure_curve("*", str(trusted))
            zsec.curve_server(self.server, server_cert)
        elif self.mechanism == "PLAIN":
            self.write_passwords(range(IDENTITIES))
            self.auth.configure_plain("*", self.tmp / "passwords")
            zsec.plain_server(self.server)
        else:
            zsec.null_server(self.server)
        if self.kind == zmq.XPUB:
            self.server.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.guarded = self.auth.guard(self.server, on_cut=self.cuts.append)
        endpoint = bind_loopback(self.server)
        client_kind = {zmq.ROUTER: zmq.DEALER, zmq.PULL: zmq.PUSH, zmq.XPUB: zmq.SUB}[self.kind]
        for i in range(IDENTITIES):
            for _ in range(PER_IDENTITY):
                client = self.ctx.socket(client_kind)
                client.linger = 0
                if self.mechanism == "CURVE":
                    zsec.curve_client(client, self.certs[i], server_cert)
                elif self.mechanism == "PLAIN":
                    zsec.plain_client(client, f"user{i}", f"pw-{i}")
                monitor = zsec.HandshakeMonitor(client)
                target = endpoint
                if self.mechanism == "NULL" and i == VICTIM:
                    target = endpoint.replace("tcp://", f"tcp://{VICTIM_IP}:0;")
                client.connect(target)
                self.clients.append((i, client, monitor))
        for _, _, monitor in self.clients:
            assert monitor.wait(10).ok

    def write_passwords(self, users: Any) -> None:
        path = self.tmp / "passwords"
        temp = self.tmp / "passwords.new"
        temp.write_text("".join(f"user{i}=pw-{i}\n" for i in users))
        temp.chmod(0o600)
        os.replace(temp, path)

    def say(self, n: int, who: Any = None) -> set[bytes]:
        """Every chosen client sends message ``n``; returns the payloads."""
        sent = set()
        for c, (i, client, _) in enumerate(self.clients):
            if who is not None and i not in who:
                continue
            payload = f"{i}.{c}.{n}".encode()
            if self.kind == zmq.XPUB:
                client.subscribe(payload)
            elif i == VICTIM:
                # A refused client has no peer left: its send would block.
                with contextlib.suppress(zmq.Again):
                    client.send(payload, zmq.NOBLOCK)
            else:
                client.send(payload)
            sent.add(payload)
        return sent

    @staticmethod
    def payload(kind: int, message: list[bytes]) -> bytes:
        if kind == zmq.ROUTER:
            return message[1]
        if kind == zmq.XPUB:
            assert message[0][:1] == b"\x01"
            return message[0][1:]
        return message[0]

    def revoke(self) -> None:
        if self.mechanism == "CURVE":
            (self.tmp / "trusted" / f"client{VICTIM}.key").unlink()
        elif self.mechanism == "PLAIN":
            self.write_passwords(i for i in range(IDENTITIES) if i != VICTIM)
        else:
            self.auth.deny(VICTIM_IP)

    def close(self) -> None:
        for _, client, monitor in self.clients:
            monitor.close()
            client.close(linger=0)
        self.guarded.close(0)
        self.auth.stop()


def _victim_monitors(scene: Scene) -> list[zsec.HandshakeMonitor]:
    return [m for i, _, m in scene.clients if i == VICTIM]


def _check_after(scene: Scene) -> None:
    """Every victim connection was cut and its reconnect refused; nobody else was touched."""
    victims = _victim_monitors(scene)
    for monitor in victims:
        assert monitor.wait(10).event == zmq.EVENT_DISCONNECTED
        assert monitor.wait(10).zap_status == 400
    assert len(scene.cuts) == len(victims)
    for cut in scene.cuts:
        assert cut.mechanism == scene.mechanism and cut.domain == "global"
        assert cut.address.startswith(VICTIM_IP if scene.mechanism == "NULL" else "127.0.0.1:")
    for i, _, monitor in scene.clients:
        if i != VICTIM:
            with pytest.raises(zsec.HandshakeTimeout):
                monitor.wait(0)


@pytest.fixture
def sync_scene(request: Any, tmp_path: Path) -> Iterator[Scene]:
    ctx: zmq.Context[Any] = zmq.Context()
    mechanism, kind = request.param
    scene = Scene(mechanism, kind, tmp_path, ctx)
    try:
        scene.start(ctx)
        yield scene
    finally:
        if hasattr(scene, "guarded"):
            scene.close()
        ctx.destroy(linger=0)


SCENES = [
    (mechanism, kind)
    for mechanism in ("CURVE", "PLAIN", "NULL")
    for kind in (zmq.ROUTER, zmq.PULL, zmq.XPUB)
]
IDS = [f"{m}-{zmq.SocketType(k).name}" for m, k in SCENES]


@pytest.mark.parametrize("sync_scene", SCENES, ids=IDS, indirect=True)
def test_a_revoked_peer_is_cut_off_and_every_other_peer_carries_on(sync_scene: Scene) -> None:
    scene = sync_scene
    guarded = scene.guarded
    guarded.rcvtimeo = 5000
    expected = scene.say(0)
    received = {scene.payload(scene.kind, guarded.recv_multipart()) for _ in expected}
    assert received == expected
    # Queued at the server before the revocation, read after it: must be dropped.
    scene.say(1, who={VICTIM})
    scene.revoke()
    wait_for(lambda: len(scene.cuts) == PER_IDENTITY, what="the victim's connections cut")
    _check_after(scene)
    expected = set()
    for n in range(2, 2 + AFTER):
        expected |= scene.say(n, who=set(range(1, IDENTITIES)))
        scene.say(n, who={VICTIM})  # queued in the refused client: never arrives
    received = set()
    while len(received) < len(expected):
        assert guarded.poll(5000) == zmq.POLLIN
        received.add(scene.payload(scene.kind, guarded.recv_multipart()))
    assert received == expected
    assert guarded.poll(50) == 0  # nothing left, and nothing from the victim


@pytest.mark.parametrize(("mechanism", "kind"), SCENES, ids=IDS)
def test_a_revoked_peer_is_cut_off_under_asyncio(mechanism: str, kind: int, tmp_path: Path) -> None:
    actx = zmq.asyncio.Context()
    ctx: zmq.Context[Any] = zmq.Context.shadow(actx.underlying)
    scene = Scene(mechanism, kind, tmp_path, ctx)

    async def run() -> None:
        guarded = scene.guarded
        expected = scene.say(0)
        received = set()
        for _ in expected:
            message = await asyncio.wait_for(guarded.recv_multipart(), 5)
            received.add(scene.payload(kind, message))
        assert received == expected
        scene.say(1, who={VICTIM})
        scene.revoke()
        while len(scene.cuts) < PER_IDENTITY:
            await asyncio.sleep(0.005)
        expected = set()
        for n in range(2, 2 + AFTER):
            expected |= scene.say(n, who=set(range(1, IDENTITIES)))
        received = set()
        while len(received) < len(expected):
            assert await guarded.poll(5000) == zmq.POLLIN
            received.add(scene.payload(kind, await guarded.recv_multipart()))
        assert received == expected
        assert await guarded.poll(50) == 0

    try:
        scene.start(actx)
        asyncio.run(run())
        _check_after(scene)
    finally:
        if hasattr(scene, "guarded"):
            scene.close()
        actx.destroy(linger=0)


# -- the details ---------------------------------------------------------------------


def test_messages_queued_before_a_revocation_are_dropped_not_delivered(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o700)
    server_cert, victim = zsec.Cert(), zsec.Cert()
    victim.save_public(trusted / "victim.key")
    auth = zsec.Auth(ctx)
    auth.configure_curve("*", str(trusted))
    cuts: list[zsec.Cut] = []
    try:
        with socket(ctx, zmq.PULL) as server, socket(ctx, zmq.PUSH) as client:
            zsec.curve_server(server, server_cert)
            guarded = auth.guard(server, on_cut=cuts.append)
            zsec.curve_client(client, victim, server_cert)
            client.connect(bind_loopback(server))
            client.send(b"first")
            assert guarded.recv() == b"first"
            for n in range(10):
                client.send(b"%d" % n)
            wait_for(lambda: server.poll(0), what="a message queued at the server")
            (trusted / "victim.key").unlink()
            wait_for(lambda: cuts, what="the cut")
            assert guarded.poll(200) == 0
            assert guarded.dropped >= 1
            with pytest.raises(zmq.Again):
                guarded.recv(zmq.NOBLOCK)
    finally:
        auth.stop()


def test_a_password_change_cuts_the_user_and_the_new_password_gets_in(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    path = tmp_path / "passwords"
    path.write_text("alice=old\nbob=bob-pw\n")
    auth = zsec.Auth(ctx)
    auth.configure_plain("*", path)
    cuts: list[zsec.Cut] = []
    auth.subscribe_cuts(cuts.append)
    try:
        with socket(ctx, zmq.PULL) as server:
            zsec.plain_server(server)
            guarded = auth.guard(server)
            endpoint = bind_loopback(server)
            clients = {}
            for user, pw in (("alice", "old"), ("bob", "bob-pw")):
                client = ctx.socket(zmq.PUSH)
                client.linger = 0
                zsec.plain_client(client, user, pw)
                client.connect(endpoint)
                client.send(user.encode())
                clients[user] = client
            assert {guarded.recv(), guarded.recv()} == {b"alice", b"bob"}
            temp = tmp_path / "passwords.new"
            temp.write_text("alice=new\nbob=bob-pw\n")
            os.replace(temp, path)
            wait_for(lambda: cuts, what="alice cut")
            assert [(c.identity, c.reason) for c in cuts] == [("alice", "password changed")]
            newcomer = ctx.socket(zmq.PUSH)
            newcomer.linger = 0
            zsec.plain_client(newcomer, "alice", "new")
            newcomer.connect(endpoint)
            newcomer.send(b"alice again")
            clients["bob"].send(b"bob again")
            assert {guarded.recv(), guarded.recv()} == {b"alice again", b"bob again"}
            for client in (*clients.values(), newcomer):
                client.close(linger=0)
    finally:
        auth.stop()


def test_a_silent_connection_from_the_revoked_address_is_cut_too(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o700)
    server_cert, victim = zsec.Cert(), zsec.Cert()
    victim.save_public(trusted / "victim.key")
    auth = zsec.Auth(ctx)
    auth.configure_curve("*", str(trusted))
    cuts: list[zsec.Cut] = []
    try:
        with socket(ctx, zmq.ROUTER) as server, socket(ctx, zmq.DEALER) as client:
            zsec.curve_server(server, server_cert)
            auth.guard(server, on_cut=cuts.append)
            endpoint = bind_loopback(server)
            zsec.curve_client(client, victim, server_cert)
            with zsec.HandshakeMonitor(client) as monitor:
                client.connect(endpoint)
                assert monitor.wait(5).ok
                wait_for(lambda: auth._warden._watches[0].accepted, what="ACCEPTED seen")
                (trusted / "victim.key").unlink()
                assert monitor.wait(5).event == zmq.EVENT_DISCONNECTED
                assert monitor.wait(5).zap_status == 400
            assert [c.identity for c in cuts] == ["?"]
    finally:
        auth.stop()


def test_a_ban_cuts_the_banned_address_and_cut_reconnects_do_not_ban_bystanders(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o700)
    server_cert, victim, bystander = zsec.Cert(), zsec.Cert(), zsec.Cert()
    victim.save_public(trusted / "victim.key")
    bystander.save_public(trusted / "bystander.key")
    auth = zsec.Auth(ctx)
    auth.configure_curve("*", str(trusted))
    auth.set_failure_limit(3, window=60, ban=60)
    cuts: list[zsec.Cut] = []
    try:
        with socket(ctx, zmq.PULL) as server:
            zsec.curve_server(server, server_cert)
            guarded = auth.guard(server, on_cut=cuts.append)
            endpoint = bind_loopback(server)
            clients = []
            for cert in [victim] * 5 + [bystander]:
                client = ctx.socket(zmq.PUSH)
                client.linger = 0
                zsec.curve_client(client, cert, server_cert)
                monitor = zsec.HandshakeMonitor(client)
                client.connect(endpoint)
                assert monitor.wait(5).ok
                client.send(b"hello")
                clients.append((client, monitor))
            for _ in clients:
                guarded.recv()
            (trusted / "victim.key").unlink()
            for _, monitor in clients[:5]:
                assert monitor.wait(5).event == zmq.EVENT_DISCONNECTED
                assert monitor.wait(5).zap_status == 400
            # Five refused reconnects from 127.0.0.1, over a limit of 3: no ban.
            limiter = auth.policy.limiter
            assert limiter is not None and limiter.banned == []
            clients[5][0].send(b"still here")
            assert guarded.recv() == b"still here"
            # Three strangers from the same address: a real ban, which cuts the bystander.
            for _ in range(3):
                stranger = ctx.socket(zmq.PUSH)
                stranger.linger = 0
                zsec.curve_client(stranger, zsec.Cert(), server_cert)
                monitor = zsec.HandshakeMonitor(stranger)
                stranger.connect(endpoint)
                # Refused (400); the last one may instead be cut by the ban it starts.
                assert not monitor.wait(5).ok
                clients.append((stranger, monitor))
            wait_for(lambda: any(c.reason == "address banned" for c in cuts), what="ban cut")
            assert clients[5][1].wait(5).event == zmq.EVENT_DISCONNECTED
            for client, monitor in clients:
                monitor.close()
                client.close(linger=0)
    finally:
        auth.stop()


def test_a_guarded_rep_answers_a_revoked_request_instead_of_delivering_it(
    ctx: zmq.Context[Any],
) -> None:
    auth = zsec.Auth(ctx)
    try:
        with socket(ctx, zmq.REP) as server, socket(ctx, zmq.REQ) as client:
            zsec.null_server(server)
            guarded = auth.guard(server)
            client.connect(bind_loopback(server))
            client.send(b"first")
            assert guarded.recv() == b"first"
            guarded.send(b"ok")
            assert client.recv() == b"ok"
            client.send(b"second")
            wait_for(lambda: server.poll(0), what="the request queued at the server")
            auth.deny("127.0.0.1")
            assert guarded.poll(200) == 0
            assert guarded.dropped == 1
            # The REP socket answered, so it can take the next request.
            assert server.poll(0, zmq.POLLOUT) == 0
    finally:
        auth.stop()


def test_guard_refuses_sockets_it_cannot_protect(ctx: zmq.Context[Any]) -> None:
    auth = zsec.Auth(ctx)
    try:
        with socket(ctx, zmq.PUB) as pub, socket(ctx, zmq.PULL) as bare:
            zsec.null_server(pub)
            with pytest.raises(zsec.SocketConfigError, match="XPUB"):
                auth.guard(pub)
            with pytest.raises(zsec.SocketConfigError, match="ZAP domain"):
                auth.guard(bare)
        other: zmq.Context[Any] = zmq.Context()
        try:
            with socket(other, zmq.PULL) as foreign:
                zsec.null_server(foreign)
                with pytest.raises(zsec.SocketConfigError, match="context"):
                    auth.guard(foreign)
        finally:
            other.destroy(linger=0)
        with pytest.raises(zsec.ZsecTypeError):
            auth.guard("not a socket")
    finally:
        auth.stop()


def test_stopping_the_authenticator_cuts_nobody(ctx: zmq.Context[Any], tmp_path: Path) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o700)
    server_cert, client_cert = zsec.Cert(), zsec.Cert()
    client_cert.save_public(trusted / "client.key")
    auth = zsec.Auth(ctx)
    auth.configure_curve("*", str(trusted))  # a store the authenticator owns and closes
    cuts: list[zsec.Cut] = []
    with socket(ctx, zmq.PULL) as server, socket(ctx, zmq.PUSH) as client:
        zsec.curve_server(server, server_cert)
        guarded = auth.guard(server, on_cut=cuts.append)
        zsec.curve_client(client, client_cert, server_cert)
        client.connect(bind_loopback(server))
        client.send(b"before")
        assert guarded.recv() == b"before"
        auth.stop()
        client.send(b"after")
        assert guarded.recv() == b"after"
        assert cuts == []


def test_a_cut_is_logged_once_without_secrets(
    ctx: zmq.Context[Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "passwords"
    path.write_text("carol=Sup3rS3cret\n")
    auth = zsec.Auth(ctx)
    auth.configure_plain("*", path)
    done = threading.Event()
    auth.subscribe_cuts(lambda cut: done.set())
    try:
        with socket(ctx, zmq.PULL) as server, socket(ctx, zmq.PUSH) as client:
            zsec.plain_server(server)
            guarded = auth.guard(server)
            zsec.plain_client(client, "carol", "Sup3rS3cret")
            client.connect(bind_loopback(server))
            client.send(b"hi")
            assert guarded.recv() == b"hi"
            with caplog.at_level("INFO", logger="zsec"):
                path.write_text("")
                assert done.wait(5)
                client.send(b"more")  # dropped, and not logged again
                assert guarded.poll(100) == 0
        lines = [r.getMessage() for r in caplog.records if r.name == "zsec.guard"]
        assert len(lines) == 1 and "carol" in lines[0] and "user removed" in lines[0]
        assert "Sup3rS3cret" not in caplog.text
    finally:
        auth.stop()


def test_judge_names_what_changed_since_the_grant() -> None:
    from zsec._guard import judge
    from zsec._zap import Policy

    cert = zsec.Cert()
    store = zsec.CertStore()
    store.insert(cert)
    table = zsec.PasswordTable({"dave": "pw1"})
    policy = Policy(plain={"*": table}, curve={"global": store, "*": zsec.CURVE_ALLOW_ANY})
    user = cert.public_txt.encode()
    curve_tag = policy.grant_tag(b"CURVE", b"global", user)
    plain_tag = policy.grant_tag(b"PLAIN", b"global", b"dave")
    assert curve_tag is not None and plain_tag is not None
    curve = "7." + curve_tag.decode()
    plain = "8." + plain_tag.decode()
    assert judge(policy, b"global", curve, cert.public_txt, "192.0.2.1") == ""
    assert judge(policy, b"global", plain, "dave", "192.0.2.1") == ""
    assert judge(policy, b"other", curve, cert.public_txt, "192.0.2.1") == (
        "CURVE configuration changed"  # admitted by the store, now under allow-any
    )
    table.replace({"dave": "pw2"})
    assert judge(policy, b"global", plain, "dave", "192.0.2.1") == "password changed"
    table.replace({})
    assert judge(policy, b"global", plain, "dave", "192.0.2.1") == "user removed"
    changed = Policy(curve={"*": zsec.CertStore()}, deny=["192.0.2.0/24"])
    assert judge(changed, b"global", curve, cert.public_txt, "192.0.2.1") == (
        "address is in the deny list"
    )
    assert judge(changed, b"global", curve, cert.public_txt, "198.51.100.1") == (
        "key no longer trusted"
    )
    assert judge(policy, b"global", "9.n", "anonymous", "192.0.2.1") == ""
    assert judge(policy, b"global", "9.zz", "anonymous", "192.0.2.1") == (
        "not admitted by this authenticator"
    )


def test_a_custom_curve_user_id_does_not_hide_the_key_from_the_guard(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o700)
    server_cert, alice, bob = zsec.Cert(), zsec.Cert(), zsec.Cert()
    alice.save_public(trusted / "alice.key")
    bob.save_public(trusted / "bob.key")
    names = {alice.public_key: "alice", bob.public_key: "bob"}
    auth = zsec.Auth(ctx)
    auth.configure_curve("*", str(trusted))
    auth.curve_user_id = lambda key: names[key]
    cuts: list[zsec.Cut] = []
    try:
        with socket(ctx, zmq.PULL) as server:
            zsec.curve_server(server, server_cert)
            guarded = auth.guard(server, on_cut=cuts.append)
            endpoint = bind_loopback(server)
            clients = {}
            for name, cert in (("alice", alice), ("bob", bob)):
                client = ctx.socket(zmq.PUSH)
                client.linger = 0
                zsec.curve_client(client, cert, server_cert)
                client.connect(endpoint)
                client.send(name.encode())
                clients[name] = client
            frames = [guarded.recv(copy=False) for _ in range(2)]
            assert {f.get("User-Id") for f in frames} == {"alice", "bob"}
            (trusted / "bob.key").unlink()
            wait_for(lambda: cuts, what="bob cut")
            assert [(c.identity, c.reason) for c in cuts] == [("bob", "key no longer trusted")]
            clients["alice"].send(b"alice again")
            assert guarded.recv() == b"alice again"
            for client in clients.values():
                client.close(linger=0)
    finally:
        auth.stop()
