"""The etcd trust source against a real etcd server: snapshot, watch, outages, compaction, auth."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import zsec
from zsec._etcd import EtcdSettings, EtcdSource

from .helpers import TcpCutter, req, wait_for, zap_ask


def cert_text(cert: zsec.Cert) -> bytes:
    return cert.public_txt.encode()  # a bare Z85 key is a valid entry too


@pytest.fixture
def prefix() -> str:
    return f"/t/{uuid.uuid4().hex}/"


@pytest.fixture
def etcd(etcd_server: Any) -> Iterator[Any]:
    """The module's etcd, restarted if a test left it stopped."""
    if etcd_server.proc is None:
        etcd_server.start()
    yield etcd_server
    if etcd_server.proc is None:
        etcd_server.start()


def conn_for(server: Any) -> Any:
    return EtcdSettings((server.endpoint,)).connect()


def put_certs(server: Any, prefix: str, *certs: zsec.Cert) -> int:
    with conn_for(server) as conn:
        return conn.txn({f"{prefix}{c.public_txt}".encode(): cert_text(c) for c in certs})


def delete_certs(server: Any, prefix: str, *certs: zsec.Cert) -> int:
    with conn_for(server) as conn:
        return conn.txn(deletes=[f"{prefix}{c.public_txt}".encode() for c in certs])


def follow(endpoint: str, prefix: str, **kw: Any) -> tuple[EtcdSource, zsec.CertStore]:
    """An etcd source and the store it feeds (closing the store closes the source)."""
    source = EtcdSource(endpoint, prefix=prefix, **kw)
    return source, zsec.CertStore(source)


def keys_of(store: zsec.CertStore) -> set[str]:
    return {cert.public_txt for cert in store}


def test_a_source_loads_the_prefix_then_follows_puts_and_deletes(etcd: Any, prefix: str) -> None:
    a, b, c = zsec.Cert(), zsec.Cert(), zsec.Cert()
    put_certs(etcd, prefix, a, b)
    put_certs(etcd, prefix[:-1] + "x/", c)  # a sibling prefix is not ours
    source, store = follow(etcd.endpoint, prefix)
    try:
        assert source.wait_ready(10)
        assert store.ready
        assert keys_of(store) == {a.public_txt, b.public_txt}
        assert store.lookup(a.public_key) is not None
        put_certs(etcd, prefix, c)
        wait_for(lambda: c.public_txt in keys_of(store), what="a put to arrive")
        delete_certs(etcd, prefix, a)
        wait_for(lambda: a.public_txt not in keys_of(store), what="a delete to arrive")
        assert keys_of(store) == {b.public_txt, c.public_txt}
        assert source.reloads == 1
    finally:
        store.close()


def test_changes_made_while_etcd_was_killed_and_restarted_all_arrive_without_a_reload(
    etcd: Any, prefix: str
) -> None:
    kept = [zsec.Cert() for _ in range(10)]
    put_certs(etcd, prefix, *kept)
    source, store = follow(etcd.endpoint, prefix)
    try:
        assert source.wait_ready(10)
        etcd.kill()  # SIGKILL
        wait_for(lambda: source._follower.reconnects >= 1, what="the follower to see the outage")
        etcd.start()
        added = [zsec.Cert() for _ in range(20)]
        for cert in added:  # one revision each, as operators would
            put_certs(etcd, prefix, cert)
        delete_certs(etcd, prefix, *kept[:5])
        expected = {c.public_txt for c in kept[5:] + added}
        wait_for(lambda: keys_of(store) == expected, what="every change to arrive")
        assert source.ready
        assert source.reloads == 1  # resumed from its revision, no full reload
    finally:
        store.close()


def test_changes_made_during_a_network_cut_arrive_by_resuming_the_watch(
    etcd: Any, prefix: str
) -> None:
    cutter = TcpCutter(etcd.client_port)
    first = zsec.Cert()
    put_certs(etcd, prefix, first)
    source, store = follow(cutter.endpoint, prefix)
    try:
        assert source.wait_ready(10)
        cutter.cut()
        wait_for(lambda: source._follower.reconnects >= 1, what="the follower to see the cut")
        added = [zsec.Cert() for _ in range(30)]
        for cert in added:
            put_certs(etcd, prefix, cert)
        delete_certs(etcd, prefix, first)
        assert first.public_txt in keys_of(store)  # cut off: still the last known set
        assert source.ready  # within max_outage
        cutter.restore()
        wait_for(lambda: keys_of(store) == {c.public_txt for c in added}, what="the resume")
        assert source.reloads == 1
    finally:
        store.close()
        cutter.close()


