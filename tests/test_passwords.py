"""PasswordFile: CZMQ verdicts, hashed entries, reloads, timing and no password in logs."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

import zsec
from zsec import _passwords
from zsec._passwords import PasswordFile, parse_passwords, set_password
from zsec._zap import (
    Policy,
)

from .helpers import CZMQ_FIXTURES, attempt, decide, fast_hash, login, req, serve, wait_for


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


def test_a_password_changed_in_place_within_one_timestamp_tick_is_still_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a file system with whole-second timestamps (ext4 with small inodes,
    # ext3, many NFS servers; any Linux before 6.13 with a jiffy of 4 ms), an
    # in-place rewrite of the same size right after a read leaves every stat
    # field as it was: the old password would stay valid until the next change.
    def whole_seconds(st: os.stat_result) -> tuple[int, ...]:
        return (st.st_dev, st.st_ino, int(st.st_mtime), int(st.st_ctime), st.st_size)

    monkeypatch.setattr(_passwords, "stat_signature", whole_seconds)
    path = tmp_path / "p.txt"
    path.write_bytes(b"admin=old-password\n")
    passwords = PasswordFile(path, check_interval=0)
    before = path.stat()
    with open(path, "r+b") as handle:  # same size, same inode
        handle.write(b"admin=new-password\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert passwords.check(b"admin", b"old-password") == b"wrong password"
    assert passwords.check(b"admin", b"new-password") == b""


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
        ({"": "pw"}, zsec.PasswordError),  # a 200 must never carry an empty User-Id
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


# -- item 4: a FIFO cannot hang the authenticator -------------------------------------


def test_a_password_file_swapped_for_a_fifo_cannot_hang_the_authenticator(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    path = tmp_path / "passwords.txt"
    path.write_bytes(b"admin=secret\n")
    auth = zsec.Auth(ctx)
    try:
        auth.configure_plain("*", path)
        auth.configure_curve("*", zsec.CURVE_ALLOW_ANY)
        _plain, plain_endpoint = serve(ctx, zsec.plain_server)
        assert login(ctx, plain_endpoint, "admin", "secret").ok
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        os.replace(fifo, path)  # nobody ever opens it for writing
        # The PLAIN client is refused (the file is not a regular file) ...
        wait_for(lambda: login(ctx, plain_endpoint, "admin", "secret").zap_status == 400)
        # ... and a CURVE client on the same context still gets its answer.
        server_cert, client_cert = zsec.Cert(), zsec.Cert()
        _curve, curve_endpoint = serve(ctx, lambda s: zsec.curve_server(s, server_cert))
        verdict, _ = attempt(
            ctx,
            curve_endpoint,
            lambda s: zsec.curve_client(s, client_cert, server_cert.public_key),
        )
        assert verdict.ok
    finally:
        auth.stop()
    assert not auth._thread.is_alive()  # stop() did not give up on a blocked thread


def test_a_fifo_is_refused_with_a_reason_when_made(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    with pytest.raises(zsec.FileAccessError, match="not a regular file"):
        PasswordFile(path)


# -- item 5: owner and mode, as the certificate store checks them -----------------------


def test_a_password_file_others_can_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"admin=secret\nmallory=letmein\n")
    path.chmod(0o666)
    with pytest.raises(zsec.FileAccessError, match=r"chmod go-w .*strict=False"):
        PasswordFile(path)
    lax = PasswordFile(path, strict=False)
    assert lax.check(b"admin", b"secret") == b""


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_password_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"mallory=letmein\n")
    os.chown(path, 4321, 4321)
    with pytest.raises(zsec.FileAccessError, match=r"owned by uid 4321.*chown"):
        PasswordFile(path)


def test_a_password_file_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    # Whoever can write the directory can replace the file with a symlink to
    # any file of ours that has name=value lines (an .env file), or remove it.
    shared = tmp_path / "shared"
    shared.mkdir()
    path = shared / "p.txt"
    path.write_bytes(b"admin=secret\n")
    path.chmod(0o600)
    shared.chmod(0o777)
    with pytest.raises(zsec.FileAccessError, match=r"directory .*chmod go-w .*strict=False"):
        PasswordFile(path)
    link = tmp_path / "link.txt"  # a trusted name that leads into it is no better
    link.symlink_to(path)
    with pytest.raises(zsec.FileAccessError, match=r"directory .*chmod go-w"):
        PasswordFile(link)
    assert PasswordFile(path, strict=False).check(b"admin", b"secret") == b""


def test_a_password_directory_opened_to_others_later_admits_nobody_until_fixed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "etc" / "p.txt"
    path.parent.mkdir()
    path.write_bytes(b"admin=secret\n")
    path.chmod(0o600)
    passwords = PasswordFile(path, check_interval=0)
    path.parent.chmod(0o777)
    assert passwords.check(b"admin", b"secret") == b"password file unavailable"
    path.parent.chmod(0o755)
    assert passwords.check(b"admin", b"secret") == b""


def test_a_password_file_opened_to_others_later_admits_nobody_until_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"admin=secret\n")
    path.chmod(0o600)
    passwords = PasswordFile(path, check_interval=0)
    path.chmod(0o666)
    with open(path, "ab") as handle:  # another local user adds themselves
        handle.write(b"mallory=letmein\n")
    assert passwords.check(b"mallory", b"letmein") == b"password file unavailable"
    assert passwords.check(b"admin", b"secret") == b"password file unavailable"
    refusals = [r for r in caplog.records if "chmod go-w" in r.getMessage()]
    assert len(refusals) == 1 and "nobody is admitted" in refusals[0].getMessage()
    path.write_bytes(b"admin=secret\n")
    path.chmod(0o600)
    assert passwords.check(b"admin", b"secret") == b""
    assert passwords.check(b"mallory", b"letmein") == b"unknown user"


def test_clear_text_readable_by_others_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"admin=clear-secret\n")
    path.chmod(0o644)
    passwords = PasswordFile(path, check_interval=0)
    path.write_bytes(b"admin=clear-secret\nbob=other\n")
    passwords.reload()
    warnings = [r.getMessage() for r in caplog.records if "clear-text" in r.getMessage()]
    assert len(warnings) == 1 and "chmod go-r" in warnings[0]
    assert "clear-secret" not in caplog.text
    caplog.clear()
    hashed = tmp_path / "hashed.txt"
    set_password(str(hashed), b"admin", b"pw", hasher=fast_hash)
    hashed.chmod(0o644)
    PasswordFile(hashed)  # hashes only: nothing to warn about
    path.chmod(0o600)
    PasswordFile(path)  # clear text, but only the owner reads it
    assert "clear-text" not in caplog.text


# -- item 6: decoys match the entries actually in the file ------------------------------


def _argon2(password: bytes, variant: str, passes: int, kib: int) -> bytes:
    from nacl import pwhash

    module = pwhash.argon2id if variant == "argon2id" else pwhash.argon2i
    return bytes(module.str(password, opslimit=passes, memlimit=kib * 1024))


def _params(entry: bytes) -> bytes:
    return entry.split(b"$")[1] + b"$" + entry.split(b"$")[3]


@pytest.mark.parametrize(
    ("variant", "passes", "kib"),
    [("argon2id", 3, 16), ("argon2i", 3, 8), ("argon2id", 1, 8)],
)
def test_unknown_users_are_timed_against_the_files_own_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str, passes: int, kib: int
) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"alice=" + _argon2(b"pw", variant, passes, kib) + b"\nplain=clear\n")
    passwords = PasswordFile(path)
    checked: list[bytes] = []
    monkeypatch.setattr(_passwords, "_verify_hash", lambda e, p: checked.append(e) or False)
    for user in (b"alice", b"nobody", b"someone-else", b"plain"):
        passwords.check(user, b"guess")
    assert len(checked) == 4
    assert {_params(e) for e in checked} == {f"{variant}$m={kib},t={passes},p=1".encode()}
    assert checked[0] == passwords._state.entries[b"alice"]
    assert all(e != checked[0] for e in checked[1:])  # a decoy, never the real entry


def test_unknown_users_spread_over_parameter_sets_as_real_users_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cheap, dear = _argon2(b"a", "argon2id", 1, 8), _argon2(b"b", "argon2i", 3, 8)
    path = tmp_path / "p.txt"
    path.write_bytes(b"u1=%s\nu2=%s\nu3=%s\n" % (cheap, _argon2(b"c", "argon2id", 1, 8), dear))
    table = PasswordFile(path)
    checked: list[bytes] = []
    monkeypatch.setattr(_passwords, "_verify_hash", lambda e, p: checked.append(e) or False)
    for i in range(300):
        table.check(f"nobody{i}".encode(), b"guess")
    share = sum(_params(e) == _params(cheap) for e in checked) / len(checked)
    assert 0.5 < share < 0.85  # two users in three have the cheap parameters
    checked.clear()
    for _ in range(3):
        table.check(b"the-same-name", b"guess")
    assert len(set(checked)) == 1  # one name is always timed the same way, like a real user


# -- item 11: silent mistakes are said once, without the secrets -----------------------


def test_a_line_without_equals_is_logged_by_number_once_per_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"# users\nadmin=ok\nhunter2-typed-alone\n\n=no-name\n")
    passwords = PasswordFile(path, check_interval=0)
    for _ in range(3):
        passwords.check(b"admin", b"ok")
    passwords.reload()
    said = [r.getMessage() for r in caplog.records if "without 'name='" in r.getMessage()]
    assert said == [f"password file {path}: 2 line(s) without 'name=' ignored (line 3, 5)"]
    assert "hunter2" not in caplog.text and "no-name" not in caplog.text
    path.write_bytes(b"admin=ok\nhunter2-typed-alone\n")
    passwords.reload()
    said = [r.getMessage() for r in caplog.records if "without 'name='" in r.getMessage()]
    assert len(said) == 2 and said[1].endswith("(line 2)")


def test_a_missing_password_file_is_named_once_in_plain_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "p.txt"
    with pytest.raises(zsec.FileAccessError) as caught:
        PasswordFile(path)
    assert str(caught.value) == f"password file {path} does not exist"
    path.write_bytes(b"admin=pw\n")
    path.chmod(0o600)
    passwords = PasswordFile(path, check_interval=0)
    path.unlink()
    for _ in range(3):
        assert passwords.check(b"admin", b"pw") == b"password file unavailable"
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [f"password file {path} does not exist; nobody is admitted until it is fixed"]


@pytest.mark.parametrize(
    ("variant", "passes", "lanes"), [("argon2i", 1, 1), ("argon2id", 1, 4), ("argon2i", 3, 4)]
)
def test_entries_libsodium_checks_but_cannot_make_still_get_a_decoy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str, passes: int, lanes: int
) -> None:
    # argon2-cffi writes p=4 by default, other tools argon2i with 1 pass:
    # libsodium checks such entries at full cost, so an unknown user must
    # pay the same, though libsodium cannot make a string like them.
    entry = (_argon2(b"pw", variant, 3, 8).replace(b",t=3,", b",t=%d," % passes)).replace(
        b",p=1$", b",p=%d$" % lanes
    )
    path = tmp_path / "p.txt"
    path.write_bytes(b"odd=" + entry + b"\nplain=clear\n")
    passwords = PasswordFile(path)
    checked: list[bytes] = []
    monkeypatch.setattr(_passwords, "_verify_hash", lambda e, p: checked.append(e) or False)
    for user in (b"odd", b"nobody", b"plain"):
        checked.clear()
        passwords.check(user, b"guess")
        assert [_params(e) for e in checked] == [_params(entry)], user
    assert checked[0] != entry  # a decoy, never the real entry
    monkeypatch.undo()
    assert passwords.check(b"plain", b"clear") == b""


@pytest.mark.parametrize(
    "limits", [b"m=4194304,t=1", b"m=8,t=4294967295", b"m=1048576,t=5", b"m=9999999999,t=1"]
)
def test_an_entry_with_absurd_limits_is_refused_without_running_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, limits: bytes
) -> None:
    # Run on the authenticator thread, m=4194304 (4 GiB) or t=4294967295
    # would stall every login or exhaust memory: a file writer (or a careless
    # copy from another system) must not be able to do that.
    absurd = _argon2(b"pw", "argon2id", 1, 8).replace(b"m=8,t=1", limits)
    normal = _argon2(b"pw", "argon2id", 1, 8)
    checked: list[bytes] = []
    monkeypatch.setattr(_passwords, "_verify_hash", lambda e, p: checked.append(e) or False)
    path = tmp_path / "p.txt"
    path.write_bytes(b"big=" + absurd + b"\nnormal=" + normal + b"\n")
    passwords = PasswordFile(path)
    assert passwords.check(b"big", b"pw") == b"wrong password"
    assert passwords.check(b"nobody", b"pw") == b"unknown user"
    assert checked and all(limits not in e for e in checked)  # timed by the normal decoy
    assert "1 hashed password entry refused" in caplog.text
    assert absurd.decode() not in caplog.text


@pytest.mark.parametrize("limits", [b"m=1048576,t=4", b"m=524288,t=8"])
def test_libsodiums_sensitive_limits_are_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: bytes
) -> None:
    # The cap is libsodium's most expensive preset (argon2id and argon2i
    # "sensitive"): entries made with it are checked as usual.
    sensitive = _argon2(b"pw", "argon2id", 1, 8).replace(b"m=8,t=1", limits)
    checked: list[bytes] = []
    monkeypatch.setattr(_passwords, "_verify_hash", lambda e, p: checked.append(e) or False)
    path = tmp_path / "p.txt"
    path.write_bytes(b"admin=" + sensitive + b"\n")
    assert PasswordFile(path).check(b"admin", b"pw") == b"wrong password"
    assert checked == [sensitive]


def test_an_entry_libsodium_cannot_read_is_refused_and_breaks_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"odd=$argon2id$v=19$garbage\nplain=clear\n")
    passwords = PasswordFile(path)
    assert passwords.check(b"nobody", b"pw") == b"unknown user"
    assert passwords.check(b"odd", b"pw") == b"wrong password"
    assert passwords.check(b"plain", b"clear") == b""
    assert "1 hashed password entry refused" in caplog.text


@pytest.mark.parametrize("interval", [float("nan"), float("inf"), -1.0])
def test_a_check_interval_that_would_stop_reloads_is_refused(
    tmp_path: Path, interval: object
) -> None:
    # NaN made every later "is it time to look again?" false: a removed
    # user stayed admitted for the life of the process.
    path = tmp_path / "p.txt"
    path.write_bytes(b"admin=pw\n")
    with pytest.raises(zsec.ZsecValueError, match="check_interval"):
        PasswordFile(path, check_interval=interval)  # type: ignore[arg-type]


def test_every_decoy_is_an_argon2_string_libsodium_accepts(tmp_path: Path) -> None:
    # libsodium refuses base64 whose unused last bits are not zero, before
    # any hashing: a decoy with such a salt or hash costs nothing, and an
    # unknown user answers at once where a known one pays argon2.
    import base64

    entries = [_argon2(b"pw", "argon2id", 1, 8), _argon2(b"pw", "argon2i", 3, 8)]
    entries.append(entries[0].replace(b",p=1$", b",p=4$"))
    for _ in range(20):
        for decoy in _passwords.PasswordTable(
            {f"u{i}": e for i, e in enumerate(entries)}
        )._state.decoys:
            for part in decoy.split(b"$")[4:]:
                again = base64.b64encode(base64.b64decode(part + b"=" * (-len(part) % 4)))
                assert again.rstrip(b"=") == part, decoy
