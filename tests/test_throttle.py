"""Brute-force throttling: bans after repeated failures, with the right password refused too."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import zmq

import zsec
from zsec._throttle import MAX_TRACKED
from zsec._zap import BANNED, Policy

from .helpers import login as plain_login
from .helpers import serve, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain(user: bytes, password: bytes, address: bytes = b"192.0.2.9") -> list[bytes]:
    return [b"rid", b"", b"1.0", b"1", b"global", address, b"", b"PLAIN", user, password]


@pytest.fixture
def passwords(tmp_path: Path) -> zsec.PasswordFile:
    path = tmp_path / "p.txt"
    path.write_text("admin=right\n")
    return zsec.PasswordFile(path)


def status(policy: Policy, frames: list[bytes]) -> tuple[bytes, bytes]:
    reply = policy.handle(frames)
    assert reply is not None
    return reply[4], reply[5]


def test_ban_after_max_failures_refuses_even_the_right_password(
    passwords: zsec.PasswordFile, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    policy = Policy(plain={"*": passwords}, limiter=zsec.FailureLimiter(3, 60, 300, clock=clock))
    for _ in range(2):
        assert status(policy, plain(b"admin", b"wrong")) == (b"400", b"wrong password")
    assert status(policy, plain(b"admin", b"right"))[0] == b"200"  # not banned yet
    assert status(policy, plain(b"admin", b"wrong"))[0] == b"400"  # third failure: ban
    assert "banning address 192.0.2.9 for 300s after 3 failed attempts within 60s" in caplog.text
    assert status(policy, plain(b"admin", b"right")) == (b"400", BANNED)
    # Another address is not affected; the IPv4-mapped form of the banned one is.
    assert status(policy, plain(b"admin", b"right", b"192.0.2.10"))[0] == b"200"
    assert status(policy, plain(b"admin", b"right", b"::ffff:192.0.2.9")) == (b"400", BANNED)
    clock.now += 299
    assert status(policy, plain(b"admin", b"right"))[0] == b"400"
    clock.now += 2
    assert status(policy, plain(b"admin", b"right"))[0] == b"200"
    assert "ban on address 192.0.2.9 ended" in caplog.text


def test_failures_outside_the_window_do_not_count(passwords: zsec.PasswordFile) -> None:
    clock = Clock()
    limiter = zsec.FailureLimiter(3, 10, 100, clock=clock)
    policy = Policy(plain={"*": passwords}, limiter=limiter)
    for _ in range(5):
        status(policy, plain(b"admin", b"wrong"))
        clock.now += 6  # never three within ten seconds
    assert limiter.banned == []
    assert status(policy, plain(b"admin", b"right"))[0] == b"200"


def test_refusals_during_a_ban_do_not_extend_it(passwords: zsec.PasswordFile) -> None:
    clock = Clock()
    limiter = zsec.FailureLimiter(1, 60, 10, clock=clock)
    policy = Policy(plain={"*": passwords}, limiter=limiter)
    status(policy, plain(b"admin", b"wrong"))
    for _ in range(20):
        clock.now += 0.4
        assert status(policy, plain(b"admin", b"wrong"))[1] == BANNED
    clock.now += 3
    assert status(policy, plain(b"admin", b"right"))[0] == b"200"


def test_every_mechanism_and_unknown_keys_count(tmp_path: Path) -> None:
    clock = Clock()
    limiter = zsec.FailureLimiter(2, 60, 60, clock=clock)
    policy = Policy(curve={"*": zsec.CertStore()}, limiter=limiter)
    curve = [b"rid", b"", b"1.0", b"1", b"d", b"198.51.100.7", b"", b"CURVE", bytes(32)]
    status(policy, curve)
    status(policy, curve)
    assert limiter.banned == [b"198.51.100.7"]
    null = [b"rid", b"", b"1.0", b"1", b"d", b"198.51.100.7", b"", b"NULL"]
    assert status(policy, null) == (b"400", BANNED)


def test_sweep_ends_bans_and_forgets_old_failures(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limiter = zsec.FailureLimiter(2, 5, 10, clock=clock)
    limiter.failed(b"10.0.0.1")
    limiter.failed(b"10.0.0.2")
    limiter.failed(b"10.0.0.2")
    assert limiter.banned == [b"10.0.0.2"]
    clock.now += 11
    limiter.sweep()
    assert limiter.banned == [] and limiter._failures == {}
    assert "ban on address 10.0.0.2 ended" in caplog.text


def test_tracked_addresses_are_bounded() -> None:
    limiter = zsec.FailureLimiter(5, 60, 60, clock=Clock())
    for i in range(MAX_TRACKED + 10):
        limiter.failed(i.to_bytes(4, "big"))
    assert len(limiter._failures) == MAX_TRACKED


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 60, 60), zsec.LimitError),
        ((3, 0, 60), zsec.LimitError),
        ((3, 60, -1), zsec.LimitError),
        (("5", 60, 60), zsec.ZsecTypeError),
        ((True, 60, 60), zsec.ZsecTypeError),
    ],
)
def test_bad_settings(args: tuple[Any, ...], error: type) -> None:
    with pytest.raises(error):
        zsec.FailureLimiter(*args)


def test_over_sockets_off_by_default_then_on_then_off(
    ctx: zmq.Context[Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="zsec.auth")
    path = tmp_path / "p.txt"
    path.write_text("admin=right\n")
    with zsec.Auth(ctx) as auth:
        auth.configure_plain("*", path)
        _server, endpoint = serve(ctx, zsec.plain_server)

        def login(password: str) -> zsec.Handshake:
            return plain_login(ctx, endpoint, "admin", password)

        for _ in range(6):  # off by default: failures do not ban
            assert login("wrong").zap_status == 400
        assert login("right").ok
        auth.set_failure_limit(max_failures=3, window=60.0, ban=300.0)
        for _ in range(3):
            assert login("wrong").zap_status == 400
        assert login("right").zap_status == 400  # banned: credentials not even checked
        assert "banning address 127.0.0.1" in caplog.text
        auth.set_failure_limit(None)
        assert login("right").ok


def test_after_a_ban_a_new_connection_gets_in(ctx: zmq.Context[Any], tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("admin=right\n")
    with zsec.Auth(ctx) as auth:
        auth.configure_plain("*", path)
        auth.set_failure_limit(max_failures=1, window=60.0, ban=0.5)
        _server, endpoint = serve(ctx, zsec.plain_server)

        def login(password: str) -> zsec.Handshake:
            return plain_login(ctx, endpoint, "admin", password)

        assert login("wrong").zap_status == 400  # the ban starts
        assert login("right").zap_status == 400
        # No sleeping: retry until the ban has run out (it is half a second).
        wait_for(lambda: login("right").ok, timeout=10, what="admitted once the ban ended")


def test_only_client_faults_count(tmp_path: Path) -> None:
    clock = Clock()
    limiter = zsec.FailureLimiter(2, 60, 60, clock=clock)
    missing = tmp_path / "gone.txt"
    missing.write_text("admin=right\n")
    passwords = zsec.PasswordFile(missing)
    missing.unlink()  # the server's problem, not the client's
    policy = Policy(plain={"*": passwords}, limiter=limiter)
    for _ in range(5):
        assert status(policy, plain(b"admin", b"right")) == (b"400", b"password file unavailable")
    assert limiter.banned == []


def test_ipv6_failures_count_per_64_prefix() -> None:
    clock = Clock()
    limiter = zsec.FailureLimiter(3, 60, 60, clock=clock)
    policy = Policy(curve={"*": zsec.CertStore()}, limiter=limiter)
    for host in (b"2001:db8:1:2::1", b"2001:db8:1:2::2", b"2001:db8:1:2:ffff::9"):
        status(policy, [b"r", b"", b"1.0", b"1", b"d", host, b"", b"CURVE", bytes(32)])
    assert limiter.banned == [b"2001:db8:1:2::/64"]
    other = [b"r", b"", b"1.0", b"1", b"d", b"2001:db8:1:3::1", b"", b"NULL"]
    assert status(policy, other)[0] == b"200"


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
