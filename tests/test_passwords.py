"""PasswordFile: CZMQ verdicts, hashed entries, reloads, timing and no password in logs."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import zsec
from zsec import _passwords
from zsec._passwords import PasswordFile, parse_passwords, set_password
from zsec._zap import (
    Policy,
)

from .helpers import CZMQ_FIXTURES, decide, fast_hash, req


def test_wrong_passwords_cost_the_same_in_a_mixed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.txt"
    path.write_text("plainuser=plain\n")
    set_password(str(path), b"hashed", b"pw", hasher=fast_hash)
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


PASSWORD_FIXTURE = json.loads((CZMQ_FIXTURES / "passwords/passwords_verdicts.json").read_text())


@pytest.mark.parametrize("probe", PASSWORD_FIXTURE["probes"], ids=lambda p: p["why"])
def test_password_verdicts_match_czmq(probe: dict, czmq_dir: Path) -> None:
    passwords = PasswordFile(czmq_dir / "passwords/passwords.txt")
    reply = decide(
        Policy(plain={"*": passwords}),
        req(b"PLAIN", probe["username"].encode(), probe["password"].encode()),
    )
    assert reply.status_code == probe["status_code"].encode()


def test_crlf_password_file_works_where_czmq_keeps_the_cr(tmp_path: Path) -> None:
    # CZMQ strips only "\n", so with CRLF line ends every password ends in
    # "\r" and nobody can log in. zsec strips the CR.
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"# comment\r\nadmin=secret\r\nlast=one")
    policy = Policy(plain={"*": PasswordFile(path)})
    assert decide(policy, req(b"PLAIN", b"admin", b"secret")).allowed
    assert not decide(policy, req(b"PLAIN", b"admin", b"secret\r")).allowed
    os.utime(path, (time.time() - 10, time.time() - 10))
    policy.plain["*"].reload()
    assert decide(policy, req(b"PLAIN", b"last", b"one")).allowed


def test_long_lines_are_whole(tmp_path: Path) -> None:
    # CZMQ reads with fgets(1024) and splits longer lines into bogus entries.
    path = tmp_path / "long.txt"
    path.write_bytes(b"long=" + b"x" * 2000 + b"\nx" * 1 + b"=y\n")
    passwords = PasswordFile(path)
    assert passwords.check(b"long", b"x" * 2000) == b""
    assert passwords.check(b"x", b"y") == b""


@given(st.binary(max_size=300))
def test_password_parser_is_total(data: bytes) -> None:
    entries = parse_passwords(data)
    assert all(name and b"\n" not in name for name in entries)


def test_hashed_entries(tmp_path: Path) -> None:
    path = tmp_path / "hashed.txt"
    path.write_bytes(b"# users\nplain=old\n")
    path.chmod(0o604)  # others may read it now; after an update they may not
    assert set_password(str(path), b"alice", b"correct horse", hasher=fast_hash) is False
    assert set_password(str(path), b"plain", b"new", hasher=fast_hash) is True
    text = path.read_bytes()
    assert text.startswith(b"# users\nplain=$argon2id$") and b"correct horse" not in text
    assert (path.stat().st_mode & 0o777) == 0o600
    path.chmod(0o640)  # group read is kept (a service may read through its group)
    set_password(str(path), b"plain", b"new", hasher=fast_hash)
    assert (path.stat().st_mode & 0o777) == 0o640
    passwords = PasswordFile(path)
    assert passwords.check(b"alice", b"correct horse") == b""
    assert passwords.check(b"alice", b"correct horse") == b""  # remembered, no second argon2
    assert passwords.check(b"alice", b"wrong") == b"wrong password"
    assert passwords.check(b"plain", b"old") == b"wrong password"
    assert passwords.check(b"plain", b"new") == b""


@pytest.mark.parametrize(
    ("user", "password"),
    [
        (b"", b"pw"),
        (b"a=b", b"pw"),
        (b"#x", b"pw"),
        (b"u", b""),
        (b"u", b"a\nb"),
        (b"u" * 256, b"p"),
    ],
)
def test_set_password_rejects_what_a_line_cannot_hold(
    tmp_path: Path, user: bytes, password: bytes
) -> None:
    with pytest.raises(zsec.PasswordError):
        set_password(str(tmp_path / "p"), user, password, hasher=fast_hash)
    assert not (tmp_path / "p").exists()


def test_password_file_reloads_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"admin=one\n")
    passwords = PasswordFile(path, check_interval=0)
    assert passwords.check(b"admin", b"one") == b""
    path.write_bytes(b"admin=two\n")
    assert passwords.check(b"admin", b"two") == b""
    assert passwords.check(b"admin", b"one") == b"wrong password"


def test_a_line_being_written_is_not_trusted_yet(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"admin=complete\nnewuser=sec")  # cut mid-write: "sec" of "secret"
    passwords = PasswordFile(path, check_interval=0)
    assert passwords.check(b"newuser", b"sec") == b"unknown user"
    assert passwords.check(b"admin", b"complete") == b""
    with open(path, "ab") as handle:
        handle.write(b"ret\n")
    assert passwords.check(b"newuser", b"secret") == b""


def test_missing_password_file_admits_nobody_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"admin=pw\n")
    passwords = PasswordFile(path, check_interval=0)
    path.unlink()
    assert passwords.check(b"admin", b"pw") == b"password file unavailable"
    assert "nobody is admitted" in caplog.text
    path.write_bytes(b"admin=pw\n")
    assert passwords.check(b"admin", b"pw") == b""
    with pytest.raises(zsec.FileAccessError):
        PasswordFile(tmp_path / "never-existed.txt")


def test_no_password_in_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, passwords: PasswordFile
) -> None:
    caplog.set_level(logging.DEBUG)
    policy = Policy(plain={"*": passwords}, verbose=True)
    for pw in (b"secret", b"wrong-guess"):
        policy.handle([b"r", b"", *req(b"PLAIN", b"admin", pw)])
    assert "ALLOWED (PLAIN)" in caplog.text and "DENIED (PLAIN)" in caplog.text
    assert "username=admin" in caplog.text
    assert "secret" not in caplog.text and "wrong-guess" not in caplog.text


def test_a_reload_during_a_hash_check_cannot_poison_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zsec import _passwords

    path = tmp_path / "p.txt"
    set_password(str(path), b"alice", b"leaked-old", hasher=fast_hash)
    passwords = PasswordFile(path)
    real_verify = _passwords._verify_hash

    def verify_while_the_file_rotates(entry: bytes, password: bytes) -> bool:
        # The operator rotates the password while argon2 runs for the old one.
        set_password(str(path), b"alice", b"fresh-new", hasher=fast_hash)
        passwords.reload()
        return real_verify(entry, password)

    monkeypatch.setattr(_passwords, "_verify_hash", verify_while_the_file_rotates)
    assert passwords.check(b"alice", b"leaked-old") == b""  # right for the file it started with
    monkeypatch.setattr(_passwords, "_verify_hash", real_verify)
    assert passwords.check(b"alice", b"leaked-old") == b"wrong password"
    assert passwords.check(b"alice", b"fresh-new") == b""


def test_unknown_users_cost_a_hash_check_when_the_file_has_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zsec import _passwords

    path = tmp_path / "p.txt"
    set_password(str(path), b"alice", b"pw", hasher=fast_hash)
    passwords = PasswordFile(path)
    calls: list[bytes] = []
    monkeypatch.setattr(_passwords, "_verify_hash", lambda entry, pw: calls.append(pw) or False)
    assert passwords.check(b"nobody", b"guess") == b"unknown user"
    assert passwords.check(b"alice", b"guess") == b"wrong password"
    assert calls == [b"guess", b"guess"]  # same work either way: no user enumeration