def test_history_compacted_during_a_cut_forces_a_full_reload(etcd: Any, prefix: str) -> None:
    cutter = TcpCutter(etcd.client_port)
    old, new = zsec.Cert(), zsec.Cert()
    put_certs(etcd, prefix, old)
    source, store = follow(cutter.endpoint, prefix)
    try:
        assert source.wait_ready(10)
        cutter.cut()
        wait_for(lambda: source._follower.reconnects >= 1, what="the follower to see the cut")
        delete_certs(etcd, prefix, old)
        revision = put_certs(etcd, prefix, new)
        with conn_for(etcd) as conn:
            conn.compact(revision)
        cutter.restore()
        wait_for(lambda: keys_of(store) == {new.public_txt}, what="the reload")
        assert source.reloads == 2
        assert source.revision >= revision
    finally:
        store.close()
        cutter.close()


def test_unreachable_at_start_refuses_everyone_then_becomes_ready(etcd: Any, prefix: str) -> None:
    cutter = TcpCutter(etcd.client_port)
    cert = zsec.Cert()
    put_certs(etcd, prefix, cert)
    cutter.cut()
    source, store = follow(cutter.endpoint, prefix)
    try:
        wait_for(lambda: source._follower.reconnects >= 1, what="a failed first connection")
        assert not source.ready and not store.ready
        assert "first load" in source.reason
        assert keys_of(store) == set()
        cutter.restore()
        assert source.wait_ready(10)
        wait_for(lambda: store.ready, what="the store to be ready")
        assert keys_of(store) == {cert.public_txt}
    finally:
        store.close()
        cutter.close()


def test_an_outage_longer_than_max_outage_refuses_everyone_until_a_fresh_load(
    etcd: Any, prefix: str
) -> None:
    cutter = TcpCutter(etcd.client_port)
    revoked, kept = zsec.Cert(), zsec.Cert()
    put_certs(etcd, prefix, revoked, kept)
    source, store = follow(cutter.endpoint, prefix, max_outage=0.2)
    try:
        assert source.wait_ready(10)
        cutter.cut()
        wait_for(lambda: not store.ready, what="the outage bound to pass")
        assert "unreachable" in source.reason
        delete_certs(etcd, prefix, revoked)
        cutter.restore()
        wait_for(lambda: store.ready, what="the source to be ready again")
        assert keys_of(store) == {kept.public_txt}
        assert source.reloads == 2  # not ready meant: read everything again
    finally:
        store.close()
        cutter.close()


def test_keeping_the_last_known_set_is_an_explicit_choice(etcd: Any, prefix: str) -> None:
    cutter = TcpCutter(etcd.client_port)
    cert = zsec.Cert()
    put_certs(etcd, prefix, cert)
    source, store = follow(cutter.endpoint, prefix, max_outage=None)
    try:
        assert source.wait_ready(10)
        cutter.cut()
        # Four failed attempts take over 0.3 s of backoff: past a short bound.
        wait_for(lambda: source._follower.failures >= 4, what="several failed reconnects")
        assert store.ready and keys_of(store) == {cert.public_txt}
    finally:
        store.close()
        cutter.close()


