"""Regressions for the second review: ownership, overflow, link targets, input bytes, pump."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zmq

import zsec
from zsec import _passwords, _store
from zsec._files import write_atomic
from zsec._passwords import PasswordFile, set_password

from .conftest import wait_for
from .netutil import attempt, bind_loopback
from .test_zap import _fast_hash


def test_a_replaced_secret_file_belongs_to_its_writer(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # a sticky, world-writable directory like /tmp
    planted = shared / "server.key_secret"
    planted.write_text("planted by someone else\n")
    if os.geteuid() == 0:
        os.chown(planted, 4321, 4321)
    zsec.Cert().save(shared / "server.key")
    st = planted.stat()
    assert st.st_uid == os.geteuid()  # never handed to whoever created the name first
    assert st.st_mode & 0o777 == 0o600


def test_set_password_keeps_the_owner_only_for_a_plain_file_in_a_private_directory(
    tmp_path: Path,
) -> None:
    private = tmp_path / "etc"
    private.mkdir(mode=0o755)
    path = private / "passwords"
    path.write_text("bob=x\n")
    path.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(path, 4321, 4322)
    set_password(str(path), b"alice", b"pw", hasher=_fast_hash)
    st = path.stat()
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (4321, 4322)  # the service can still read it
    assert st.st_mode & 0o777 == 0o640
    link = private / "link"
    link.symlink_to(path)
    set_password(str(link), b"carol", b"pw", hasher=_fast_hash)
    assert link.stat().st_uid == os.geteuid() and not link.is_symlink()


def test_group_read_is_dropped_when_the_group_cannot_be_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "passwords"
    path.write_text("bob=x\n")
    path.chmod(0o640)

    def cannot(*args: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chown", cannot)
    write_atomic([(str(path), b"bob=y\n", 0o640)], owner=(4321, 4322))
    if path.stat().st_gid != 4322:
        assert path.stat().st_mode & 0o070 == 0  # not opened to the writer's own group


def test_an_inotify_overflow_rescans_even_with_logging_off(tmp_path: Path) -> None:
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent

    tmp_path.chmod(0o700)
    cert = zsec.Cert()
    cert.save_public(tmp_path / "c.key")
    with zsec.CertStore(tmp_path) as store:
        assert cert.public_key in store
        with store._lock:  # pretend the events for a change were lost
            store._paths.clear()
            store._holders.clear()
            store._publish({cert.public_key})
        assert cert.public_key not in store
        logging.disable(logging.CRITICAL)
        try:
            overflow = InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b"")
            store._observer._inotify_fd.handle_event(overflow)
            wait_for(lambda: cert.public_key in store, what="rescan after the overflow")
        finally:
            logging.disable(logging.NOTSET)


def test_a_link_is_revoked_when_its_target_directory_becomes_unsafe(tmp_path: Path) -> None:
    store_dir, target_dir = tmp_path / "store", tmp_path / "targets"
    store_dir.mkdir(mode=0o700)
    target_dir.mkdir(mode=0o755)
    cert = zsec.Cert()
    cert.save_public(target_dir / "c.key")
    (store_dir / "c.key").symlink_to(target_dir / "c.key")
    with zsec.CertStore(store_dir) as store:
        assert cert.public_key in store
        target_dir.chmod(0o777)
        wait_for(lambda: cert.public_key not in store, what="unsafe target directory")
        target_dir.chmod(0o755)
        wait_for(lambda: cert.public_key in store, what="safe again")


def test_passwd_reads_any_bytes_under_a_strict_locale(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    done = subprocess.run(
        [sys.executable, "-m", "zsec", "passwd", "p.txt", "alice", "--stdin"],
        input=b"se\xffcret\n",
        capture_output=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr and b"\xff" not in done.stdout + done.stderr
    assert PasswordFile(tmp_path / "p.txt").check(b"alice", b"se\xffcret") == b""


def test_wrong_passwords_cost_the_same_in_a_mixed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.txt"
    path.write_text("plainuser=plain\n")
    set_password(str(path), b"hashed", b"pw", hasher=_fast_hash)
    passwords = PasswordFile(path)
    calls: list[bytes] = []
    monkeypatch.setattr(_passwords, "_verify_hash", lambda e, p: calls.append(p) or False)
    for user in (b"plainuser", b"hashed", b"nobody"):
        calls.clear()
        passwords.check(user, b"guess")
        assert calls == [b"guess"], user  # one hash check each: no user enumeration
    calls.clear()
    assert passwords.check(b"plainuser", b"plain") == b""
    assert calls == []


def test_the_pump_survives_a_raising_log_filter_and_sweep(
    ctx: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("a log filter with a bug")

    swept: list[int] = []

    def broken_sweep(self: zsec.FailureLimiter) -> None:
        swept.append(1)
        raise RuntimeError("sweep bug")

    monkeypatch.setattr(zsec.FailureLimiter, "sweep", broken_sweep)
    logger = logging.getLogger("zsec.auth")
    bad = Broken()
    logger.addFilter(bad)
    try:
        auth = zsec.Auth(ctx, verbose=True)  # every decision now logs through the filter
        auth.set_failure_limit(3)
        server = ctx.socket(zmq.PULL)
        server.linger = 0
        zsec.null_server(server)
        endpoint = bind_loopback(server)
        assert attempt(ctx, endpoint, lambda s: None)[0].ok
        wait_for(lambda: swept, timeout=5, what="an idle sweep")
        assert auth.running
        assert attempt(ctx, endpoint, lambda s: None)[0].ok
        auth.stop()
    finally:
        logger.removeFilter(bad)


def test_reconfiguring_the_limit_keeps_bans() -> None:
    auth_ctx: zmq.Context[Any] = zmq.Context()
    try:
        with zsec.Auth(auth_ctx) as auth:
            auth.set_failure_limit(1, 60, 300)
            limiter = auth.policy.limiter
            assert limiter is not None
            limiter.failed(b"192.0.2.1")
            auth.set_failure_limit(2, 60, 600)
            assert auth.policy.limiter is limiter and limiter.banned == [b"192.0.2.1"]
            assert limiter.max_failures == 2
    finally:
        auth_ctx.destroy(linger=0)


def test_nat64_clients_count_as_their_ipv4_address() -> None:
    from zsec._zap import limit_key

    assert limit_key(b"64:ff9b::c000:201") == b"192.0.2.1"
    assert limit_key(b"2001:db8::1") == b"2001:db8::/64"


def test_audit_interval_must_be_a_real_number(tmp_path: Path) -> None:
    for bad in (float("nan"), 0, -1, float("inf")):
        with pytest.raises(zsec.ZsecValueError):
            zsec.CertStore(tmp_path, audit_interval=bad)


def test_the_overflow_hook_is_in_for_this_watchdog(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    with zsec.CertStore(tmp_path) as store:
        assert store.observer_kind == "native"
        emitters = list(store._observer.emitters)
        assert emitters and all(
            e._inotify.on_queue_overflow.__name__ == "on_overflow" for e in emitters
        )
    assert _store._hook_overflow(object(), None) is False  # no emitters: nothing to hook
