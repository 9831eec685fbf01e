"""TrustSource and TrustFeed: feeding a CertStore from a source of your own."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from typing import Any

import pytest
import zmq

import zsec

from .helpers import wait_for


class DictSource(zsec.TrustSource):
    """A source whose truth is a dict, changed by the test."""

    def __init__(self, entries: dict[str, zsec.Cert] | None = None, ready: bool = True) -> None:
        self.truth = dict(entries or {})
        self.feed: zsec.TrustFeed | None = None
        self.ready = ready
        self.closed = 0
        self.refreshed = 0

    def start(self, feed: zsec.TrustFeed) -> None:
        self.feed = feed
        feed.reset(self.truth)
        if self.ready:
            feed.set_ready(True)

    def close(self) -> None:
        self.closed += 1

    def describe(self) -> str:
        return "dict test"

    def refresh(self) -> None:
        self.refreshed += 1
        assert self.feed is not None
        self.feed.reset(self.truth)


def test_a_store_fed_by_a_source_trusts_its_entries() -> None:
    alice = zsec.Cert()
    source = DictSource({"users/alice": alice})
    with zsec.CertStore(source) as store:
        found = store.lookup(alice.public_key)
        assert found is not None and found.secret_key is None  # a public copy
        assert found is not alice
        assert store.ready and store.location is None
        assert "dict test" in repr(store)
    assert source.closed == 1


def test_updates_and_resets_are_published_as_one_change() -> None:
    alice, bob, carol = zsec.Cert(), zsec.Cert(), zsec.Cert()
    changes: list[zsec.StoreChange] = []
    source = DictSource({"alice": alice, "bob": bob})
    with zsec.CertStore(source, on_change=changes.append) as store:
        assert source.feed is not None
        changes.clear()
        source.feed.update(put={"carol": carol}, delete=["alice"])
        assert carol.public_key in store and alice.public_key not in store
        (change,) = changes
        assert change.store == "dict test"
        assert [c.public_key for c in change.added] == [carol.public_key]
        assert [c.public_key for c in change.removed] == [alice.public_key]
        assert change.sources == {carol.public_key: "carol", alice.public_key: "alice"}
        changes.clear()
        source.feed.reset({"bob": bob, "alice": alice})
        (change,) = changes
        assert [c.public_key for c in change.added] == [alice.public_key]
        assert [c.public_key for c in change.removed] == [carol.public_key]


def test_a_store_is_not_ready_until_its_source_says_so(caplog: pytest.LogCaptureFixture) -> None:
    alice = zsec.Cert()
    source = DictSource({"alice": alice}, ready=False)
    with zsec.CertStore(source) as store:
        assert not store.ready
        assert store.lookup(alice.public_key) is None  # fail closed
        assert store.wait_ready(0.01) is False
        assert source.feed is not None
        feed = source.feed
        threading.Timer(0.05, feed.set_ready, (True,)).start()
        assert store.wait_ready(10) is True
        assert store.lookup(alice.public_key) is not None
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="zsec.store"):
            feed.set_ready(False, "lost the connection")
            feed.set_ready(False, "lost the connection")  # no second line
        assert store.lookup(alice.public_key) is None
        lines = [r.getMessage() for r in caplog.records if "not ready" in r.getMessage()]
        assert len(lines) == 1 and "lost the connection" in lines[0]


def test_inserted_certificates_stay_trusted_while_the_source_is_not_ready() -> None:
    mine = zsec.Cert()
    source = DictSource(ready=False)
    with zsec.CertStore(source) as store:
        store.insert(mine)
        assert mine.public_key in store


def test_reload_asks_the_source_to_catch_up() -> None:
    alice = zsec.Cert()
    source = DictSource()
    with zsec.CertStore(source) as store:
        source.truth["alice"] = alice
        store.reload()
        assert source.refreshed == 1 and alice.public_key in store


def test_closing_a_store_is_not_a_mass_revocation() -> None:
    alice = zsec.Cert()
    changes: list[zsec.StoreChange] = []
    source = DictSource({"alice": alice})
    store = zsec.CertStore(source, on_change=changes.append)
    feed = source.feed
    assert feed is not None
    changes.clear()
    store.close()
    assert changes == [] and len(store) == 0 and not store.ready
    feed.update(put={"late": zsec.Cert()})  # a source thread that outlives the store
    assert len(store) == 0 and changes == []


def test_a_source_that_refuses_to_start_leaves_nothing_behind() -> None:
    class Refusing(DictSource):
        def start(self, feed: zsec.TrustFeed) -> None:
            raise ConnectionError("no database")

    source = Refusing()
    with pytest.raises(ConnectionError):
        zsec.CertStore(source)
    assert source.closed == 1


def test_a_store_dropped_without_close_is_collected_and_closes_its_source() -> None:
    source = DictSource({"alice": zsec.Cert()})
    store = zsec.CertStore(source)
    ref = weakref.ref(store)
    del store
    gc.collect()
    assert ref() is None
    assert source.closed == 1


def test_a_feed_refuses_what_is_not_a_certificate() -> None:
    source = DictSource()
    with zsec.CertStore(source):
        assert source.feed is not None
        with pytest.raises(zsec.ZsecTypeError, match="must be a Cert"):
            source.feed.update(put={"x": b"not a cert"})  # type: ignore[dict-item]
        with pytest.raises(zsec.ZsecTypeError):
            source.feed.reset({7: zsec.Cert()})  # type: ignore[dict-item]


def test_listeners_run_outside_the_store_lock() -> None:
    source = DictSource()
    seen: list[bool] = []
    with zsec.CertStore(source) as store:

        def listener(change: zsec.StoreChange) -> None:
            if seen:
                return
            # Another thread can publish while a listener runs.
            other = threading.Thread(target=store.insert, args=(zsec.Cert(),))
            other.start()
            other.join(5)
            seen.append(not other.is_alive())

        unsubscribe = store.subscribe(listener)
        assert source.feed is not None
        source.feed.update(put={"a": zsec.Cert()})
        unsubscribe()
        wait_for(lambda: seen == [True], what="listener finished")


def test_the_readme_example_of_a_source_runs() -> None:
    import re

    from .helpers import ROOT

    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- trust-source-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no TrustSource example"
    exec(compile(match.group(1), "README.md", "exec"), {"__name__": "readme_example"})  # noqa: S102


def test_an_authenticator_takes_a_source_and_closes_the_store_it_made(
    ctx: zmq.Context[Any],
) -> None:
    alice = zsec.Cert()
    source = DictSource({"alice": alice})
    with zsec.Auth(ctx) as auth:
        auth.configure_curve("*", source)
        assert source.feed is not None and source.closed == 0
    assert source.closed == 1


def test_a_feed_refuses_a_single_name_given_as_the_names_to_delete() -> None:
    cert = zsec.Cert()
    source = DictSource({"certs/alice": cert})
    with zsec.CertStore(source) as store:
        assert source.feed is not None
        # A str is iterable: taken as names it would delete "c", "e", ...
        # and leave alice trusted without a word.
        for names in ("certs/alice", b"certs/alice"):
            with pytest.raises(zsec.ZsecTypeError, match="delete"):
                source.feed.update(delete=names)  # type: ignore[arg-type]
        with pytest.raises(zsec.ZsecTypeError, match="mapping"):
            source.feed.update(put=[("certs/bob", zsec.Cert())])  # type: ignore[arg-type]
        assert store.lookup(cert.public_key) is not None
        source.feed.update(delete=["certs/alice"])
        assert store.lookup(cert.public_key) is None