def test_entries_that_are_not_certificates_are_skipped_and_logged(
    etcd: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    good, other = zsec.Cert(), zsec.Cert()
    with conn_for(etcd) as conn:
        conn.txn(
            {
                f"{prefix}{good.public_txt}".encode(): cert_text(good),
                f"{prefix}junk".encode(): b"not a certificate",
                # named after one key, holding another: refused
                f"{prefix}{good.public_txt[:-1]}x".encode(): cert_text(other),
            }
        )
    source, store = follow(etcd.endpoint, prefix)
    try:
        assert source.wait_ready(10)
        assert keys_of(store) == {good.public_txt}
        assert "skipped etcd entry 'junk'" in caplog.text
    finally:
        store.close()


@pytest.fixture(scope="module")
def etcd_with_auth() -> Iterator[Any]:
    """An etcd with RBAC on: root, a read-only server user, an operator, a user with no role."""
    from .etcd_server import EtcdServer

    server = EtcdServer().start()
    try:
        ctl = server.etcdctl
        ctl("user", "add", "root:root-pw", "--interactive=false")
        ctl("user", "grant-role", "root", "root")
        ctl("role", "add", "zsec-reader")
        ctl("role", "grant-permission", "zsec-reader", "--prefix=true", "read", "/zsec/")
        ctl("role", "add", "zsec-writer")
        ctl("role", "grant-permission", "zsec-writer", "--prefix=true", "readwrite", "/zsec/")
        for user, role in (("server1", "zsec-reader"), ("operator", "zsec-writer")):
            ctl("user", "add", f"{user}:{user}-pw", "--interactive=false")
            ctl("user", "grant-role", user, role)
        ctl("user", "add", "nobody:nobody-pw", "--interactive=false")
        ctl("auth", "enable")
        yield server
    finally:
        server.stop()


def test_a_read_only_user_follows_but_cannot_write(etcd_with_auth: Any) -> None:
    from zsec._errors import EtcdPermissionError

    server = etcd_with_auth.endpoint
    cert = zsec.Cert()
    with EtcdSettings((server,), user="operator", password="operator-pw").connect() as conn:
        conn.txn({f"/zsec/certs/{cert.public_txt}".encode(): cert_text(cert)})
    source, store = follow(server, "/zsec/certs/", user="server1", password="server1-pw")
    try:
        assert source.wait_ready(10)
        assert keys_of(store) == {cert.public_txt}
    finally:
        store.close()
    reader = EtcdSettings((server,), user="server1", password="server1-pw")
    with reader.connect() as conn, pytest.raises(EtcdPermissionError) as info:
        conn.txn({b"/zsec/certs/x": b"y"})
    assert "refused user 'server1'" in str(info.value) and "permission denied" in str(info.value)


def test_a_user_without_read_permission_gets_a_clear_error_and_trusts_nobody(
    etcd_with_auth: Any,
) -> None:
    server = etcd_with_auth.endpoint
    source, store = follow(server, "/zsec/certs/", user="nobody", password="nobody-pw")
    try:
        # The reason is set after the failure is counted: wait for the reason itself.
        wait_for(lambda: "refused user" in source.reason, what="a refused first load")
        assert not source.ready and not store.ready
        assert "refused user 'nobody'" in source.reason
        assert "permission denied" in source.reason
    finally:
        store.close()


def test_a_wrong_password_is_a_permission_error_that_does_not_echo_it(
    etcd_with_auth: Any,
) -> None:
    from zsec._errors import EtcdPermissionError

    settings = EtcdSettings((etcd_with_auth.endpoint,), user="server1", password="wrong-pw-42")
    with pytest.raises(EtcdPermissionError) as info:
        settings.connect()
    assert "wrong-pw-42" not in str(info.value)
    assert "wrong-pw-42" not in repr(settings)


def test_a_password_is_never_sent_in_the_clear_beyond_loopback() -> None:
    with pytest.raises(zsec.ZsecValueError, match="without TLS"):
        EtcdSettings(("10.1.2.3:2379",), user="u", password="p")
    EtcdSettings(("https://10.1.2.3:2379",), user="u", password="p")  # TLS: accepted


# -- zsec trust ------------------------------------------------------------------


def trust(server: Any, *args: str, stdin: str = "") -> tuple[int, str, str]:
    import io

    from zsec.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["trust", *args[:1], "--endpoints", server.endpoint, *args[1:]],
        stdin=io.StringIO(stdin),
        stdout=out,
        stderr=err,
    )
    return code, out.getvalue(), err.getvalue()


def test_trust_add_list_and_remove_round_trip(etcd: Any, prefix: str, tmp_path: Any) -> None:
    alice = zsec.Cert()
    alice.set_meta("name", "Alice")
    alice.save(tmp_path / "alice.cert")
    code, out, _ = trust(etcd, "add", "--prefix", prefix, str(tmp_path / "alice.cert"))
    assert code == 0 and f"Trusted {alice.public_txt}" in out
    assert alice.secret_txt not in out  # type: ignore[operator]
    with conn_for(etcd) as conn:
        _, values = conn.get_prefix(prefix.encode())
    value = values[f"{prefix}{alice.public_txt}".encode()]
    assert b"secret-key" not in value and b"Alice" in value
    code, out, _ = trust(etcd, "list", "--prefix", prefix)
    assert code == 0 and f"{alice.public_txt}  name=Alice" in out and "1 trusted" in out
    code, out, _ = trust(etcd, "remove", "--prefix", prefix, "--", alice.public_txt)
    assert code == 0 and f"Revoked {alice.public_txt}" in out
    code, out, _ = trust(etcd, "remove", "--prefix", prefix, str(tmp_path / "alice.cert"))
    assert code == 1 and "Not in etcd" in out
    code, out, _ = trust(etcd, "list", "--prefix", prefix)
    assert "0 trusted" in out


