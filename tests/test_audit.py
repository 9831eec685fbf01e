"""The JSON-lines audit log: one object per line, through rotation and a killed writer."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

import zsec
from zsec._events import AuditLog, Decision, TrustChange, read_audit

from .helpers import ROOT, req, wait_for, zap_ask

DECISION_FIELDS = {
    "event",
    "time",
    "mechanism",
    "domain",
    "address",
    "username",
    "key",
    "cert_name",
    "verdict",
    "status",
    "reason",
    "reason_code",
    "latency",
}


def _decision(i: int) -> Decision:
    return Decision(
        time.time(), "PLAIN", "global", "127.0.0.1", f"user{i}", None, None, "refused", 400,
        "wrong password", "wrong-password", 0.0001,
    )  # fmt: skip


def _lines(*paths: Path) -> list[bytes]:
    return [line for p in paths for line in p.read_bytes().splitlines(keepends=True)]


def test_the_audit_log_records_decisions_and_trust_changes(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    auth.audit_log(path)
    passwords = tmp_path / "passwords.txt"
    passwords.write_text("alice=Pl41n-Value\n")
    auth.configure_plain("*", passwords)
    auth.set_failure_limit(1, ban=30)
    zap_ask(ctx, req(b"NULL"), req(b"PLAIN", b"bob", b"Wr0ng-Value"))
    assert auth.flush_events()
    lines = _lines(path)
    assert all(line.endswith(b"\n") for line in lines)
    records = list(read_audit(lines))
    assert len(records) == len([json.loads(line) for line in lines])  # no padding yet
    decisions = [r for r in records if r["event"] == "decision"]
    assert [set(r) for r in decisions] == [DECISION_FIELDS, DECISION_FIELDS]
    assert [(r["mechanism"], r["verdict"], r["status"]) for r in decisions] == [
        ("NULL", "allowed", 200),
        ("PLAIN", "refused", 400),
    ]
    assert decisions[1]["username"] == "bob"
    assert decisions[1]["time"].endswith("Z")
    bans = [r for r in records if r["event"] == "trust"]
    assert [(b["action"], b["address"], b["duration"]) for b in bans] == [
        ("ban-started", "127.0.0.1", 30.0)
    ]
    assert b"Wr0ng-Value" not in path.read_bytes()
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_rotation_by_rename_loses_no_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    stop = threading.Event()
    count = [0]

    def writer() -> None:
        while not stop.is_set():
            start = count[0]
            audit.write([_decision(i) for i in range(start, start + 10)])
            count[0] += 10

    thread = threading.Thread(target=writer)
    thread.start()
    rotated = []
    try:
        for n in range(3):
            # Each rotation happens while lines are being written, and the
            # writer moves on to the new file by itself.
            wait_for(lambda: path.exists() and path.stat().st_size > 20_000)
            target = tmp_path / f"audit.jsonl.{n}"
            os.rename(path, target)
            rotated.append(target)
        wait_for(lambda: path.exists() and path.stat().st_size > 0)
    finally:
        stop.set()
        thread.join(30)
    audit.close()
    users = [r["username"] for r in read_audit(_lines(*rotated, path))]
    assert len(users) == count[0]
    assert sorted(users, key=lambda u: int(u[4:])) == [f"user{i}" for i in range(count[0])]


def test_reopen_moves_to_a_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.write([_decision(1)])
    os.rename(path, tmp_path / "old.jsonl")
    audit.reopen()  # what a SIGHUP handler calls
    assert path.exists()
    audit.write([TrustChange(time.time(), "key-revoked", key="K" * 40)])
    audit.close()
    assert [r["event"] for r in read_audit(_lines(path))] == ["trust"]
    assert [r["username"] for r in read_audit(_lines(tmp_path / "old.jsonl"))] == ["user1"]


def test_a_torn_last_line_is_ended_before_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"event":"decision","ti')
    audit = AuditLog(path)
    audit.write([_decision(2)])
    audit.close()
    lines = _lines(path)
    assert len(lines) == 2
    assert json.loads(lines[1])["username"] == "user2"


def test_no_line_straddles_a_page_boundary(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    events = [
        TrustChange(time.time(), "key-added", cert_name="x" * (i * 37 % 1500)) for i in range(400)
    ]
    audit.write([*events, _decision(1)])
    audit.write([TrustChange(time.time(), "key-added", cert_name="\u2603" * 4000)])
    audit.close()
    offset = 0
    for line in _lines(path):
        assert offset // 4096 == (offset + len(line) - 1) // 4096, offset
        offset += len(line)
    records = list(read_audit(_lines(path)))
    assert len(records) == 402
    assert records[-1]["cert_name"].endswith("...")  # cut to fit one block


_WRITER = """
import sys, time
from zsec._events import AuditLog, Decision
audit = AuditLog(sys.argv[1])
i = 0
while True:
    # Big batches of lines of many lengths: every write crosses pages.
    audit.write([Decision(time.time(), "CURVE", "global", "127.0.0.1", None, "k" * 40,
                          "name " * ((i + j) % 300), "allowed", 200, "OK", "ok", 0.0)
                 for j in range(500)])
    i += 7
