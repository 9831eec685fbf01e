"""Prometheus metrics, scraped over HTTP on 127.0.0.1 with a real GET."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest
import zmq
from prometheus_client import parser

import zsec

from .helpers import req, slot, wait_for, zap_ask


def _scrape(port: int) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return text, samples


def _decisions(mechanism: str, domain: str, verdict: str, reason: str) -> tuple[Any, ...]:
    labels = {"mechanism": mechanism, "domain": domain, "verdict": verdict, "reason": reason}
    return ("zsec_decisions_total", tuple(sorted(labels.items())))


def test_metrics_match_the_traffic_sent(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir(mode=0o700)
    alice = zsec.Cert()
    alice.save_public(certs / "alice.key")
    zsec.Cert().save_public(certs / "bob.key")
    auth.configure_curve("global", certs)
    passwords = tmp_path / "passwords.txt"
    passwords.write_text("admin=Pl41n-Value\n")
    auth.configure_plain("global", passwords)
    auth.set_failure_limit(3, ban=60)
    port = auth.serve_metrics(0)
    stranger = zsec.Cert()
    requests = (
        [req(b"NULL")] * 3
        + [req(b"NULL", domain=b"made-up-domain")] * 2
        + [req(b"CURVE", alice.public_key)] * 4
        + [req(b"CURVE", stranger.public_key, address=b"192.0.2.9")] * 3
        + [req(b"PLAIN", b"admin", b"Wr0ng-Value", address=b"198.51.100.7")]
    )
    replies = zap_ask(ctx, *requests)
    assert [r[2] for r in replies].count(b"200") == 9
    assert auth.flush_events()
    text, samples = _scrape(port)
    assert samples[_decisions("NULL", "global", "allowed", "ok")] == 3
    # An unconfigured domain is not a label of its own.
    assert samples[_decisions("NULL", "other", "allowed", "ok")] == 2
    assert samples[_decisions("CURVE", "global", "allowed", "ok")] == 4
    assert samples[_decisions("CURVE", "global", "refused", "unknown-key")] == 3
    assert samples[_decisions("PLAIN", "global", "refused", "wrong-password")] == 1
    assert samples["zsec_decision_latency_seconds_count", (("mechanism", "CURVE"),)] == 7
    assert (
        samples["zsec_decision_latency_seconds_bucket", (("le", "+Inf"), ("mechanism", "NULL"))]
        == 5
    )
    assert samples["zsec_decision_latency_seconds_sum", (("mechanism", "NULL"),)] > 0
    assert samples["zsec_active_bans", ()] == 1  # 192.0.2.9 after 3 unknown keys
    assert samples["zsec_trust_changes_total", (("action", "ban-started"),)] == 1
    assert samples["zsec_certificates", (("domain", "global"), ("store", str(certs)))] == 2
    store_labels = (("domain", "global"), ("store", str(certs)))
    assert samples["zsec_store_reloads_total", store_labels] == 1  # the first scan
    assert samples["zsec_store_overflows_total", store_labels] == 0
    assert samples["zsec_events_dropped_total", ()] == 0
    assert samples["zsec_session_cuts_total", ()] == 0
    # Never a key, a username or a password in a label or anywhere else.
    for secret_or_identity in (alice.public_txt, stranger.public_txt, "admin", "Wr0ng-Value"):
        assert secret_or_identity not in text


def test_metrics_are_served_on_loopback_only_by_default(auth: zsec.Auth) -> None:
    port = auth.serve_metrics(0)
    server = auth._metrics_server
    assert server.server_address[0] == "127.0.0.1"
    _scrape(port)
    with pytest.raises(zsec.AuthError, match="already serves metrics"):
        auth.serve_metrics(0)


def test_stop_shuts_the_metrics_server_down(ctx: zmq.Context[Any]) -> None:
    auth = zsec.Auth(ctx)
    port = auth.serve_metrics(0)
    _scrape(port)
    auth.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_metrics_can_join_the_applications_registry(auth: zsec.Auth) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    assert auth.enable_metrics(registry) is registry
    assert b"\nzsec_events_dropped_total 0.0\n" in generate_latest(registry)


def test_audit_lines_lost_to_a_full_disk_are_a_metric(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    # /dev/full is a real device on which every write fails with ENOSPC.
    auth.audit_log("/dev/full")
    port = auth.serve_metrics(0)
    zap_ask(ctx, *[req(b"PLAIN", b"nobody", b"Wr0ng-Value")] * 4)
    assert auth.flush_events()
    _, samples = _scrape(port)
    assert samples["zsec_audit_lines_total", ()] == 0
    assert samples["zsec_audit_lost_total", ()] == 4


def test_the_latency_histogram_counts_each_decision_in_its_bucket(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    from zsec._events import LATENCY_BUCKETS

    certs = tmp_path / "certs"
    certs.mkdir(mode=0o700)
    client = zsec.Cert()
    client.save_public(certs / "client.key")
    auth.configure_curve("global", certs)
    seen: list[Any] = []
    auth.subscribe(seen.append)
    port = auth.serve_metrics(0)
    # Mechanisms mixed within batches, garbage ones counted as "other".
    requests = [req(b"NULL"), req(b"CURVE", client.public_key), req(b"BOGUS")] * 400
    zap_ask(ctx, *requests)
    assert auth.flush_events()
    wait_for(lambda: len(seen) == len(requests), what="events delivered")
    _, samples = _scrape(port)
    for mechanism in ("NULL", "CURVE", "other"):
        latencies = [
            d.latency
            for d in seen
            if (d.mechanism if d.mechanism in ("NULL", "CURVE") else "other") == mechanism
        ]
        assert len(latencies) == 400
        for bound in LATENCY_BUCKETS:
            labels = (("le", repr(bound)), ("mechanism", mechanism))
            expected = sum(1 for value in latencies if value <= bound)
            assert samples["zsec_decision_latency_seconds_bucket", labels] == expected, bound
        total = samples["zsec_decision_latency_seconds_sum", (("mechanism", mechanism),)]
        assert total == pytest.approx(sum(latencies))
        labels = (("le", "+Inf"), ("mechanism", mechanism))
        assert samples["zsec_decision_latency_seconds_bucket", labels] == 400


class _ComparedMechanism(str):
    """A mechanism name that counts how often it is compared: the work done, not the time."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        _ComparedMechanism.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_counting_a_batch_of_distinct_garbage_mechanisms_is_one_pass_not_one_per_mechanism(
    auth: zsec.Auth,
) -> None:
    # Each malformed request may name another mechanism (up to 255 bytes of
    # it). Counted in a pass per distinct name, a batch of n costs n*n
    # comparisons: the ZAP thread counts batches of 256 itself, and the
    # events thread counts whole backlogs (20,000 took 29 s).
    from zsec._events import Metrics

    metrics = Metrics(auth._events)
    n = 1000
    events = [
        zsec.Decision(
            0.0,
            _ComparedMechanism(f"BOGUS{i}"),
            "global",
            "192.0.2.1",
            None,
            None,
            None,
            "refused",
            400,
            f"unsupported mechanism BOGUS{i}",
            "malformed",
            0.001,
        )
        for i in range(n)
    ] + [
        zsec.Decision(
            0.0, "NULL", "global", "192.0.2.1", None, None, None, "allowed", 200, "OK", "ok", 0.002
        )
    ]
    _ComparedMechanism.compared = 0
    metrics.count(events, frozenset({"global"}))
    assert _ComparedMechanism.compared < 10 * n
    # And every latency is still counted, under its bounded label.
    assert sum(metrics._latency["other"][0]) == n
    assert metrics._latency["other"][1][0] == pytest.approx(0.001 * n)
    assert sum(metrics._latency["NULL"][0]) == 1
    assert metrics.decisions["other", "global", "refused", "malformed"] == n