def test_trust_import_writes_a_directory_in_one_transaction(
    etcd: Any, prefix: str, tmp_path: Any
) -> None:
    certs = [zsec.Cert() for _ in range(5)]
    for i, cert in enumerate(certs):
        cert.save(tmp_path / f"c{i}.key")  # the _secret files are skipped
    (tmp_path / "junk.key").write_text("not a certificate")
    stale = zsec.Cert()
    put_certs(etcd, prefix, stale)
    code, out, _ = trust(etcd, "import", "--prefix", prefix, "--replace", str(tmp_path))
    assert code == 0, out
    assert "Imported 5 certificate(s)" in out and "removed 1" in out
    assert "Skipped" in out and "junk.key" in out
    with conn_for(etcd) as conn:
        reply = conn._call(
            conn._kv.Range,
            conn._rpc.RangeRequest(key=prefix.encode(), range_end=prefix.encode()[:-1] + b"0"),
        )
    assert {kv.key.decode()[len(prefix) :] for kv in reply.kvs} == {c.public_txt for c in certs}
    assert len({kv.mod_revision for kv in reply.kvs}) == 1  # one revision: one transaction


def test_trust_import_over_the_transaction_limit_writes_nothing_unless_batched(
    etcd: Any, prefix: str, tmp_path: Any
) -> None:
    for i in range(5):
        zsec.Cert().save_public(tmp_path / f"c{i}.key")
    code, _, err = trust(etcd, "import", "--prefix", prefix, "--max-txn-ops", "3", str(tmp_path))
    assert code == 1 and "more than etcd allows in one transaction (3)" in err
    with conn_for(etcd) as conn:
        assert conn.get_prefix(prefix.encode())[1] == {}
    code, out, _ = trust(
        etcd, "import", "--prefix", prefix, "--max-txn-ops", "3", "--batches", str(tmp_path)
    )
    assert code == 0 and "Imported 5" in out
    with conn_for(etcd) as conn:
        assert len(conn.get_prefix(prefix.encode())[1]) == 5


def test_trust_logs_in_with_a_password_from_stdin_and_reports_refusals(
    etcd_with_auth: Any, tmp_path: Any
) -> None:
    cert = zsec.Cert()
    cert.save_public(tmp_path / "c.key")
    args = ("add", "--user", "operator", "--password-stdin", str(tmp_path / "c.key"))
    code, out, err = trust(etcd_with_auth, *args, stdin="operator-pw\n")
    assert code == 0, err
    args = ("remove", "--user", "server1", "--password-stdin", "--", cert.public_txt)
    code, out, err = trust(etcd_with_auth, *args, stdin="server1-pw\n")
    assert code == 1 and "refused user 'server1'" in err and "permission denied" in err
    assert "server1-pw" not in err + out


def test_trust_remove_takes_a_key_that_starts_with_a_dash_after_a_double_dash(
    etcd: Any, prefix: str
) -> None:
    cert = zsec.Cert.from_keys("-" + zsec.Cert().public_txt[1:])
    put_certs(etcd, prefix, cert)
    code, out, _ = trust(etcd, "remove", "--prefix", prefix, "--", cert.public_txt)
    assert code == 0 and f"Revoked {cert.public_txt}" in out


def test_trust_names_what_it_expected_for_a_bad_key(etcd: Any) -> None:
    code, _, err = trust(etcd, "remove", "not-a-key")
    assert code == 1 and "neither a certificate file nor a public key" in err


def test_trust_reports_an_unreachable_etcd_in_one_line() -> None:
    import io

    from zsec.cli import main

    from .etcd_server import free_port

    err = io.StringIO()
    argv = ["trust", "list", "--endpoints", f"127.0.0.1:{free_port()}", "--timeout", "1"]
    code = main(argv, stdout=io.StringIO(), stderr=err)
    assert code == 1 and "unavailable" in err.getvalue() and err.getvalue().count("\n") == 1


