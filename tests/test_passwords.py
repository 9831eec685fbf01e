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


def test_password_table_admits_its_users_like_a_file(tmp_path: Path) -> None:
    table = zsec.PasswordTable({"admin": "secret", b"bob": b"pw", "hashed": fast_hash(b"h")})
    assert table.check(b"admin", b"secret") == b""
    assert table.check(b"bob", b"pw") == b""
    assert table.check(b"hashed", b"h") == b""
    assert table.check(b"admin", b"wrong") == b"wrong password"
    assert table.check(b"hashed", b"wrong") == b"wrong password"
    assert table.check(b"nobody", b"secret") == b"unknown user"
    assert len(table) == 3 and "admin" in table and b"bob" in table and "eve" not in table
    policy = Policy(plain={"*": table})
    assert decide(policy, req(b"PLAIN", b"admin", b"secret")).allowed
    assert not decide(policy, req(b"PLAIN", b"admin", b"secreT")).allowed


def test_password_table_keeps_no_clear_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    table = zsec.PasswordTable({"admin": "hunter2-clear"})
    assert b"hunter2-clear" not in table._state.entries[b"admin"]
    assert "hunter2" not in repr(table) and "users=1" in repr(table)
    policy = Policy(plain={"*": table}, verbose=True)
    policy.handle([b"r", b"", *req(b"PLAIN", b"admin", b"hunter2-clear")])
    policy.handle([b"r", b"", *req(b"PLAIN", b"admin", b"hunter2-guess")])
    assert "ALLOWED (PLAIN)" in caplog.text and "hunter2" not in caplog.text


@pytest.mark.parametrize(
    ("mapping", "error"),
    [
        ([("admin", "pw")], zsec.ZsecTypeError),
        ({"admin": 1234}, zsec.ZsecTypeError),
        ({5: "pw"}, zsec.ZsecTypeError),
        ({"u" * 256: "pw"}, zsec.PasswordError),
    ],
)
def test_password_table_refuses_what_plain_cannot_check(mapping: object, error: type) -> None:
    with pytest.raises(error) as caught:
        zsec.PasswordTable(mapping)
    assert "1234" not in str(caught.value)  # a bad value may be a password: never echoed


def test_password_table_version_and_tags_follow_changes() -> None:
    table = zsec.PasswordTable({"alice": "one", "bob": "two"})
    version, alice, bob = table.version, table.entry_tag(b"alice"), table.entry_tag("bob")
    assert alice and bob and alice != bob and table.entry_tag(b"carol") is None
    table.replace({"alice": "one", "bob": "two"})  # same entries: nothing changed
    assert (table.version, table.entry_tag(b"alice")) == (version, alice)
    table.replace({"alice": "one", "bob": "new"})
    assert table.version == version + 1
    assert table.entry_tag(b"alice") == alice and table.entry_tag(b"bob") not in (None, bob)
    table.replace({"bob": "new"})
    assert table.version == version + 2 and table.entry_tag(b"alice") is None
    assert table.check(b"alice", b"one") == b"unknown user"


def test_entry_tags_reveal_nothing_about_the_password() -> None:
    # Same password for two users, and a tag never equal to the stored digest.
    table = zsec.PasswordTable({"alice": "same", "bob": "same"})
    alice = table.entry_tag(b"alice")
    assert alice is not None and alice != table.entry_tag(b"bob")
    assert alice not in table._state.entries[b"alice"] and b"same" not in alice
    other = zsec.PasswordTable({"alice": "same"})
    assert other.entry_tag(b"alice") == alice  # a function of the entry, not of the object


def test_password_file_version_grows_on_reload_and_check(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"alice=one\nbob=two\n")
    passwords = PasswordFile(path, check_interval=0)
    version, alice, bob = (
        passwords.version,
        passwords.entry_tag(b"alice"),
        passwords.entry_tag(b"bob"),
    )
    path.write_bytes(b"alice=one\nbob=three\n")
    passwords.reload()
    assert passwords.version == version + 1
    assert passwords.entry_tag(b"alice") == alice and passwords.entry_tag(b"bob") != bob
    path.write_bytes(b"alice=one\n# bob left\n")
    assert passwords.check(b"bob", b"three") == b"unknown user"  # noticed by check()
    assert passwords.version == version + 2 and passwords.entry_tag(b"bob") is None
    path.write_bytes(b"alice=one\n#  bob left, comment edited\n")
    passwords.reload()
    assert passwords.version == version + 2  # the entries did not change
    path.unlink()
    assert passwords.check(b"alice", b"one") == b"password file unavailable"
    assert passwords.version == version + 3 and passwords.entry_tag(b"alice") is None
