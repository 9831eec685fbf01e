"""The etcd trust sources against hostile or careless writers: what must never be trusted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import zsec
from zsec._etcd import EtcdSettings, EtcdSource

from .helpers import wait_for


@pytest.fixture
def prefix() -> str:
    return f"/h/{uuid.uuid4().hex}/"


@pytest.fixture
def etcd(etcd_server: Any) -> Iterator[Any]:
    if etcd_server.proc is None:
        etcd_server.start()
    yield etcd_server


def put(server: Any, puts: dict[str, bytes], deletes: tuple[str, ...] = ()) -> int:
    with EtcdSettings((server.endpoint,)).connect() as conn:
        return conn.txn({k.encode(): v for k, v in puts.items()}, [d.encode() for d in deletes])


def keys_of(store: zsec.CertStore) -> set[str]:
    return {cert.public_txt for cert in store}


def test_a_rotation_in_one_transaction_trusts_the_new_key_and_drops_the_old(
    etcd: Any, prefix: str
) -> None:
    old, new = zsec.Cert(), zsec.Cert()
    put(etcd, {prefix + old.public_txt: old.public_txt.encode()})
    store = zsec.CertStore(EtcdSource(etcd.endpoint, prefix=prefix))
    try:
        assert store.wait_ready(10)
        assert keys_of(store) == {old.public_txt}
        revision = put(
            etcd, {prefix + new.public_txt: new.public_txt.encode()}, (prefix + old.public_txt,)
        )
        wait_for(lambda: store._source.revision >= revision, what="the rotation")  # type: ignore[attr-defined]
        assert keys_of(store) == {new.public_txt}
    finally:
        store.close()


def test_a_good_entry_rewritten_with_garbage_stops_trusting_its_old_key(
    etcd: Any, prefix: str
) -> None:
    cert = zsec.Cert()
    named = zsec.Cert()
    put(
        etcd,
        {
            prefix + cert.public_txt: cert.public_txt.encode(),
            prefix + "alice": named.public_txt.encode(),
        },
    )
    store = zsec.CertStore(EtcdSource(etcd.endpoint, prefix=prefix))
    try:
        assert store.wait_ready(10)
        assert keys_of(store) == {cert.public_txt, named.public_txt}
        revision = put(
            etcd, {prefix + cert.public_txt: b"garbage", prefix + "alice": b"\xff" * 5000}
        )
        wait_for(lambda: store._source.revision >= revision, what="the rewrite")  # type: ignore[attr-defined]
        assert keys_of(store) == set()
    finally:
        store.close()


def test_a_sibling_prefix_that_merely_starts_alike_is_never_followed(
    etcd: Any, prefix: str
) -> None:
    outsider = zsec.Cert()
    put(etcd, {prefix + "certs2/" + outsider.public_txt: outsider.public_txt.encode()})
    with pytest.raises(zsec.ZsecValueError, match="end with '/'"):
        EtcdSource(etcd.endpoint, prefix=prefix + "certs")


def test_trust_refuses_a_prefix_that_does_not_end_with_a_slash(etcd: Any) -> None:
    import io

    from zsec.cli import main

    out, err = io.StringIO(), io.StringIO()
    args = ["trust", "list", "--endpoints", etcd.endpoint, "--prefix", "/zsec/certs"]
    code = main(args, stdin=io.StringIO(), stdout=out, stderr=err)
    assert code != 0
    assert "must end with '/'" in err.getvalue()


def test_a_fleet_ban_never_outlasts_this_servers_own_ban_length(etcd: Any, prefix: str) -> None:
    now = [1000.0]
    limiter = zsec.FailureLimiter(max_failures=3, window=60, ban=30, clock=lambda: now[0])
    bans = zsec.EtcdBans(etcd.endpoint, prefix=prefix)
    try:
        assert bans.wait_ready(10)
        bans.attach(limiter)
        # A writer to the ban prefix asks for a year, without a lease.
        put(etcd, {prefix + "10.0.0.9": b'{"seconds": 31000000}'})
        wait_for(lambda: bans.banned == ["10.0.0.9"], what="the ban to arrive")
        assert limiter.is_banned(b"10.0.0.9")
        now[0] += 31
        assert not limiter.is_banned(b"10.0.0.9")
    finally:
        bans.close()


def test_an_endpoint_of_another_etcd_cluster_is_read_again_not_resumed(
    tmp_path: Any, prefix: str
) -> None:
    from .etcd_server import EtcdServer
    from .helpers import TcpCutter

    first = EtcdServer(str(tmp_path / "first")).start()
    other = EtcdServer(str(tmp_path / "other")).start()
    cutter = TcpCutter(first.client_port)
    store = None
    try:
        old, new = zsec.Cert(), zsec.Cert()
        put(first, {prefix + old.public_txt: old.public_txt.encode()})
        # The other cluster never held `old`, and is ahead in revisions.
        put(other, {prefix + new.public_txt: new.public_txt.encode()})
        for n in range(10):
            put(other, {f"/elsewhere/{n}": b"x"})
        source = EtcdSource(cutter.endpoint, prefix=prefix, timeout=2)
        store = zsec.CertStore(source)
        assert store.wait_ready(10)
        assert keys_of(store) == {old.public_txt}
        cutter.cut()
        cutter._target = other.client_port  # a DNS change, or an endpoint list mixing clusters
        cutter.restore()
        wait_for(lambda: keys_of(store) == {new.public_txt}, what="the other cluster's set")
        assert source.reloads == 2
    finally:
        if store is not None:
            store.close()
        cutter.close()
        first.stop()
        other.stop()


def test_user_entries_that_are_not_checkable_hashes_are_refused_at_load(
    etcd: Any, prefix: str
) -> None:
    from zsec._passwords import hash_password

    good = hash_password(b"right-pw").decode()
    salt, digest = "c2FsdHNhbHRzYWx0c2FsdA", "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
    put(
        etcd,
        {
            prefix + "alice": good.encode(),
            # Looks hashed, is not: never a password, nor a silent wrong one each login.
            prefix + "eve": b"$argon2id$hunter2",
            # A 2 TiB, 1000-pass hash: every server would try it (and its decoy).
            prefix + "mallory": f"$argon2id$v=19$m=2147483648,t=1,p=1${salt}${digest}".encode(),
            prefix + "trudy": f"$argon2id$v=19$m=65536,t=1000,p=1${salt}${digest}".encode(),
        },
    )
    passwords = zsec.EtcdPasswords(etcd.endpoint, prefix=prefix)
    try:
        assert passwords.wait_ready(10)
        assert len(passwords) == 1
        assert passwords.check(b"alice", b"right-pw") == b""
        assert passwords.check(b"eve", b"hunter2") == b"unknown user"
    finally:
        passwords.close()


def test_odd_entry_names_are_trusted_and_revoked_like_any_other(etcd: Any, prefix: str) -> None:
    certs = [zsec.Cert() for _ in range(3)]
    names = [
        prefix.encode() + b"\xff\xfe-not-utf8",
        prefix.encode() + b"a/b\n",
        prefix.encode() + b"x" * 3000,
    ]
    with EtcdSettings((etcd.endpoint,)).connect() as conn:
        conn.txn({n: c.public_txt.encode() for n, c in zip(names, certs, strict=True)})
        store = zsec.CertStore(EtcdSource(etcd.endpoint, prefix=prefix))
        try:
            assert store.wait_ready(10)
            assert keys_of(store) == {c.public_txt for c in certs}
            # A delete of a key never loaded, then of each odd one.
            revision = conn.txn(deletes=[prefix.encode() + b"never-there", *names])
            wait_for(lambda: store._source.revision >= revision, what="the deletes")  # type: ignore[attr-defined]
            assert keys_of(store) == set()
            assert store.ready
        finally:
            store.close()


def test_a_hostile_ban_value_never_stops_the_fleets_bans(etcd: Any, prefix: str) -> None:
    bans = zsec.EtcdBans(etcd.endpoint, prefix=prefix)
    try:
        assert bans.wait_ready(10)
        # Every server may write the ban prefix; one compromised server writes these.
        put(
            etcd,
            {
                prefix + "10.0.0.1": b"[" * 100_000,
                prefix + "10.0.0.2": b"\xff\xfe",
                prefix + "10.0.0.3": b'{"seconds": 1e999}',
                prefix + "10.0.0.4": b'{"seconds": ' + b"9" * 5000 + b"}",
            },
        )
        put(etcd, {prefix + "10.0.0.9": b'{"seconds": 60}'})
        wait_for(lambda: bans.banned == ["10.0.0.9"], what="the real ban to arrive")
    finally:
        bans.close()


def test_trust_import_replace_writes_nothing_when_a_file_cannot_be_read(
    etcd: Any, prefix: str, tmp_path: Any
) -> None:
    import io
    import os

    from zsec.cli import main

    kept, other = zsec.Cert(), zsec.Cert()
    put(etcd, {prefix + c.public_txt: c.public_txt.encode() for c in (kept, other)})
    kept.save_public(tmp_path / "kept.key")
    # A file the operator cannot read (EACCES when not root; here a FIFO, refused alike)
    # may hold a key the fleet trusts: --replace must not revoke it.
    os.mkfifo(tmp_path / "other.key")
    out, err = io.StringIO(), io.StringIO()
    args = ["trust", "import", "--endpoints", etcd.endpoint, "--prefix", prefix, "--replace"]
    code = main([*args, str(tmp_path)], stdin=io.StringIO(), stdout=out, stderr=err)
    assert code != 0
    assert "other.key" in out.getvalue() + err.getvalue()
    with EtcdSettings((etcd.endpoint,)).connect() as conn:
        _, values = conn.get_prefix(prefix.encode())
    assert {k.decode()[len(prefix) :] for k in values} == {kept.public_txt, other.public_txt}


def test_trust_list_shows_control_characters_escaped_so_no_entry_can_hide(
    etcd: Any, prefix: str
) -> None:
    import io

    from zsec.cli import main

    hidden = zsec.Cert()
    text = f'metadata\n    name = "x\x1b[2Khidden"\ncurve\n    public-key = "{hidden.public_txt}"\n'
    put(etcd, {prefix + hidden.public_txt: text.encode(), prefix + "\x1b[1Abad\r": b"junk"})
    out, err = io.StringIO(), io.StringIO()
    args = ["trust", "list", "--endpoints", etcd.endpoint, "--prefix", prefix]
    assert main(args, stdin=io.StringIO(), stdout=out, stderr=err) == 0
    shown = out.getvalue()
    assert hidden.public_txt in shown
    assert "\x1b" not in shown and "\r" not in shown
    assert "\\x1b[2K" in shown and "\\x1b[1Abad" in shown


def test_a_fleet_ban_cuts_the_live_sessions_of_its_address_as_a_local_ban_does(
    etcd: Any, prefix: str, ctx: Any
) -> None:
    import zmq

    server_cert, client_cert = zsec.Cert(), zsec.Cert()
    store = zsec.CertStore()
    store.insert(client_cert)
    cuts: list[Any] = []
    bans = zsec.EtcdBans(etcd.endpoint, prefix=prefix)
    with zsec.Auth(ctx) as auth:
        try:
            assert bans.wait_ready(10)
            auth.configure_curve("*", store)
            auth.set_failure_limit(5, window=60, ban=60)
            bans.attach(auth.policy.limiter)
            server = ctx.socket(zmq.ROUTER)
            server.linger = 0
            zsec.curve_server(server, server_cert)
            guarded = auth.guard(server, on_cut=cuts.append)
            port = server.bind_to_random_port("tcp://127.0.0.1")
            client = ctx.socket(zmq.DEALER)
            client.linger, client.rcvtimeo = 0, 5000
            zsec.curve_client(client, client_cert, server_cert)
            monitor = zsec.HandshakeMonitor(client)
            client.connect(f"tcp://127.0.0.1:{port}")
            assert monitor.wait().ok
            client.send(b"hello")
            assert guarded.poll(5000) and guarded.recv_multipart()[1] == b"hello"
            # Another server banned this address; the ban arrives through etcd.
            put(etcd, {prefix + "127.0.0.1": b'{"seconds": 60}'})
            assert monitor.wait().event == zmq.EVENT_DISCONNECTED
            wait_for(lambda: len(cuts) > 0, what="the cut")
            assert [cut.reason for cut in cuts] == ["address banned"]
            monitor.close()
            client.close()
            guarded.close()
            server.close()
        finally:
            bans.close()
            store.close()


def test_a_user_rewritten_with_clear_text_is_admitted_by_neither_password(
    etcd: Any, prefix: str
) -> None:
    from zsec._passwords import hash_password

    put(etcd, {prefix + "alice": hash_password(b"old-pw")})
    passwords = zsec.EtcdPasswords(etcd.endpoint, prefix=prefix)
    try:
        assert passwords.wait_ready(10)
        assert passwords.check(b"alice", b"old-pw") == b""  # now remembered as verified
        revision = put(etcd, {prefix + "alice": b"new-clear-pw"})
        wait_for(lambda: passwords._follower.revision >= revision, what="the rewrite")
        assert passwords.check(b"alice", b"old-pw") != b""
        assert passwords.check(b"alice", b"new-clear-pw") != b""
    finally:
        passwords.close()


def test_ban_entries_for_ranges_or_wildcards_ban_nobody(etcd: Any, prefix: str) -> None:
    from zsec._zap import Policy

    from .helpers import req

    limiter = zsec.FailureLimiter(max_failures=3, window=60, ban=60)
    bans = zsec.EtcdBans(etcd.endpoint, prefix=prefix)
    policy = Policy(plain={"*": zsec.PasswordTable({"admin": "right-pw"})}, limiter=limiter)
    try:
        assert bans.wait_ready(10)
        bans.attach(limiter)
        ban = b'{"seconds": 60}'
        wide = ["0.0.0.0/0", "::/0", "*", "127.0.0.0/8", "127.0.0.1/32", "::ffff:127.0.0.1"]
        revision = put(etcd, {prefix: ban, **{prefix + w: ban for w in wide}})
        wait_for(lambda: bans._follower.revision >= revision, what="the bans")
        reply = policy.handle([b"r", b"", *req(b"PLAIN", b"admin", b"right-pw")])
        assert reply is not None and reply[4] == b"200"
    finally:
        bans.close()


def test_a_flood_of_ban_entries_is_held_to_a_bounded_number(
    etcd: Any, prefix: str, monkeypatch: Any
) -> None:
    import zsec._etcd

    monkeypatch.setattr(zsec._etcd, "MAX_SHARED_BANS", 3)  # 100,000 in production
    limiter = zsec.FailureLimiter(max_failures=3, window=60, ban=60)
    bans = zsec.EtcdBans(etcd.endpoint, prefix=prefix)
    try:
        assert bans.wait_ready(10)
        bans.attach(limiter)
        revision = put(etcd, {f"{prefix}10.0.0.{n}": b'{"seconds": 60}' for n in range(5)})
        wait_for(lambda: bans._follower.revision >= revision, what="the flood")
        assert len(bans.banned) == 3 and len(limiter.shared_bans) == 3
        # A ban that ends frees its place for the next.
        revision = put(etcd, {}, (prefix + bans.banned[0],))
        revision = put(etcd, {prefix + "10.0.0.9": b'{"seconds": 60}'})
        wait_for(lambda: bans._follower.revision >= revision, what="the next ban")
        assert "10.0.0.9" in bans.banned and len(bans.banned) == 3
    finally:
        bans.close()


def test_trust_remove_revokes_a_key_trusted_under_any_entry_name(etcd: Any, prefix: str) -> None:
    import io

    from zsec.cli import main

    revoked, kept = zsec.Cert(), zsec.Cert()
    put(
        etcd,
        {
            prefix + "alice": revoked.public_txt.encode(),  # written by hand, not by zsec trust
            prefix + "alice-copy": revoked.public_txt.encode() + b"\n",
            prefix + kept.public_txt: kept.public_txt.encode(),
        },
    )
    out, err = io.StringIO(), io.StringIO()
    args = ["trust", "remove", "--endpoints", etcd.endpoint, "--prefix", prefix]
    code = main([*args, "--", revoked.public_txt], stdin=io.StringIO(), stdout=out, stderr=err)
    assert code == 0, out.getvalue() + err.getvalue()
    assert "Revoked" in out.getvalue()
    with EtcdSettings((etcd.endpoint,)).connect() as conn:
        _, values = conn.get_prefix(prefix.encode())
    assert {k.decode()[len(prefix) :] for k in values} == {kept.public_txt}