def test_over_tls_a_client_certificate_is_the_etcd_identity(tmp_path: Any) -> None:
    from zsec._errors import EtcdError

    from .etcd_server import EtcdServer, make_tls

    tls = make_tls(str(tmp_path), "root", "server1", "operator")
    with EtcdServer(tls=tls) as server:
        ctl = server.etcdctl
        ctl("user", "add", "root", "--no-password")
        ctl("user", "grant-role", "root", "root")
        ctl("role", "add", "zsec-reader")
        ctl("role", "grant-permission", "zsec-reader", "--prefix=true", "read", "/zsec/")
        ctl("role", "add", "zsec-writer")
        ctl("role", "grant-permission", "zsec-writer", "--prefix=true", "readwrite", "/zsec/")
        for user, role in (("server1", "zsec-reader"), ("operator", "zsec-writer")):
            ctl("user", "add", user, "--no-password")
            ctl("user", "grant-role", user, role)
        ctl("auth", "enable")
        endpoint = f"https://{server.endpoint}"
        cert = zsec.Cert()
        operator = EtcdSettings(
            (endpoint,), ca_cert=tls["ca"], cert=tls["operator"], key=tls["operator-key"]
        )
        with operator.connect() as conn:
            conn.txn({f"/zsec/certs/{cert.public_txt}".encode(): cert_text(cert)})
        source, store = follow(
            endpoint, "/zsec/certs/", ca_cert=tls["ca"], cert=tls["server1"], key=tls["server1-key"]
        )
        try:
            assert source.wait_ready(10)
            assert keys_of(store) == {cert.public_txt}
        finally:
            store.close()
        reader = EtcdSettings(
            (endpoint,), ca_cert=tls["ca"], cert=tls["server1"], key=tls["server1-key"]
        )
        with reader.connect() as conn, pytest.raises(zsec.ZsecError, match="permission denied"):
            conn.txn({b"/zsec/certs/x": b"y"})
        anonymous = EtcdSettings((endpoint,), ca_cert=tls["ca"], timeout=2)  # no client cert
        with anonymous.connect() as conn, pytest.raises(EtcdError):
            conn.get_prefix(b"/zsec/certs/")


# -- with the store: CertStore(EtcdSource), Auth, server processes ----------------


def test_a_store_fed_by_etcd_trusts_exactly_the_prefix_and_fails_closed_until_loaded(
    etcd: Any, prefix: str
) -> None:
    cutter = TcpCutter(etcd.client_port)
    cert = zsec.Cert()
    put_certs(etcd, prefix, cert)
    cutter.cut()
    store = zsec.CertStore(EtcdSource(cutter.endpoint, prefix=prefix))
    try:
        wait_for(lambda: store._source._follower.failures >= 1, what="a failed first load")  # type: ignore[union-attr]
        assert not store.ready and store.lookup(cert.public_key) is None
        cutter.restore()
        assert store.wait_ready(10)
        assert store.lookup(cert.public_key).public_key == cert.public_key  # type: ignore[union-attr]
        delete_certs(etcd, prefix, cert)
        wait_for(lambda: store.lookup(cert.public_key) is None, what="the revocation")
    finally:
        store.close()
        cutter.close()


def test_an_etcd_outage_never_delays_the_authenticator(etcd: Any, prefix: str, ctx: Any) -> None:
    from .helpers import attempt, serve

    cutter = TcpCutter(etcd.client_port)
    server_cert, client, intruder = zsec.Cert(), zsec.Cert(), zsec.Cert()
    put_certs(etcd, prefix, client)
    store = zsec.CertStore(EtcdSource(cutter.endpoint, prefix=prefix, max_outage=None))
    with zsec.Auth(ctx) as auth:
        try:
            assert store.wait_ready(10)
            auth.configure_curve("*", store)
            server, endpoint = serve(ctx, lambda s: zsec.curve_server(s, server_cert))
            cutter.cut()
            etcd.kill()  # and etcd itself is gone
            for cert, ok in ((client, True), (intruder, False)):
                verdict, _ = attempt(
                    ctx, endpoint, lambda s, c=cert: zsec.curve_client(s, c, server_cert)
                )
                assert verdict.ok is ok, verdict
            server.close()
        finally:
            store.close()
            cutter.close()