"""


def test_a_writer_killed_mid_stream_leaves_only_whole_lines(tmp_path: Path) -> None:
    # Without the block alignment, appending such batches with plain writes
    # left torn lines in about one kill in two.
    path = tmp_path / "audit.jsonl"
    for kill in range(8):
        start = path.stat().st_size if path.exists() else 0
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)], cwd=ROOT, env={**os.environ}
        )
        try:
            target = start + 200_000 + kill * 77_777
            wait_for(lambda t=target: path.exists() and path.stat().st_size > t, timeout=60)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    data = path.read_bytes()
    assert data.endswith(b"\n")
    lines = data.splitlines()
    assert len(lines) > 1000
    # Every line parses: events, and padding objects that keep lines off page boundaries.
    records = [json.loads(line) for line in lines]
    assert {r.get("event", "padding") for r in records} == {"decision", "padding"}
    assert all(r == {} for r in records if "event" not in r)


def test_a_decision_line_is_the_json_of_its_event() -> None:
    from zsec._events import audit_line

    for event in (
        _decision(7),
        Decision(
            time.time(), "CURVE", 'we"ird\\\x1b', "::1", None, "k" * 40, "caf\u00e9 \u2603",
            "allowed", 200, "OK", "ok", 0.0000123,
        ),
    ):  # fmt: skip
        line = audit_line(event)
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
        assert json.loads(line) == json.loads(json.dumps(event.to_dict()))


_FULL_DISK_WRITER = """
import json, resource, signal, sys, time
from zsec._events import AuditLog, Decision
# A file-size limit stands in for a full disk: the kernel writes what fits
# (a short write), then refuses the rest with EFBIG.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
def event(name):
    return Decision(time.time(), "PLAIN", "global", "127.0.0.1", name, None, None,
                    "refused", 400, "wrong password", "wrong-password", 0.0001)
audit = AuditLog(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (5000, hard))
audit.write([event(f"before{i}") for i in range(100)])
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space is back
audit.write([event(f"after{i}") for i in range(3)])
audit.close()
print(json.dumps({"lost": audit.lost, "lines": audit.lines}))
"""


def test_lines_after_a_full_disk_are_not_glued_to_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_WRITER, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    names = [r["username"] for r in read_audit(_lines(path))]
    # Once the disk has room again every new line is whole and parses.
    assert names[-3:] == ["after0", "after1", "after2"]
    # The batch that did not fit is counted as lost, not as written.
    assert counts["lines"] + counts["lost"] == 103
    assert counts["lines"] == len(names)


class _BrokenFilter(logging.Filter):
    """An application's logging filter with a bug: it raises on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("bug in the application's log filter")


