"""Decision and trust-change events: their fields, their logging, and subscribers that misbehave."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

import zsec
from zsec._keys import z85_encode

from .helpers import (
    CLIENT_PUBLIC,
    bind_loopback,
    req,
    slot,
    socket,
    wait_for,
    zap_ask,
)


class Recorder:
    """A subscriber that keeps every event it is given."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    def decisions(self) -> list[zsec.Decision]:
        return [e for e in self.events if isinstance(e, zsec.Decision)]

    def trust(self) -> list[zsec.TrustChange]:
        return [e for e in self.events if isinstance(e, zsec.TrustChange)]


def _recorded(auth: zsec.Auth, ctx: zmq.Context[Any], *requests: list[bytes]) -> list[Any]:
    recorder = Recorder()
    auth.subscribe(recorder)
    zap_ask(ctx, *requests)
    wait_for(lambda: len(recorder.decisions()) >= len(requests), what="decision events")
    return recorder.decisions()


def _cert_dir(tmp_path: Path, **names: zsec.Cert) -> Path:
    certs = tmp_path / "certs"
    certs.mkdir(mode=0o700)
    for name, cert in names.items():
        cert.set_meta("name", name)
        cert.save_public(certs / f"{name}.key")
    return certs


def test_a_decision_event_per_mechanism_and_verdict(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    passwords = tmp_path / "passwords.txt"
    passwords.write_text("admin=Pl41n-Value\n")
    passwords.chmod(0o600)
    alice = zsec.Cert()
    auth.configure_plain("global", passwords)
    auth.configure_curve("global", _cert_dir(tmp_path, alice=alice))
    auth.configure_curve("open", zsec.CURVE_ALLOW_ANY)
    stranger = zsec.Cert()
    before = time.time()
    events = _recorded(
        auth,
        ctx,
        req(b"NULL"),
        req(b"PLAIN", b"admin", b"Pl41n-Value"),
        req(b"PLAIN", b"admin", b"Wr0ng-Value"),
        req(b"PLAIN", b"nobody", b"Wr0ng-Value"),
        req(b"PLAIN", b"admin", b"Pl41n-Value", domain=b"elsewhere"),
        req(b"CURVE", alice.public_key),
        req(b"CURVE", stranger.public_key),
        req(b"CURVE", stranger.public_key, domain=b"open"),
        req(b"CURVE", b"short-key"),
    )
    after = time.time()
    got = [
        (e.mechanism, e.domain, e.username, e.key, e.cert_name, e.verdict, e.status, e.reason_code)
        for e in events
    ]
    assert got == [
        ("NULL", "global", None, None, None, "allowed", 200, "ok"),
        ("PLAIN", "global", "admin", None, None, "allowed", 200, "ok"),
        ("PLAIN", "global", "admin", None, None, "refused", 400, "wrong-password"),
        ("PLAIN", "global", "nobody", None, None, "refused", 400, "unknown-user"),
        ("PLAIN", "elsewhere", "admin", None, None, "refused", 400, "not-configured"),
        ("CURVE", "global", None, alice.public_txt, "alice", "allowed", 200, "ok"),
        ("CURVE", "global", None, stranger.public_txt, None, "refused", 400, "unknown-key"),
        ("CURVE", "open", None, stranger.public_txt, None, "allowed", 200, "ok"),
        ("CURVE", "global", None, None, None, "refused", 400, "malformed"),
    ]
    assert events[2].reason == "wrong password"
    assert "32 bytes" in events[-1].reason
    for event in events:
        assert event.address == "127.0.0.1"
        assert before - 1 <= event.time <= after + 1
        assert 0 < event.latency < 5
        assert event.kind == "decision"
        # Immutable values.
        with pytest.raises(AttributeError):
            event.verdict = "allowed"  # type: ignore[misc]
    assert "Pl41n-Value" not in repr(events) and "Wr0ng-Value" not in repr(events)
    assert "Wr0ng-Value" not in str([e.to_dict() for e in events])


def test_address_rules_and_bans_appear_in_decisions_and_trust_events(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    auth.deny("192.0.2.66")
    auth.set_failure_limit(2, window=60, ban=120)
    recorder = Recorder()
    auth.subscribe(recorder)
    zap_ask(
        ctx,
        req(b"NULL", address=b"192.0.2.66"),
        req(b"NULL", address=b"192.0.2.66"),
        req(b"NULL", address=b"192.0.2.66"),
    )
    wait_for(lambda: len(recorder.decisions()) == 3)
    assert [d.reason_code for d in recorder.decisions()] == ["denied", "denied", "banned"]
    assert recorder.decisions()[0].reason == "address is in the deny list"
    bans = recorder.trust()
    assert [(b.action, b.address, b.duration) for b in bans] == [
        ("ban-started", "192.0.2.66", 120.0)
    ]


def test_allow_list_refusal_is_an_event(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    auth.allow("10.0.0.0/8")
    (event,) = _recorded(auth, ctx, req(b"NULL"))
    assert (event.verdict, event.reason_code) == ("refused", "not-allowed")


def test_an_internal_failure_is_an_error_event(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    class Broken(zsec.CertStore):
        def lookup(self, public_key: bytes | str) -> zsec.Cert | None:
            raise RuntimeError("disk on fire")

    with Broken() as store:
        auth.configure_curve("*", store)
        (event,) = _recorded(auth, ctx, req(b"CURVE", bytes(32)))
    assert (event.verdict, event.status, event.reason_code) == ("error", 500, "internal-error")


def test_trust_changes_name_the_key_the_certificate_and_the_store(
    auth: zsec.Auth, tmp_path: Path
) -> None:
    alice, bob = zsec.Cert(), zsec.Cert()
    certs = _cert_dir(tmp_path, alice=alice)
    auth.configure_curve("global", certs)
    recorder = Recorder()
    auth.subscribe(recorder)
    bob.set_meta("name", "bob")
    bob.save_public(certs / "bob.key")
    added = wait_for(lambda: [t for t in recorder.trust() if t.action == "key-added"])
    assert (added[0].key, added[0].cert_name, added[0].store, added[0].domain) == (
        bob.public_txt,
        "bob",
        str(certs),
        "global",
    )
    (certs / "alice.key").unlink()
    revoked = wait_for(lambda: [t for t in recorder.trust() if t.action == "key-revoked"])
    assert (revoked[0].key, revoked[0].cert_name) == (alice.public_txt, "alice")
    shutil.rmtree(certs)
    gone = wait_for(lambda: [t for t in recorder.trust() if t.action == "store-unavailable"])
    assert gone[0].store == str(certs)
    assert any(t.action == "key-revoked" and t.key == bob.public_txt for t in recorder.trust())


def test_a_raising_subscriber_changes_no_decision(
    ctx: zmq.Context[Any], auth: zsec.Auth, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def explode(event: Any) -> None:
        calls.append(event)
        raise ValueError("subscriber bug")

    auth.subscribe(explode)
    recorder = Recorder()
    auth.subscribe(recorder)
    replies = zap_ask(ctx, *[req(b"NULL", request_id=str(i).encode()) for i in range(20)])
    assert [r[2] for r in replies] == [b"200"] * 20
    wait_for(lambda: len(calls) == 20 and len(recorder.decisions()) == 20)
    assert auth.running
    # Reported once per interval, not once per event.
    reports = [r for r in caplog.records if "raised" in r.getMessage()]
    assert len(reports) == 1 and "subscriber bug" in caplog.text


def test_a_blocking_subscriber_delays_no_decision_and_its_drops_are_counted(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    release = threading.Event()
    blocked = []

    def block(event: Any) -> None:
        blocked.append(event)
        release.wait(30)

    auth.subscribe(block, queue_size=4)
    recorder = Recorder()
    auth.subscribe(recorder)
    try:
        wait_for(lambda: True)
        for round_ in range(5):
            replies = zap_ask(
                ctx, *[req(b"NULL", request_id=f"{round_}-{i}".encode()) for i in range(40)]
            )
            assert all(r[2] == b"200" for r in replies)
            assert auth.flush_events()
        # The other subscriber got everything; the blocked one held its queue.
        wait_for(lambda: len(recorder.decisions()) == 200)
        assert auth.dropped_events >= 200 - 4 - 1
    finally:
        release.set()
    wait_for(lambda: len(blocked) + auth.dropped_events == 200)


def test_unsubscribe_stops_delivery(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    recorder = Recorder()
    unsubscribe = auth.subscribe(recorder)
    zap_ask(ctx, req(b"NULL"))
    wait_for(lambda: recorder.events)
    unsubscribe()
    zap_ask(ctx, req(b"NULL"))
    assert auth.flush_events()
    assert len(recorder.events) == 1


def test_refusals_are_logged_at_info_and_allowed_at_debug_by_default(
    ctx: zmq.Context[Any], auth: zsec.Auth, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zsec.auth")
    auth.deny("192.0.2.66")
    zap_ask(ctx, req(b"NULL"), req(b"NULL", address=b"192.0.2.66"), req(b"CURVE", b"short-key"))
    assert auth.flush_events()
    records = [r for r in caplog.records if r.name == "zsec.auth"]
    assert [r.getMessage() for r in records] == [
        "DENIED (deny list) domain=global address=192.0.2.66: address is in the deny list",
        "DENIED (CURVE) domain=global address=127.0.0.1: CURVE key must be 32 bytes, got 9",
    ]
    record = records[0]
    assert record.levelno == logging.INFO
    assert (record.zsec_event, record.zsec_verdict, record.zsec_reason_code) == (  # type: ignore[attr-defined]
        "decision",
        "refused",
        "denied",
    )
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="zsec.auth")
    zap_ask(ctx, req(b"NULL"))
    assert auth.flush_events()
    allowed = [r for r in caplog.records if r.getMessage().startswith("ALLOWED")]
    assert [r.levelno for r in allowed] == [logging.DEBUG]
    caplog.clear()
    caplog.set_level(logging.INFO, logger="zsec.auth")
    auth.verbose = True
    zap_ask(ctx, req(b"NULL"))
    assert auth.flush_events()
    assert [r.levelno for r in caplog.records if r.getMessage().startswith("ALLOWED")] == [
        logging.INFO
    ]


def test_trust_changes_are_logged_with_the_file_name_and_certificate_name(
    auth: zsec.Auth, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zsec.trust")
    certs = _cert_dir(tmp_path)
    auth.configure_curve("global", certs)
    carol = zsec.Cert()
    carol.set_meta("name", "carol")
    carol.save_public(certs / "carol.key")
    wait_for(lambda: "key-added" in caplog.text)
    assert auth.flush_events()
    (record,) = [r for r in caplog.records if r.name == "zsec.trust"]
    message = record.getMessage()
    assert carol.public_txt in message and "(carol)" in message and str(certs) in message
    assert record.zsec_cert_name == "carol"  # type: ignore[attr-defined]


def test_a_client_key_is_z85_in_events(ctx: zmq.Context[Any], auth: zsec.Auth) -> None:
    auth.configure_curve("*", zsec.CURVE_ALLOW_ANY)
    key = zsec.Cert.from_keys(CLIENT_PUBLIC).public_key
    (event,) = _recorded(auth, ctx, req(b"CURVE", key))
    assert event.key == CLIENT_PUBLIC == z85_encode(key)


def test_a_guard_cut_is_a_session_cut_event(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    server_cert, client_cert = zsec.Cert(), zsec.Cert()
    certs = _cert_dir(tmp_path, carol=client_cert)
    auth.configure_curve("*", certs)
    auth.audit_log(tmp_path / "audit.jsonl")
    auth.enable_metrics()
    recorder = Recorder()
    auth.subscribe(recorder)
    with socket(ctx, zmq.PULL) as server, socket(ctx, zmq.PUSH) as client:
        zsec.curve_server(server, server_cert)
        guarded = auth.guard(server)
        zsec.curve_client(client, client_cert, server_cert)
        client.connect(bind_loopback(server))
        client.send(b"hello")
        assert guarded.recv() == b"hello"
        (certs / "carol.key").unlink()
        cut = wait_for(lambda: [t for t in recorder.trust() if t.action == "session-cut"])
    assert cut[0].key == client_cert.public_txt
    assert cut[0].address.startswith("127.0.0.1:")
    assert auth.flush_events()
    metrics = auth._events.metrics
    assert metrics is not None and metrics.trust["session-cut"] == 1
    assert '"action":"session-cut"' in (tmp_path / "audit.jsonl").read_text()


def test_decisions_built_in_a_batch_follow_certificate_changes_and_the_clock() -> None:
    from zsec._events import _Anchor, audit_line, build_decision, build_decisions

    key = zsec.Cert().public_key
    # What post() sends: the slot of one shape, filled in by the events thread.
    kept = slot(b"CURVE", b"global", b"127.0.0.1", (key,), b"200", b"OK")
    old, new = zsec.Cert.from_keys(key), zsec.Cert.from_keys(key)
    old.set_meta("name", "old name")
    new.set_meta("name", "new name")  # the same key, its metadata changed
    anchor = _Anchor()
    # Just before a second boundary, then across it, within one batch.
    anchor.wall, anchor.perf = float(int(time.time())) + 0.9999, 100.0
    raws = [(100.0 + i * 0.00005, 100.0 + i * 0.00005 + 1e-5, kept, cert)
            for i, cert in enumerate([old, old, new, new, old])]  # fmt: skip
    markers: list[Any] = []
    lines: list[bytes] = []
    events = build_decisions([*raws, threading.Event()], anchor, markers, lines)
    assert len(markers) == 1
    assert events == [build_decision(raw, anchor) for raw in raws]
    assert [e.cert_name for e in events] == [
        "old name",
        "old name",
        "new name",
        "new name",
        "old name",
    ]
    assert lines == [audit_line(e) for e in events]
    stamps = [line.split(b'"time":"')[1][:19] for line in lines]
    assert stamps[0] != stamps[-1]  # the batch crossed a second, and the lines say so


def test_events_stay_exact_beyond_the_kept_shapes_and_refusals_keep_none(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zsec import _events

    monkeypatch.setattr(_events, "_SLOT_LIMIT", 3)
    clients = {f"client{i}": zsec.Cert() for i in range(8)}
    auth.configure_curve("global", _cert_dir(tmp_path, **clients))
    strangers = [zsec.Cert() for _ in range(5)]
    requests = [req(b"CURVE", c.public_key, address=b"192.0.2.8") for c in strangers]
    requests += [req(b"CURVE", c.public_key) for c in clients.values()] * 3
    decisions = _recorded(auth, ctx, *requests)
    assert [(d.key, d.verdict, d.address) for d in decisions[:5]] == [
        (c.public_txt, "refused", "192.0.2.8") for c in strangers
    ]
    assert [(d.key, d.cert_name, d.verdict) for d in decisions[5:]] == [
        (cert.public_txt, name, "allowed") for name, cert in clients.items()
    ] * 3
    # Three allowed shapes kept; no refused one.
    assert len(auth._events._slots) == 3
    assert all(shape[4] == b"200" for shape in auth._events._slots)


def test_a_batch_reads_the_shared_second_stamp_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from zsec import _events
    from zsec._events import _Anchor, audit_line, build_decisions

    now = int(time.time())

    class Shared(tuple):  # type: ignore[type-arg]
        """The module's (second, stamp) cache, replaced by another hub's thread mid-read."""

        def __getitem__(self, index: Any) -> Any:
            value = tuple.__getitem__(self, index)
            if index == 0:  # the other events thread moves to the next second now
                _events._second_bytes(now + 1)
            return value

    real = _events._second_bytes(now)
    monkeypatch.setattr(_events, "_SECOND_BYTES", Shared(real))
    kept = slot(b"NULL", b"global", b"127.0.0.1", (), b"200", b"OK")
    anchor = _Anchor()
    anchor.wall, anchor.perf = now + 0.5, 100.0
    lines: list[bytes] = []
    (event,) = build_decisions([(100.0, 100.00001, kept, None)], anchor, [], lines)
    assert lines == [audit_line(event)]


def test_a_provider_admitted_key_names_no_certificate_of_another_domain(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    alice = zsec.Cert()
    auth.configure_curve("stored", _cert_dir(tmp_path, alice=alice))
    auth.configure_curve_callback("asked", lambda domain, key: True)
    decisions = _recorded(
        auth,
        ctx,
        req(b"CURVE", alice.public_key, domain=b"stored"),
        req(b"CURVE", alice.public_key, domain=b"asked"),
        req(b"CURVE", alice.public_key, domain=b"stored"),
    )
    # The provider answers later: its decision may come last.
    assert sorted((d.domain, d.verdict, d.cert_name or "") for d in decisions) == [
        ("asked", "allowed", ""),  # the provider admitted it, not alice's certificate
        ("stored", "allowed", "alice"),
        ("stored", "allowed", "alice"),
    ]


class _ExitingFilter(logging.Filter):
    """An application's log filter that calls sys.exit() (a bug, on zsec's events thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        raise SystemExit(1)


def test_a_log_filter_or_subscriber_that_exits_stops_no_event(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    def exiting(event: Any) -> None:
        raise SystemExit(1)

    auth.audit_log(tmp_path / "audit.jsonl")
    auth.subscribe(exiting)
    recorder = Recorder()
    logger = logging.getLogger("zsec.auth")
    level = logger.level
    logger.setLevel(logging.INFO)  # refusals are logged at INFO
    broken = _ExitingFilter()
    logger.addFilter(broken)
    try:
        zap_ask(ctx, req(b"PLAIN", b"bob", b"Wr0ng-Value"))
        assert auth.flush_events(2)
    finally:
        logger.removeFilter(broken)
        logger.setLevel(level)
    auth.subscribe(recorder)
    zap_ask(ctx, req(b"NULL"))
    assert auth.flush_events(2)  # the dispatcher is alive
    wait_for(lambda: len(recorder.decisions()) == 1, what="a later decision")
    assert auth._events.audit_lines() == 2
    threads = [s.thread for s in auth._events._subscriptions]
    assert all(thread.is_alive() for thread in threads)  # the exiting one too


def test_events_flushed_after_stop_are_flushed_at_once(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    recorder = Recorder()
    auth = zsec.Auth(ctx)
    auth.subscribe(recorder)
    auth.audit_log(tmp_path / "audit.jsonl")
    zap_ask(ctx, req(b"NULL"))
    auth.stop()  # delivers what is queued
    assert auth.flush_events(1)  # nothing is left: not a wait for the timeout, nor False
    assert (tmp_path / "audit.jsonl").read_bytes().count(b'"event":"decision"') == 1
    wait_for(lambda: len(recorder.decisions()) == 1, what="the decision")


def test_a_provider_decision_counts_the_provider_time_in_its_latency(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    called: list[float] = []

    def slow(domain: str, key: bytes) -> bool:
        called.append(time.time())
        time.sleep(0.05)  # the provider's own work (a lookup elsewhere), not a wait for zsec
        return True

    auth.configure_curve_callback("global", slow)
    (decision,) = _recorded(auth, ctx, req(b"CURVE", bytes(32)))
    assert decision.verdict == "allowed"
    # From receiving the request to having the reply: the provider's 50 ms included,
    # and the decision is dated when the request came, before the provider was asked.
    assert decision.latency >= 0.05
    assert decision.time <= called[0] + 0.001


def test_a_decision_cut_short_by_stop_is_an_event(ctx: zmq.Context[Any], tmp_path: Path) -> None:
    asked = threading.Event()
    release = threading.Event()

    def undecided(domain: str, key: bytes) -> bool:
        asked.set()
        release.wait(10)
        return True

    recorder = Recorder()
    auth = zsec.Auth(ctx)
    auth.subscribe(recorder)
    auth.configure_curve_callback("global", undecided, timeout=30)
    replies: list[list[bytes]] = []
    client = threading.Thread(target=lambda: replies.extend(zap_ask(ctx, req(b"CURVE", bytes(32)))))
    client.start()
    try:
        assert asked.wait(10)
        auth.stop()
    finally:
        release.set()
        client.join(10)
    assert [r[2:4] for r in replies] == [[b"500", b"authenticator stopping"]]
    wait_for(lambda: recorder.decisions(), what="the decision event")
    (decision,) = recorder.decisions()
    assert (decision.mechanism, decision.domain, decision.verdict, decision.reason_code) == (
        "CURVE",
        "global",
        "error",
        "stopping",
    )


def test_a_stopped_authenticator_is_not_kept_alive_by_the_callers_store(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    import gc
    import weakref

    alice = zsec.Cert()
    store = zsec.CertStore(_cert_dir(tmp_path, alice=alice))
    try:
        auth = zsec.Auth(ctx)
        auth.configure_curve("global", store)
        recorder = Recorder()
        auth.subscribe(recorder)
        auth.stop()
        gone = weakref.ref(auth)
        del auth
        gc.collect()
        assert gone() is None
        store.insert(zsec.Cert())  # a change after the stop reaches no one
        assert recorder.trust() == []
    finally:
        store.close()


def test_a_kept_shape_names_the_certificate_as_it_is_after_a_store_change(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    alice = zsec.Cert()
    certs = _cert_dir(tmp_path, alice=alice)
    auth.configure_curve("global", certs)
    recorder = Recorder()
    auth.subscribe(recorder)
    zap_ask(ctx, req(b"CURVE", alice.public_key), req(b"CURVE", alice.public_key))
    renamed = zsec.Cert.from_keys(alice.public_key)
    renamed.set_meta("name", "alice renamed")
    renamed.save_public(certs / "alice.key")
    wait_for(lambda: any(t.action == "key-updated" for t in recorder.trust()), what="key-updated")
    zap_ask(ctx, req(b"CURVE", alice.public_key))
    (certs / "alice.key").unlink()
    wait_for(lambda: any(t.action == "key-revoked" for t in recorder.trust()), what="key-revoked")
    zap_ask(ctx, req(b"CURVE", alice.public_key))
    wait_for(lambda: len(recorder.decisions()) == 4, what="four decisions")
    assert [(d.verdict, d.cert_name) for d in recorder.decisions()] == [
        ("allowed", "alice"),
        ("allowed", "alice"),
        ("allowed", "alice renamed"),
        ("refused", None),
    ]


def test_requests_refused_while_stopping_are_decision_events(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    # A sender keeps requests coming while stop() runs: those the stopping
    # authenticator refuses (500, "authenticator stopping") are decisions
    # too, and the audit trail must hold them.
    recorder = Recorder()
    auth.subscribe(recorder)
    stopping: list[list[bytes]] = []
    done = threading.Event()

    def sender() -> None:
        with socket(ctx, zmq.DEALER, timeout_ms=200) as dealer:
            dealer.connect("inproc://zeromq.zap.01")
            sent = 0
            while True:
                if not done.is_set():
                    try:
                        frames = req(b"NULL", request_id=str(sent).encode())
                        dealer.send_multipart([b"", *frames], zmq.NOBLOCK)
                        sent += 1
                    except zmq.Again:
                        pass  # no peer any more: only replies are awaited
                try:
                    # Once stopping, wait for what is still owed (timeout 200 ms).
                    reply = dealer.recv_multipart(0 if done.is_set() else zmq.NOBLOCK)
                except zmq.Again:
                    if done.is_set():
                        return  # the rest went to an unbound endpoint: never answered
                    continue
                if reply[4] == b"authenticator stopping":
                    stopping.append(reply)

    thread = threading.Thread(target=sender)
    thread.start()
    wait_for(lambda: len(recorder.decisions()) >= 50, what="traffic under way")
    auth.stop()
    # A flood of requests must not keep the stopping pump draining forever.
    assert not auth._thread.is_alive(), "the authenticator thread is still draining"
    done.set()
    thread.join(10)
    assert stopping, "no request reached the stopping authenticator; the test proved nothing"
    refused = [d for d in recorder.decisions() if d.reason == "authenticator stopping"]
    assert len(refused) == len(stopping)
    assert all((d.status, d.verdict) == (500, "error") for d in refused)


def test_a_batch_names_as_notable_exactly_the_events_that_are_not_allowed_decisions() -> None:
    from zsec._events import _Anchor, build_decision, build_decisions

    key = zsec.Cert().public_key
    old, new = zsec.Cert.from_keys(key), zsec.Cert.from_keys(key)
    new.set_meta("name", "renamed")
    kept = slot(b"CURVE", b"global", b"127.0.0.1", (key,), b"200", b"OK")
    # A slot whose status code is not the bytes b"200" is never kept by post(),
    # but one that reads as 200 is an allowed decision all the same.
    odd = slot(b"NULL", b"global", b"127.0.0.1", (), b"0200", b"OK")
    refused = slot(b"NULL", b"global", b"192.0.2.1", (), b"400", b"address is in the deny list")
    malformed = (b"500", b"internal error", [b"id", b"", b"1.0", b"1", b"global"])
    anchor = _Anchor()
    published_allowed = build_decision((100.0, 100.1, kept, old), anchor)
    published_refused = build_decision((100.0, 100.1, refused, None), anchor)
    batch = [
        (100.0, 100.1, kept, old),
        zsec.TrustChange(1.0, "key-added"),
        (100.2, 100.3, kept, old),
        (100.4, 100.5, refused, None),
        (100.6, 100.7, kept, new),  # the certificate changed: the slot is filled again
        (100.8, 100.9, None, malformed),
        published_allowed,
        published_refused,
        (101.0, 101.1, odd, None),
        # The same refused slot again, in the same batch and the next: a
        # caller that reuses one (a test, a future post()) must not lose a line.
        (101.2, 101.3, refused, None),
    ]
    notable: list[Any] = []
    events = build_decisions(batch, anchor, [], None, notable)
    expected = [e for e in events if type(e) is not zsec.Decision or e.status != 200]
    assert [e.status if isinstance(e, zsec.Decision) else e.action for e in expected] == [
        "key-added", 400, 500, 400, 400,
    ]  # fmt: skip
    assert notable == expected
    later: list[Any] = []
    assert build_decisions([(102.0, 102.1, refused, None)], anchor, [], None, later)
    assert [e.status for e in later] == [400]


def test_every_refusal_is_logged_once_in_order_among_kept_allowed_shapes(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zsec")
    recorder = Recorder()
    auth.subscribe(recorder)  # allowed decisions are posted and their shapes kept
    auth.audit_log(tmp_path / "audit.jsonl")
    auth.deny("192.0.2.66")
    allowed, denied = req(b"NULL"), req(b"NULL", address=b"192.0.2.66")
    malformed = req(b"CURVE", b"short-key")
    requests = [allowed, denied, allowed, denied, malformed, allowed, malformed, denied, allowed]
    zap_ask(ctx, *requests)
    wait_for(lambda: len(recorder.decisions()) == len(requests), what="decision events")
    assert auth.flush_events()
    messages = [r.getMessage() for r in caplog.records if r.name == "zsec.auth"]
    expected = [d for d in recorder.decisions() if d.status != 200]
    assert [d.reason_code for d in expected] == [
        "denied", "denied", "malformed", "malformed", "denied",
    ]  # fmt: skip
    assert len(messages) == len(expected)
    assert [m.split(")", 1)[0] for m in messages] == [
        "DENIED (deny list", "DENIED (deny list", "DENIED (CURVE", "DENIED (CURVE",
        "DENIED (deny list",
    ]  # fmt: skip
    assert not [m for m in messages if m.startswith("ALLOWED")]


class BlockingHandler(logging.Handler):
    """A log handler stuck on its first record until released: a syslog peer gone away."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.unblock = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.entered.set()
        self.unblock.wait(30)


@pytest.fixture
def blocking_handler() -> Any:
    handler = BlockingHandler()
    logger = logging.getLogger("zsec.auth")
    level = logger.level
    logger.setLevel(logging.INFO)  # refusals are logged at INFO
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        handler.unblock.set()
        logger.removeHandler(handler)
        logger.setLevel(level)


def _stick_dispatcher(hub: Any, handler: BlockingHandler) -> None:
    """Post a refusal to ``hub`` and wait until its dispatcher is stuck logging it."""
    from zsec._zap import ZapReply, ZapRequest

    refused = ZapRequest.from_frames(req(b"NULL", address=b"192.0.2.66"))
    hub.post(time.perf_counter(), refused, ZapReply(b"7", b"400", b"address is in the deny list"))
    assert handler.entered.wait(10), "the refusal was never logged"


def test_under_load_a_blocked_log_handler_stops_no_subscriber_or_count_and_order_holds(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path, blocking_handler: BlockingHandler
) -> None:
    from zsec._events import _INLINE_BATCH, audit_line

    recorder = Recorder()
    auth.subscribe(recorder)
    auth.enable_metrics()
    metrics = auth._events.metrics
    assert metrics is not None
    audit = tmp_path / "audit.jsonl"
    auth.audit_log(audit)
    auth.deny("192.0.2.66")
    zap_ask(ctx, req(b"NULL", address=b"192.0.2.66"))
    assert blocking_handler.entered.wait(10), "the refusal was never logged"
    # The dispatcher is stuck logging that refusal. Decisions go on, and the
    # ZAP thread builds each full batch itself: subscribers and metrics get
    # them; the audit log waits for the dispatcher.
    many = 2 * _INLINE_BATCH + 40
    addresses = [f"10.0.{i // 256}.{i % 256}" for i in range(many)]
    zap_ask(ctx, *[req(b"NULL", address=a.encode()) for a in addresses])
    wait_for(lambda: len(recorder.decisions()) >= 1 + 2 * _INLINE_BATCH, what="built batches")
    assert not blocking_handler.unblock.is_set()
    assert metrics.decisions["NULL", "other", "allowed", "ok"] >= 2 * _INLINE_BATCH
    assert audit.read_text().count("\n") == 1
    blocking_handler.unblock.set()
    assert auth.flush_events()
    decisions = wait_for(
        lambda: len(recorder.decisions()) == 1 + many and recorder.decisions(), what="the rest"
    )
    assert [d.verdict for d in decisions] == ["refused"] + ["allowed"] * many
    assert [d.address for d in decisions] == ["192.0.2.66", *addresses]
    assert metrics.decisions["NULL", "other", "allowed", "ok"] == many
    # The audit log has every decision once, in the order subscribers saw them.
    lines = [
        line for line in audit.read_bytes().splitlines(keepends=True) if line.startswith(b'{"')
    ]
    assert lines == [audit_line(d) for d in decisions]


def test_a_blocked_dispatcher_holds_a_bounded_backlog_and_counts_the_rest(
    auth: zsec.Auth, blocking_handler: BlockingHandler
) -> None:
    from zsec._events import _INLINE_BATCH, EventHub
    from zsec._zap import ZapReply, ZapRequest

    limit = _INLINE_BATCH + 44
    hub = EventHub(lambda: auth._policy, limit=limit)
    recorder = Recorder()
    hub.subscribe(recorder)
    try:
        _stick_dispatcher(hub, blocking_handler)
        request = ZapRequest.from_frames(req(b"NULL"))
        allowed = ZapReply(b"7", b"200", b"OK")
        posted = 5 * limit
        for _ in range(posted):  # this thread plays the ZAP thread
            hub.post(time.perf_counter(), request, allowed)
        # Waiting: at most a limit's worth queued, and built, not handed on.
        assert len(hub._queue) <= limit
        assert hub._built_events - hub._delivered_events <= limit + _INLINE_BATCH
        assert hub.dropped >= posted - 2 * limit - _INLINE_BATCH
        blocking_handler.unblock.set()
        assert hub.flush()
        wait_for(lambda: len(recorder.events) + hub.dropped == 1 + posted, what="delivery")
        assert len(recorder.decisions()) == 1 + posted - hub.dropped
    finally:
        hub.close()


def test_a_batch_that_fails_to_build_in_the_zap_thread_is_reported_not_raised(
    auth: zsec.Auth,
    blocking_handler: BlockingHandler,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from zsec import _events
    from zsec._events import _INLINE_BATCH, EventHub
    from zsec._zap import ZapReply, ZapRequest

    caplog.set_level(logging.INFO, logger="zsec.auth")
    hub = EventHub(lambda: auth._policy)
    recorder = Recorder()
    hub.subscribe(recorder)
    try:
        _stick_dispatcher(hub, blocking_handler)
        builds = hub._builds  # the dispatcher, stuck logging, builds nothing more

        def broken(*args: Any) -> list[Any]:
            raise RuntimeError("a bug in building")

        monkeypatch.setattr(_events, "build_decisions", broken)
        request = ZapRequest.from_frames(req(b"NULL"))
        allowed = ZapReply(b"7", b"200", b"OK")
        for _ in range(_INLINE_BATCH):  # the last post builds, and must not raise
            hub.post(time.perf_counter(), request, allowed)
        assert hub._builds == builds + 1
        monkeypatch.undo()
        blocking_handler.unblock.set()
        hub.post(time.perf_counter(), request, allowed)
        assert hub.flush()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert errors[0].startswith("building, counting or handing out events failed (1 time(s)")
        assert hub.dropped == _INLINE_BATCH  # the lost batch is counted
        # The refusal before and the decision after the lost batch are delivered.
        wait_for(lambda: len(recorder.events) == 2, what="the events around the lost batch")
        assert [d.status for d in recorder.decisions()] == [400, 200]
    finally:
        hub.close()


def test_when_more_than_a_batch_waits_the_zap_thread_builds_the_oldest_and_order_holds(
    auth: zsec.Auth, tmp_path: Path, blocking_handler: BlockingHandler
) -> None:
    # The test above only ever has the ZAP thread build a whole queue of
    # exactly one batch; here more waits (the build lock was taken, as when
    # the dispatcher builds), so the ZAP thread must take the oldest and
    # leave the rest, in order, to the dispatcher.
    from zsec._events import _INLINE_BATCH, AuditLog, EventHub, read_audit
    from zsec._zap import ZapReply, ZapRequest

    hub = EventHub(lambda: auth._policy)
    audit = tmp_path / "audit.jsonl"
    hub.set_audit(AuditLog(audit))
    recorder = Recorder()
    hub.subscribe(recorder)
    allowed = ZapReply(b"7", b"200", b"OK")
    addresses = [f"10.0.{i >> 8}.{i & 255}" for i in range(_INLINE_BATCH + 41)]

    def post(address: str) -> None:  # this thread plays the ZAP thread
        request = ZapRequest.from_frames(req(b"NULL", address=address.encode()))
        hub.post(time.perf_counter(), request, allowed)

    try:
        _stick_dispatcher(hub, blocking_handler)
        with hub._build_lock:
            for address in addresses[:-1]:
                post(address)
        assert len(hub._queue) == len(addresses) - 1
        post(addresses[-1])  # builds one batch
        assert len(hub._queue) == len(addresses) - _INLINE_BATCH
        blocking_handler.unblock.set()
        assert hub.flush()
        decisions = wait_for(
            lambda: len(recorder.decisions()) == 1 + len(addresses) and recorder.decisions(),
            what="every decision",
        )
        assert [d.address for d in decisions] == ["192.0.2.66", *addresses]
        with audit.open("rb") as lines:
            assert [d["address"] for d in read_audit(lines)] == ["192.0.2.66", *addresses]
    finally:
        hub.close()


def test_an_event_queued_after_the_dispatchers_last_look_is_counted_as_dropped(
    auth: zsec.Auth,
) -> None:
    from zsec._events import EventHub

    hub = EventHub(lambda: auth._policy)
    # The dispatcher ends, as close() makes it; then a publish that got past
    # its check queues one event, and a flush its marker, before close() goes on.
    hub._closed = True
    hub._wake.set()
    hub._thread.join(10)
    assert not hub._thread.is_alive()
    marker = threading.Event()
    hub._queue.extend([zsec.TrustChange(time.time(), "key-added"), marker])
    hub._closed = False
    hub.close()
    assert hub.dropped == 1
    assert marker.is_set()
    assert not hub._queue


def test_a_batch_anchor_reads_the_clocks_again_when_a_thread_switch_splits_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from zsec import _events

    me = threading.get_ident()
    # perf_counter before and after time(): 0.2 s apart the first time (this
    # thread was switched out between the reads), 10 us the second.
    perfs, walls = iter([10.0, 10.2, 20.0, 20.00001]), iter([1000.0, 1000.3])

    class Clocks:
        """The time module, with scripted clocks for this thread only."""

        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        def perf_counter(self) -> float:
            return next(perfs) if threading.get_ident() == me else time.perf_counter()

        def time(self) -> float:
            return next(walls) if threading.get_ident() == me else time.time()

    monkeypatch.setattr(_events, "time", Clocks())
    anchor = _events._Anchor()
    assert (anchor.wall, anchor.perf) == (1000.3, pytest.approx(20.000005))
    assert anchor.at(20.5) == pytest.approx(1000.8, abs=1e-5)