def test_three_server_processes_all_refuse_a_key_revoked_by_one_write(
    etcd: Any, prefix: str, ctx: Any
) -> None:
    import os
    import subprocess
    import sys

    from .helpers import ROOT, attempt

    server_cert, client = zsec.Cert(), zsec.Cert()
    put_certs(etcd, prefix, client, zsec.Cert())
    env = {
        **os.environ,
        "ZSEC_FLEET_SERVER_KEYS": f"{server_cert.public_txt} {server_cert.secret_txt}",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.etcd_server", "member", etcd.endpoint, prefix],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        endpoints = []
        for proc in procs:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line.startswith("READY "), line
            endpoints.append(line.split()[1])

        def login(endpoint: str) -> zsec.Handshake:
            return attempt(ctx, endpoint, lambda s: zsec.curve_client(s, client, server_cert))[0]

        assert all(login(e).ok for e in endpoints)
        delete_certs(etcd, prefix, client)  # one write
        for proc in procs:
            word, key, _ = proc.stdout.readline().split()  # type: ignore[union-attr]
            assert (word, key) == ("REMOVED", client.public_txt)
        assert all(login(e).zap_status == 400 for e in endpoints)
    finally:
        for proc in procs:
            proc.stdin.close()  # type: ignore[union-attr]
        for proc in procs:
            proc.wait(30)


# -- PLAIN users in etcd -------------------------------------------------------------


def test_plain_users_in_etcd_are_checked_and_followed_and_clear_text_is_ignored(
    etcd: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from zsec._zap import Policy

    from .helpers import decide, fast_hash, req

    with conn_for(etcd) as conn:
        conn.txn(
            {
                f"{prefix}admin".encode(): fast_hash(b"admin-pw"),
                f"{prefix}careless".encode(): b"Clear-Text-Value-9",
            }
        )
    users = zsec.EtcdPasswords(etcd.endpoint, prefix=prefix)
    try:
        assert users.wait_ready(10)
        assert users.check(b"admin", b"admin-pw") == b""
        assert users.check(b"admin", b"guess") == b"wrong password"
        assert users.check(b"careless", b"Clear-Text-Value-9") == b"unknown user"
        policy = Policy(plain={"*": users})  # what the authenticator decides with
        for password, status in ((b"admin-pw", b"200"), (b"guess", b"400")):
            assert decide(policy, req(b"PLAIN", b"admin", password)).status_code == status
        assert "ignored etcd user entry 'careless'" in caplog.text
        assert "Clear-Text-Value-9" not in caplog.text
        version = users.version
        with conn_for(etcd) as conn:
            conn.txn(
                {f"{prefix}guest".encode(): fast_hash(b"guest-pw")}, [f"{prefix}admin".encode()]
            )
        wait_for(lambda: users.version > version, what="the change to arrive")
        assert users.check(b"guest", b"guest-pw") == b""
        assert users.check(b"admin", b"admin-pw") == b"unknown user"
        assert "etcd" in repr(users) and "ready=True" in repr(users)
    finally:
        users.close()
    assert users.check(b"guest", b"guest-pw") != b""  # closed: nobody


def test_plain_users_in_etcd_admit_nobody_until_loaded(etcd: Any, prefix: str) -> None:
    from .helpers import fast_hash

    with conn_for(etcd) as conn:
        conn.txn({f"{prefix}admin".encode(): fast_hash(b"admin-pw")})
    cutter = TcpCutter(etcd.client_port)
    cutter.cut()
    users = zsec.EtcdPasswords(cutter.endpoint, prefix=prefix)
    try:
        wait_for(lambda: users._follower.failures >= 1, what="a failed first load")
        assert not users.ready
        assert users.check(b"admin", b"admin-pw") == b"password file unavailable"
        cutter.restore()
        assert users.wait_ready(10)
        assert users.check(b"admin", b"admin-pw") == b""
    finally:
        users.close()
        cutter.close()


def test_trust_passwd_stores_only_a_hash_and_removes_users(etcd: Any, prefix: str) -> None:
    from zsec._etcd import check_user_entry

    code, out, err = trust(
        etcd, "passwd", "--prefix", prefix, "carol", "--stdin", stdin="Carol-Pw-1\n"
    )
    assert code == 0, err
    assert "Carol-Pw-1" not in out
    with conn_for(etcd) as conn:
        stored = conn.get_prefix(prefix.encode())[1][f"{prefix}carol".encode()]
    assert stored.startswith(b"$argon2id$") and b"Carol-Pw-1" not in stored
    users = zsec.EtcdPasswords(etcd.endpoint, prefix=prefix)
    try:
        assert users.wait_ready(10)
        assert users.check(b"carol", b"Carol-Pw-1") == b""
    finally:
        users.close()
    with pytest.raises(zsec.PasswordError, match="clear-text passwords are never stored"):
        check_user_entry("carol", b"Carol-Pw-1")
    code, out, _ = trust(etcd, "passwd", "--prefix", prefix, "carol", "--remove")
    assert code == 0 and "Removed carol" in out
    code, out, _ = trust(etcd, "passwd", "--prefix", prefix, "carol", "--remove")
    assert code == 1 and "No such user" in out


def test_configure_curve_takes_an_etcd_source_as_it_takes_a_directory(
    etcd: Any, prefix: str, ctx: Any
) -> None:
    member, stranger = zsec.Cert(), zsec.Cert()
    put_certs(etcd, prefix, member)
    source = EtcdSource(etcd.endpoint, prefix=prefix)
    with zsec.Auth(ctx) as auth:
        auth.configure_curve("global", source)  # Auth makes, owns and closes the store
        assert source.wait_ready(10)

        def status(cert: zsec.Cert) -> bytes:
            return zap_ask(ctx, req(b"CURVE", cert.public_key))[0][2]

        assert status(member) == b"200" and status(stranger) == b"400"
        delete_certs(etcd, prefix, member)
        wait_for(lambda: status(member) == b"400", what="revocation by one etcd write")
    assert not source.ready  # stopping the authenticator closed the store it made


def test_a_revocation_by_watch_cuts_the_live_session_as_a_deleted_file_does(
    etcd: Any, prefix: str, ctx: Any
) -> None:
    import zmq

    server_cert, bob, alice = zsec.Cert(), zsec.Cert(), zsec.Cert()
    put_certs(etcd, prefix, bob, alice)
    store = zsec.CertStore(EtcdSource(etcd.endpoint, prefix=prefix))
    cuts: list[Any] = []
    with zsec.Auth(ctx) as auth:
        try:
            assert store.wait_ready(10)
            auth.configure_curve("*", store)
            server = ctx.socket(zmq.ROUTER)
            server.linger = 0
            zsec.curve_server(server, server_cert)
            guarded = auth.guard(server, on_cut=cuts.append)
            port = server.bind_to_random_port("tcp://127.0.0.1")
            clients, monitors = {}, {}
            for name, cert in (("bob", bob), ("alice", alice)):
                client = ctx.socket(zmq.DEALER)
                client.linger, client.rcvtimeo = 0, 5000
                zsec.curve_client(client, cert, server_cert)
                monitors[name] = zsec.HandshakeMonitor(client)
                client.connect(f"tcp://127.0.0.1:{port}")
                assert monitors[name].wait().ok
                clients[name] = client
                # Heard from before the revocation (the guard also cuts, to be safe,
                # silent connections from an address a revoked identity used).
                client.send(name.encode())
                assert guarded.poll(5000) and guarded.recv_multipart()[1] == name.encode()
            delete_certs(etcd, prefix, bob)  # one etcd write, no file anywhere
            assert monitors["bob"].wait().event == zmq.EVENT_DISCONNECTED
            assert monitors["bob"].wait().zap_status == 400
            clients["alice"].send(b"still here")
            assert guarded.poll(5000)
            assert guarded.recv_multipart()[1] == b"still here"
            assert [cut.reason for cut in cuts] == ["key no longer trusted"]
            for name in clients:
                monitors[name].close()
                clients[name].close()
            guarded.close()
            server.close()
        finally:
            store.close()


# -- fleet-wide bans --------------------------------------------------------------


def test_a_ban_on_one_server_holds_on_every_server_until_its_lease_expires(
    etcd: Any, prefix: str
) -> None:
    from zsec._zap import Policy

    from .helpers import req

    def status(policy: Policy, password: bytes) -> bytes:
        reply = policy.handle([b"r", b"", *req(b"PLAIN", b"admin", password)])
        assert reply is not None
        return reply[4]

    servers = []
    for _ in range(2):
        limiter = zsec.FailureLimiter(max_failures=3, window=60, ban=2)
        bans = zsec.EtcdBans(etcd.endpoint, prefix=prefix)
        assert bans.wait_ready(10)
        bans.attach(limiter)
        policy = Policy(plain={"*": zsec.PasswordTable({"admin": "right-pw"})}, limiter=limiter)
        servers.append((policy, bans))
    (a, bans_a), (b, bans_b) = servers
    try:
        assert status(b, b"right-pw") == b"200"
        for _ in range(3):
            assert status(a, b"guess") == b"400"  # a brute-forcer at server A
        assert status(a, b"right-pw") == b"400"  # banned at A
        wait_for(lambda: bans_b.banned == ["127.0.0.1"], what="the ban to reach server B")
        assert status(b, b"right-pw") == b"400"  # and at B, which saw no failure
        # etcd deletes the key when the 2 s lease expires; every server hears it.
        wait_for(lambda: bans_b.banned == [], timeout=15, what="the lease to expire")
        wait_for(lambda: status(b, b"right-pw") == b"200", what="B to admit again")
        wait_for(lambda: status(a, b"right-pw") == b"200", what="A to admit again")
    finally:
        bans_a.close()
        bans_b.close()


def test_endpoints_are_checked_and_a_password_in_one_is_not_echoed() -> None:
    for bad in ("", "ftp://h:1", "http://h:1/path", "h:notaport"):
        with pytest.raises(zsec.ZsecValueError, match="etcd endpoint"):
            EtcdSettings((bad,))
    with pytest.raises(zsec.ZsecValueError) as info:
        EtcdSettings(("http://root:Hunter2-Pw@10.0.0.1:2379",))
    assert "Hunter2-Pw" not in str(info.value) and "never in the endpoint" in str(info.value)
    assert EtcdSettings(("https://[::1]:2379", "127.0.0.1")).tls
    assert EtcdSettings("a:1,b:2").endpoints == ("a:1", "b:2")


def test_reload_reads_etcd_now_and_is_in_force_when_it_returns(etcd: Any, prefix: str) -> None:
    cutter = TcpCutter(etcd.client_port)
    cert = zsec.Cert()
    put_certs(etcd, prefix, cert)
    store = zsec.CertStore(EtcdSource(cutter.endpoint, prefix=prefix, timeout=1))
    try:
        assert store.wait_ready(10)
        cutter.cut()
        delete_certs(etcd, prefix, cert)
        with pytest.raises(zsec.EtcdUnavailable):
            store.reload()  # cannot reach etcd: a clear error, the set unchanged
        assert store.lookup(cert.public_key) is not None
        cutter.restore()
        store.reload()
        assert store.lookup(cert.public_key) is None  # no waiting: in force on return
    finally:
        store.close()
        cutter.close()


def test_a_key_equal_to_the_prefix_names_no_entry_and_spoils_no_revocation(
    etcd: Any, prefix: str
) -> None:
    a, b = zsec.Cert(), zsec.Cert()
    put_certs(etcd, prefix, a, b)
    with conn_for(etcd) as conn:
        conn.txn({prefix.encode(): cert_text(a)})
    source, store = follow(etcd.endpoint, prefix)
    try:
        assert store.wait_ready(10)
        assert keys_of(store) == {a.public_txt, b.public_txt}
        with conn_for(etcd) as conn:  # one transaction: a revocation and the odd key
            conn.txn({prefix.encode(): cert_text(b)}, [f"{prefix}{a.public_txt}".encode()])
        wait_for(lambda: keys_of(store) == {b.public_txt}, what="the revocation")
        assert source.reloads == 1
    finally:
        store.close()


def test_an_etcd_replaced_by_an_older_one_is_read_again_not_trusted_blindly(
    tmp_path: Any, prefix: str
) -> None:
    import shutil

    from .etcd_server import EtcdServer

    server = EtcdServer(str(tmp_path / "etcd")).start()
    try:
        old = [zsec.Cert() for _ in range(5)]
        for cert in old:  # several revisions the new etcd will not have
            put_certs(server, prefix, cert)
        source, store = follow(server.endpoint, prefix)
        try:
            assert store.wait_ready(10)
            server.kill()
            shutil.rmtree(tmp_path / "etcd" / "data")  # a wiped member, as after a bad restore
            server.start()
            new = zsec.Cert()
            put_certs(server, prefix, new)
            wait_for(lambda: keys_of(store) == {new.public_txt}, what="the new etcd's set")
            assert source.reloads == 2
        finally:
            store.close()
    finally:
        server.stop()


def test_a_dead_endpoint_is_skipped_for_the_next_one(etcd: Any, prefix: str) -> None:
    from .etcd_server import free_port

    cert = zsec.Cert()
    put_certs(etcd, prefix, cert)
    dead = f"127.0.0.1:{free_port()}"
    for endpoints in ([dead, etcd.endpoint], [etcd.endpoint, dead]):
        source, store = follow(",".join(endpoints), prefix, timeout=1)
        try:
            assert store.wait_ready(10)
            assert keys_of(store) == {cert.public_txt}
            assert etcd.endpoint in source.describe() and dead in source.describe()
        finally:
            store.close()


def test_trust_uses_the_first_endpoint_that_answers(etcd: Any, prefix: str) -> None:
    import io

    from zsec.cli import main

    from .etcd_server import free_port

    out = io.StringIO()
    endpoints = f"127.0.0.1:{free_port()},{etcd.endpoint}"
    argv = ["trust", "list", "--endpoints", endpoints, "--prefix", prefix, "--timeout", "1"]
    assert main(argv, stdout=out) == 0
    assert "0 trusted certificate(s)" in out.getvalue()


def test_the_authenticator_checks_plain_logins_against_etcd(
    etcd: Any, prefix: str, ctx: Any
) -> None:
    from .helpers import fast_hash, login, serve

    with conn_for(etcd) as conn:
        conn.txn({f"{prefix}admin".encode(): fast_hash(b"admin-pw")})
    users = zsec.EtcdPasswords(etcd.endpoint, prefix=prefix)
    with zsec.Auth(ctx) as auth:
        try:
            assert users.wait_ready(10)
            auth.configure_plain("*", users)
            server, endpoint = serve(ctx, zsec.plain_server)
            assert login(ctx, endpoint, "admin", "admin-pw").ok
            assert login(ctx, endpoint, "admin", "guess").zap_status == 400
            with conn_for(etcd) as conn:  # the operator removes admin: fleet-wide
                conn.txn(deletes=[f"{prefix}admin".encode()])
            wait_for(lambda: "admin" not in users, what="the removal")
            assert login(ctx, endpoint, "admin", "admin-pw").zap_status == 400
            server.close()
        finally:
            users.close()