def test_a_raising_log_filter_loses_no_audit_line(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    auth.audit_log(path)
    seen: list[Any] = []
    auth.subscribe(seen.append)
    broken = _BrokenFilter()
    logger = logging.getLogger("zsec.auth")
    level = logger.level
    logger.setLevel(logging.INFO)  # refusals are logged at INFO
    logger.addFilter(broken)
    try:
        zap_ask(ctx, *[req(b"PLAIN", b"bob", b"Wr0ng-Value")] * 3)
        assert auth.flush_events()
    finally:
        logger.removeFilter(broken)
        logger.setLevel(level)
    names = [r["username"] for r in read_audit(_lines(path))]
    assert names == ["bob"] * 3
    wait_for(lambda: len(seen) == 3, what="the subscriber's three events")


def test_packed_batches_keep_every_line_within_one_block_from_any_offset() -> None:
    from zsec._events import _pack

    rng = random.Random(11)
    for _ in range(300):
        # Lines of every size up to a whole block, many blocks per batch,
        # starting anywhere (including a byte or two before a boundary).
        sizes = [rng.choice((rng.randint(8, 400), rng.randint(8, 4096))) for _ in range(60)]
        lines = [b'{"%04d' % i + b"x" * (size - 8) + b"}\n" for i, size in enumerate(sizes)]
        start = rng.choice((rng.randrange(3 * 4096), 4096 * rng.randint(1, 3) - rng.randint(0, 3)))
        out: list[bytes] = []
        _pack(lines, start, out)
        data = b"\n" * start + b"".join(out)  # the bytes already in the file, then the batch
        for boundary in range(4096 * (start // 4096 + 1), len(data), 4096):
            assert data[boundary - 1 : boundary] == b"\n", (start, boundary)
        # Every line is there, in order, at most widened with spaces; the
        # rest is padding ("{", spaces, "}") that readers skip.
        written = [piece.rstrip(b" \n") for piece in out if piece.startswith(b'{"')]
        assert written == [line.rstrip(b"\n") for line in lines]
        padding = [piece for piece in out if not piece.startswith(b'{"')]
        assert all(piece.strip(b"{ }\n") == b"" for piece in padding)
        # Newlines alone only to end a block another writer left one or two bytes short.
        assert all(p.startswith(b"{") and p.endswith(b"}\n") for p in padding[1:])
        assert all(len(w) <= 4096 for w in out)


def test_the_audit_trail_of_a_traffic_burst_is_exactly_what_subscribers_get(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir(mode=0o700)
    named = zsec.Cert()
    named.set_meta("name", 'n\u00e4med "client"')
    named.save_public(certs / "named.key")
    auth.configure_curve("global", certs)
    path = tmp_path / "audit.jsonl"
    auth.audit_log(path)
    seen: list[Any] = []
    auth.subscribe(seen.append)
    stranger = zsec.Cert()
    requests = [
        req(b"CURVE", named.public_key),
        req(b"CURVE", stranger.public_key, address=b"192.0.2.1"),
        req(b"NULL", domain=b"x" * 200),
        req(b"PLAIN", b"u\xffser", b"Wr0ng-Value"),
        [b"1.0", b"7", b"global"],  # malformed
    ] * 300
    zap_ask(ctx, *requests)
    assert auth.flush_events()
    wait_for(lambda: len(seen) >= len(requests), what="events delivered")
    records = list(read_audit(_lines(path)))
    assert len(records) == len(requests)
    # Field for field, the audit line is the JSON of the event the subscriber got.
    assert records == [json.loads(json.dumps(e.to_dict())) for e in seen]
    assert {r["cert_name"] for r in records} == {None, 'n\u00e4med "client"'}
    assert "Wr0ng-Value" not in path.read_text()


def _blocks_respected(path: Path) -> None:
    offset = 0
    for line in _lines(path):
        assert len(line) <= 4096
        assert offset // 4096 == (offset + len(line) - 1) // 4096, offset
        offset += len(line)


def test_a_certificate_with_long_non_ascii_names_is_audited_and_the_log_goes_on(
    ctx: zmq.Context[Any], auth: zsec.Auth, tmp_path: Path
) -> None:
    # Each field cut to 200 characters is still too long for one block
    # when the characters are escaped in JSON (\ud83d\udd11, twelve bytes):
    # the store's directory, the certificate's file and its name.
    store = tmp_path
    for mark in ("\U0001f511", "\U0001f512", "\U0001f513"):
        store = store / (mark * 60)
        store.mkdir(mode=0o700)
    path = tmp_path / "audit.jsonl"
    auth.audit_log(path)
    auth.configure_curve("global", store)
    alice = zsec.Cert()
    alice.set_meta("name", "\U0001f464" * 300)
    alice.save_public(store / "alice.key")
    wait_for(lambda: b'"key-added"' in path.read_bytes(), what="key-added in the audit log")
    zap_ask(ctx, req(b"CURVE", alice.public_key))
    assert auth.flush_events(10)
    _blocks_respected(path)
    records = list(read_audit(_lines(path)))
    (added,) = [r for r in records if r.get("action") == "key-added"]
    assert added["key"] == alice.public_txt
    assert added["cert_name"].startswith("\U0001f464") and added["cert_name"].endswith("...")
    assert [(r["key"], r["verdict"]) for r in records if r["event"] == "decision"] == [
        (alice.public_txt, "allowed")
    ]


def test_a_log_truncated_in_place_keeps_every_line_within_one_block(tmp_path: Path) -> None:
    # logrotate's copytruncate: the same file, cut to nothing under the writer.
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.write([_decision(i) for i in range(30)])
    assert path.stat().st_size % 4096 > 0
    os.truncate(path, 0)
    audit.write([_decision(i) for i in range(30, 130)])
    audit.close()
    _blocks_respected(path)
    assert [r["username"] for r in read_audit(_lines(path))] == [f"user{i}" for i in range(30, 130)]


def test_a_pipe_as_audit_log_is_a_clear_error_and_leaks_no_descriptor(
    auth: zsec.Auth, tmp_path: Path
) -> None:
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo, 0o600)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(zsec.AuthError, match="regular file"):
        auth.audit_log(fifo)
    assert len(os.listdir("/proc/self/fd")) == before
    assert auth._events.audit is None  # nothing half set up