def test_labels_made_with_a_batch_count_the_same_as_labels_read_from_its_events(
    auth: zsec.Auth, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The builder hands the metrics each decision's labels, shared per slot;
    # one label out of step with its decision would count it under another's.
    from zsec import _events
    from zsec._events import Metrics, _Anchor, build_decision, build_decisions

    # Shared through a bounded dict that other tests fill: start it empty,
    # or a clear partway through this batch would unshare two of them.
    monkeypatch.setattr(_events, "_METRIC_LABELS", {})

    key = zsec.Cert().public_key
    old, new = zsec.Cert.from_keys(key), zsec.Cert.from_keys(key)
    new.set_meta("name", "renamed")
    kept = slot(b"CURVE", b"global", b"127.0.0.1", (key,), b"200", b"OK")
    other = slot(b"NULL", b"other", b"127.0.0.1", (), b"200", b"OK")
    refused = slot(b"NULL", b"global", b"192.0.2.1", (), b"400", b"address is in the deny list")
    malformed = (b"400", b"unsupported mechanism BOGUS", [b"id", b"", b"1.0", b"1", b"global"])
    anchor = _Anchor()
    batch = [
        (100.0, 100.1, kept, old),
        zsec.TrustChange(1.0, "key-added"),
        (100.2, 100.3, other, None),
        (100.4, 100.5, refused, None),
        (100.6, 100.7, kept, new),  # the certificate changed: the slot is filled again
        (100.8, 100.9, None, malformed),
        build_decision((101.0, 101.1, refused, None), anchor),  # published ready-made
        (101.2, 101.3, kept, new),
        (101.4, 101.5, other, None),
    ]
    labels: list[Any] = []
    events = build_decisions(batch, anchor, [], None, None, labels)
    decisions = [e for e in events if type(e) is zsec.Decision]
    assert labels == [(d.mechanism, d.domain, d.verdict, d.reason_code) for d in decisions]
    # One object per set, even across slots and refills: counted by identity.
    assert labels[0] is labels[3] is labels[6] and labels[1] is labels[7]
    given, read = Metrics(auth._events), Metrics(auth._events)
    given.count(events, frozenset({"global"}), labels)
    read.count(events, frozenset({"global"}))
    assert given.decisions == read.decisions and sum(given.decisions.values()) == len(decisions)
    assert given.trust == read.trust == {"key-added": 1}
    assert given._latency == read._latency


def test_a_published_decision_whose_labels_cannot_be_counted_costs_only_the_metrics(
    auth: zsec.Auth,
) -> None:
    # The hub's publish() takes any event; one that metrics cannot count
    # (its domain is not even hashable) must not cost the subscribers its
    # batch: counting is kept apart from building.
    seen: list[Any] = []
    auth.subscribe(seen.append)
    auth.enable_metrics()
    odd = zsec.Decision(
        0.0, "NULL", ["unhashable"], "192.0.2.1", None, None, None,  # type: ignore[arg-type]
        "allowed", 200, "OK", "ok", 0.001,
    )  # fmt: skip
    auth._events.publish(odd)
    auth._events.publish(zsec.TrustChange(1.0, "key-added"))
    assert auth.flush_events()
    wait_for(lambda: len(seen) == 2, timeout=5, what="both events delivered")
    assert seen[0] is odd and auth.dropped_events == 0
