"""The etcd trust source against a real etcd server: snapshot, watch, outages, compaction, auth."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import zsec
from zsec._etcd import EtcdSettings, EtcdSource

from .helpers import RecordingFeed, TcpCutter, wait_for


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


def follow(endpoint: str, prefix: str, **kw: Any) -> tuple[EtcdSource, RecordingFeed]:
    source = EtcdSource(endpoint, prefix=prefix, **kw)
    feed = RecordingFeed()
    source.start(feed)
    return source, feed


def keys_of(feed: RecordingFeed) -> set[str]:
    with feed.lock:
        return set(feed.entries)


def test_a_source_loads_the_prefix_then_follows_puts_and_deletes(etcd: Any, prefix: str) -> None:
    a, b, c = zsec.Cert(), zsec.Cert(), zsec.Cert()
    put_certs(etcd, prefix, a, b)
    put_certs(etcd, prefix[:-1] + "x/", c)  # a sibling prefix is not ours
    source, feed = follow(etcd.endpoint, prefix)
    try:
        assert source.wait_ready(10)
        assert feed.ready
        assert keys_of(feed) == {a.public_txt, b.public_txt}
        assert feed.entries[a.public_txt].public_key == a.public_key
        put_certs(etcd, prefix, c)
        wait_for(lambda: c.public_txt in keys_of(feed), what="a put to arrive")
        delete_certs(etcd, prefix, a)
        wait_for(lambda: a.public_txt not in keys_of(feed), what="a delete to arrive")
        assert keys_of(feed) == {b.public_txt, c.public_txt}
        assert source.reloads == 1
    finally:
        source.close()


def test_changes_made_while_etcd_was_killed_and_restarted_all_arrive_without_a_reload(
    etcd: Any, prefix: str
) -> None:
    kept = [zsec.Cert() for _ in range(10)]
    put_certs(etcd, prefix, *kept)
    source, feed = follow(etcd.endpoint, prefix)
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
        wait_for(lambda: keys_of(feed) == expected, what="every change to arrive")
        assert source.ready
        assert source.reloads == 1  # resumed from its revision, no full reload
    finally:
        source.close()


def test_changes_made_during_a_network_cut_arrive_by_resuming_the_watch(
    etcd: Any, prefix: str
) -> None:
    cutter = TcpCutter(etcd.client_port)
    first = zsec.Cert()
    put_certs(etcd, prefix, first)
    source, feed = follow(cutter.endpoint, prefix)
    try:
        assert source.wait_ready(10)
        cutter.cut()
        wait_for(lambda: source._follower.reconnects >= 1, what="the follower to see the cut")
        added = [zsec.Cert() for _ in range(30)]
        for cert in added:
            put_certs(etcd, prefix, cert)
        delete_certs(etcd, prefix, first)
        assert first.public_txt in keys_of(feed)  # cut off: still the last known set
        assert source.ready  # within max_outage
        cutter.restore()
        wait_for(lambda: keys_of(feed) == {c.public_txt for c in added}, what="the resume")
        assert source.reloads == 1
    finally:
        source.close()
        cutter.close()


def test_history_compacted_during_a_cut_forces_a_full_reload(etcd: Any, prefix: str) -> None:
    cutter = TcpCutter(etcd.client_port)
    old, new = zsec.Cert(), zsec.Cert()
    put_certs(etcd, prefix, old)
    source, feed = follow(cutter.endpoint, prefix)
    try:
        assert source.wait_ready(10)
        cutter.cut()
        wait_for(lambda: source._follower.reconnects >= 1, what="the follower to see the cut")
        delete_certs(etcd, prefix, old)
        revision = put_certs(etcd, prefix, new)
        with conn_for(etcd) as conn:
            conn.compact(revision)
        cutter.restore()
        wait_for(lambda: keys_of(feed) == {new.public_txt}, what="the reload")
        assert source.reloads == 2
        assert feed.resets == 2
        assert source.revision >= revision
    finally:
        source.close()
        cutter.close()


def test_unreachable_at_start_refuses_everyone_then_becomes_ready(etcd: Any, prefix: str) -> None:
    cutter = TcpCutter(etcd.client_port)
    cert = zsec.Cert()
    put_certs(etcd, prefix, cert)
    cutter.cut()
    source, feed = follow(cutter.endpoint, prefix)
    try:
        wait_for(lambda: source._follower.reconnects >= 1, what="a failed first connection")
        assert not source.ready and not feed.ready
        assert "first load" in source.reason
        assert keys_of(feed) == set()
        cutter.restore()
        assert source.wait_ready(10)
        wait_for(lambda: feed.ready, what="the feed to be told")
        assert keys_of(feed) == {cert.public_txt}
    finally:
        source.close()
        cutter.close()


def test_an_outage_longer_than_max_outage_refuses_everyone_until_a_fresh_load(
    etcd: Any, prefix: str
) -> None:
    cutter = TcpCutter(etcd.client_port)
    revoked, kept = zsec.Cert(), zsec.Cert()
    put_certs(etcd, prefix, revoked, kept)
    source, feed = follow(cutter.endpoint, prefix, max_outage=0.2)
    try:
        assert source.wait_ready(10)
        cutter.cut()
        wait_for(lambda: not feed.ready, what="the outage bound to pass")
        assert "unreachable" in source.reason
        delete_certs(etcd, prefix, revoked)
        cutter.restore()
        wait_for(lambda: feed.ready, what="the source to be ready again")
        assert keys_of(feed) == {kept.public_txt}
        assert source.reloads == 2  # not ready meant: read everything again
    finally:
        source.close()
        cutter.close()


def test_keeping_the_last_known_set_is_an_explicit_choice(etcd: Any, prefix: str) -> None:
    cutter = TcpCutter(etcd.client_port)
    cert = zsec.Cert()
    put_certs(etcd, prefix, cert)
    source, feed = follow(cutter.endpoint, prefix, max_outage=None)
    try:
        assert source.wait_ready(10)
        cutter.cut()
        # Five failed attempts take over 0.3 s of backoff: past a short bound.
        wait_for(lambda: source._follower.failures >= 5, what="several failed reconnects")
        assert feed.ready and keys_of(feed) == {cert.public_txt}
    finally:
        source.close()
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
    source, feed = follow(etcd.endpoint, prefix)
    try:
        assert source.wait_ready(10)
        assert keys_of(feed) == {good.public_txt}
        assert "skipped etcd entry 'junk'" in caplog.text
    finally:
        source.close()
