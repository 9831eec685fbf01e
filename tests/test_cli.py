"""The zsec command: makecert prompts, flags, refusals, and no secret in any output."""

from __future__ import annotations

import io
import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import zsec
from zsec._passwords import PasswordFile
from zsec.cli import main

from .helpers import ROOT, wait_for


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(argv: list[str], stdin: io.StringIO | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdin=stdin or io.StringIO(""), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _assert_no_secret(cert_path: Path, *texts: str) -> None:
    secret = zsec.Cert.load(cert_path).secret_txt
    assert secret is not None
    for text in texts:
        assert secret not in text
        assert "secret-key" not in text


def test_makecert_with_flags(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    code, out, err = _run(
        [
            "makecert",
            str(path),
            "--name",
            "Srv",
            "--email",
            "s@example.org",
            "--org",
            "Ex",
            "--meta",
            "role=hub",
            "--meta",
            "note=a = b",
        ]
    )
    assert code == 0, err
    cert = zsec.Cert.load(path)
    assert cert.meta_keys() == [
        "name",
        "email",
        "organization",
        "role",
        "note",
        "created-by",
        "date-created",
    ]
    assert cert.meta("note") == "a = b"
    assert cert.meta("created-by") == "zsec makecert"
    assert f"Public key: {cert.public_txt}" in out
    assert str(path) in out and f"{path}_secret" in out
    assert stat.S_IMODE(Path(f"{path}_secret").stat().st_mode) == 0o600
    _assert_no_secret(path, out, err)


def test_makecert_prompts_at_a_terminal(tmp_path: Path) -> None:
    path = tmp_path / "me.txt"
    answers = _Tty("Ann Example\nann@example.org\n\n")
    code, out, err = _run(["makecert", str(path)], stdin=answers)
    assert code == 0, err
    assert "Enter your full name: " in out
    assert "Enter your email address: " in out
    assert "Enter your organization: " in out
    cert = zsec.Cert.load(path)
    assert cert.meta("name") == "Ann Example"
    assert cert.meta("email") == "ann@example.org"
    assert cert.meta("organization") is None  # empty answer: not set, as in CZMQ
    _assert_no_secret(path, out, err)


def test_flags_skip_their_prompts(tmp_path: Path) -> None:
    code, out, _ = _run(["makecert", str(tmp_path / "c"), "--name", "N"], stdin=_Tty("e@x\nOrg\n"))
    assert code == 0
    assert "full name" not in out
    assert zsec.Cert.load(tmp_path / "c").meta("organization") == "Org"


def test_no_prompts_when_not_a_terminal_or_in_batch_mode(tmp_path: Path) -> None:
    code, out, _ = _run(["makecert", str(tmp_path / "a")], stdin=io.StringIO("ignored\n"))
    assert code == 0 and "Enter" not in out
    code, out, _ = _run(["makecert", str(tmp_path / "b"), "--batch"], stdin=_Tty("x\n"))
    assert code == 0 and "Enter" not in out
    assert zsec.Cert.load(tmp_path / "b").meta("name") is None


def test_interactive_flag_reads_piped_answers(tmp_path: Path) -> None:
    code, _, _ = _run(
        ["makecert", str(tmp_path / "c"), "--interactive"], stdin=io.StringIO("A\nB\nC\n")
    )
    assert code == 0
    assert zsec.Cert.load(tmp_path / "c").metadata["organization"] == "C"


def test_eof_at_a_prompt_is_one_clear_line_and_writes_nothing(tmp_path: Path) -> None:
    code, _, err = _run(["makecert", str(tmp_path / "c")], stdin=_Tty("Ann\n"))
    assert code == 1
    assert err.count("\n") == 1
    assert "input ended at the prompt 'Enter your email address'" in err
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "c.key"
    assert _run(["makecert", str(path), "--batch"])[0] == 0
    first = zsec.Cert.load(path)
    code, _, err = _run(["makecert", str(path), "--batch"])
    assert code == 1 and "already exists; use --force" in err
    assert zsec.Cert.load(path) == first
    # A lone secret file counts too: replacing it would lose a key.
    os.unlink(path)
    code, _, err = _run(["makecert", str(path), "--batch"])
    assert code == 1 and "c.key_secret already exists" in err
    assert _run(["makecert", str(path), "--batch", "--force"])[0] == 0
    assert zsec.Cert.load(path) != first


@pytest.mark.parametrize(
    ("argv_tail", "fragment"),
    [
        (["--meta", "novalue"], "--meta expects KEY=VALUE"),
        (["--meta", "bad name=x"], "metadata name 'bad name'"),
        (["--name", "two\nlines"], "line breaks are not"),
    ],
)
def test_bad_metadata_is_one_line(tmp_path: Path, argv_tail: list[str], fragment: str) -> None:
    code, _, err = _run(["makecert", str(tmp_path / "c"), "--batch", *argv_tail])
    assert code == 1
    assert fragment in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "where",
    [
        lambda tmp: tmp / "missing-dir" / "c.key",  # no such directory
        lambda tmp: tmp / "file" / "c.key",  # parent is a file
        lambda tmp: Path("/proc/zsec-test.key"),  # a directory nobody can write, root included
    ],
)
def test_unwritable_path_is_one_line(tmp_path: Path, where: object) -> None:
    (tmp_path / "file").write_text("x")
    path = where(tmp_path)  # type: ignore[operator]
    code, out, err = _run(["makecert", str(path), "--batch"])
    assert code == 1
    assert err.startswith("zsec makecert: error: cannot write") and err.count("\n") == 1
    assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["makecert", "--bogus"]) == 2
    assert main([]) == 2


def test_console_script_and_tools_wrapper(tmp_path: Path) -> None:
    for argv in (
        [sys.executable, "-m", "zsec", "makecert", "a.key", "--name", "A"],
        [sys.executable, str(ROOT / "tools/makecert"), "b.key", "--name", "B"],
    ):
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "Public key: " in done.stdout
    assert zsec.Cert.load(tmp_path / "b.key").meta("name") == "B"
    _assert_no_secret(tmp_path / "a.key", done.stdout, done.stderr)


def _read_until(fd: int, marker: bytes, timeout: float = 20.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no {marker!r} from makecert; got {data!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def _terminal_session(
    argv: list[str], cwd: Path, exchanges: list[tuple[bytes, bytes]], done_marker: bytes
) -> bytes:
    """Run ``python -m zsec argv`` on a pseudo-terminal, answering prompts; return the output."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zsec", *argv],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        cwd=cwd,
        start_new_session=True,
    )
    os.close(secondary)
    try:
        transcript = b""
        for prompt, answer in exchanges:
            transcript += _read_until(primary, prompt)
            os.write(primary, answer)
        transcript += _read_until(primary, done_marker)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        os.close(primary)
    return transcript


def test_prompts_on_a_real_terminal(tmp_path: Path) -> None:
    transcript = _terminal_session(
        ["makecert", "tty.key"],
        tmp_path,
        [
            (b"full name: ", b"Tess Tty\n"),
            (b"email address: ", b"t@example.org\n"),
            (b"organization: ", b"Pty Ltd\n"),
        ],
        b"keep it private",
    )
    cert = zsec.Cert.load(tmp_path / "tty.key")
    assert cert.metadata["organization"] == "Pty Ltd"
    _assert_no_secret(tmp_path / "tty.key", transcript.decode(errors="replace"))


# -- zsec passwd ------------------------------------------------------------------


def test_passwd_from_stdin_adds_then_replaces(tmp_path: Path) -> None:
    from zsec._passwords import PasswordFile

    path = tmp_path / "passwords.txt"
    path.write_text("# team\nbob=plain-text\n")
    code, out, err = _run(["passwd", str(path), "alice", "--stdin"], io.StringIO("s3cret!\n"))
    assert code == 0, err
    assert out == f"Added alice in {path} (argon2id hash, file mode 0640)\n"
    code, out, _ = _run(["passwd", str(path), "alice", "--stdin"], io.StringIO("n3w-one\n"))
    assert code == 0 and out.startswith("Replaced the password of alice")
    text = path.read_text()
    assert text.startswith("# team\nbob=plain-text\nalice=$argon2id$")
    assert "s3cret!" not in text + out and "n3w-one" not in text + out
    # An existing file keeps group read (a service may read it through its
    # group) but loses anything for others; a new file is 0600.
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    fresh = tmp_path / "fresh.txt"
    assert _run(["passwd", str(fresh), "x", "--stdin"], io.StringIO("pw\n"))[0] == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    passwords = PasswordFile(path)
    assert passwords.check(b"alice", b"n3w-one") == b""
    assert passwords.check(b"alice", b"s3cret!") == b"wrong password"
    assert passwords.check(b"bob", b"plain-text") == b""


@pytest.mark.parametrize(
    ("argv", "stdin", "fragment"),
    [
        (
            ["passwd", "{f}", "alice"],
            "",
            "no terminal to ask for the password; pass it with --stdin",
        ),
        (["passwd", "{f}", "alice", "--stdin"], "", "no password on standard input"),
        (["passwd", "{f}", "a=b", "--stdin"], "pw\n", "cannot start with '#' or contain '='"),
        (["passwd", "{f}", "alice", "--stdin"], "\n", "a password must be 1 to 255 bytes"),
    ],
)
def test_passwd_errors_are_one_line(
    tmp_path: Path, argv: list[str], stdin: str, fragment: str
) -> None:
    path = tmp_path / "p.txt"
    code, out, err = _run([a.format(f=path) for a in argv], io.StringIO(stdin))
    assert code == 1 and fragment in err and err.count("\n") == 1
    assert out == "" and not path.exists()


def test_passwd_asks_twice_at_a_terminal_without_echo(tmp_path: Path) -> None:
    transcript = _terminal_session(
        ["passwd", "p.txt", "carol"],
        tmp_path,
        [
            (b"New password for carol: ", b"tty-pass-1\n"),
            (b"Repeat the password: ", b"tty-pass-1\n"),
        ],
        b"file mode 0600",
    )
    assert b"tty-pass-1" not in transcript  # never echoed
    from zsec._passwords import PasswordFile

    assert PasswordFile(tmp_path / "p.txt").check(b"carol", b"tty-pass-1") == b""


def test_passwd_takes_any_bytes_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    code, out, err = _run(["passwd", str(path), "alice", "--stdin"], io.StringIO("caf\udce9\n"))
    assert "caf" not in out + err
    assert code == 0, err
    from zsec._passwords import PasswordFile

    assert PasswordFile(path).check(b"alice", b"caf\xe9") == b""


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


# -- operations: --version, cert show, check, audit tail, missing directories ---------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"zsec {zsec.__version__}"
    result = subprocess.run(
        [sys.executable, "-m", "zsec", "--version"], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, f"zsec {zsec.__version__}")


@pytest.mark.parametrize("command", ["makecert", "passwd"])
def test_writing_into_a_missing_directory_names_the_directory(tmp_path: Path, command: str) -> None:
    target = tmp_path / "no-such-dir" / "file"
    argv = ["makecert", str(target), "--batch"] if command == "makecert" else [
        "passwd", str(target), "bob", "--stdin"
    ]  # fmt: skip
    code, out, err = _run(argv, io.StringIO("Cli-Stdin-Value\n"))
    assert code == 1 and out == ""
    assert err.startswith(f"zsec {command}: error: cannot write {target}: ")
    assert f"directory {tmp_path / 'no-such-dir'} does not exist" in err
    assert "mkdir -p" in err and ".tmp" not in err
    assert not (tmp_path / "no-such-dir").exists()


def test_cert_show_public_and_secret_files(tmp_path: Path) -> None:
    path = tmp_path / "alice.key"
    assert _run(["makecert", str(path), "--name", "Alice", "--batch"])[0] == 0
    cert = zsec.Cert.load(path)
    code, public_out, err = _run(["cert", "show", str(path)])
    assert (code, err) == (0, "")
    assert f"public key:  {cert.public_txt}" in public_out
    assert "kind:        public certificate" in public_out
    assert f"secret file: {path}_secret exists" in public_out
    assert "name = Alice" in public_out
    assert "mode:        0644 (-rw-r--r--)" in public_out
    assert f"(uid {os.getuid()})" in public_out
    fingerprint = [line for line in public_out.splitlines() if line.startswith("fingerprint")]
    assert fingerprint and fingerprint[0].split()[1].startswith("SHA256:")
    code, secret_out, err = _run(["cert", "show", f"{path}_secret"])
    assert code == 0
    assert "secret certificate (holds the secret key, which is not shown)" in secret_out
    assert "mode:        0600" in secret_out
    assert fingerprint[0] in secret_out
    _assert_no_secret(path, public_out, secret_out)


def test_cert_show_escapes_control_characters_from_the_file(tmp_path: Path) -> None:
    cert = zsec.Cert()
    path = tmp_path / "eve.key"
    path.write_text(
        f'metadata\n    name = "Eve \x1b[2J"\ncurve\n    public-key = "{cert.public_txt}"\n'
    )
    code, out, _ = _run(["cert", "show", str(path)])
    assert code == 0
    assert "name = Eve \\x1b[2J" in out and "\x1b" not in out


def test_cert_show_refuses_what_is_not_a_certificate(tmp_path: Path) -> None:
    (tmp_path / "junk.key").write_text("hello\n")
    code, out, err = _run(["cert", "show", str(tmp_path / "junk.key")])
    assert (code, out) == (1, "")
    assert "zsec cert: error:" in err and "public-key" in err
    code, _, err = _run(["cert", "show", str(tmp_path / "missing.key")])
    assert code == 1 and "No such file" in err


def _trust_dir(tmp_path: Path) -> tuple[Path, zsec.Cert]:
    trust = tmp_path / "trust"
    trust.mkdir(mode=0o700)
    cert = zsec.Cert()
    cert.set_meta("name", "alice")
    cert.save_public(trust / "alice.key")
    return trust, cert


def test_check_a_clean_trust_directory_exits_zero(tmp_path: Path) -> None:
    trust, _ = _trust_dir(tmp_path)
    (trust / "sub").mkdir(mode=0o700)
    zsec.Cert().save_public(trust / "sub" / "bob.key")
    code, out, err = _run(["check", str(trust)])
    assert (code, err) == (0, "")
    assert f"trust directory {trust}: 2 certificates, 0 problem(s)" in out
    assert "no problems found" in out


def test_check_reports_every_kind_of_trust_directory_problem(tmp_path: Path) -> None:
    import json

    trust, cert = _trust_dir(tmp_path)
    cert.save(trust / "leaked.key")  # public + _secret, and the secret key in a public name
    (trust / "leaked.key").unlink()
    (trust / "leaked.key_secret").rename(trust / "leaked.key")
    cert.save_secret(trust / "other.key_secret")
    cert.save_public(trust / "copy.key")
    (trust / "junk.key").write_text("not a certificate\n")
    (trust / "open.key").write_bytes((trust / "alice.key").read_bytes())
    (trust / "open.key").chmod(0o666)
    outside = tmp_path / "elsewhere"
    outside.mkdir(mode=0o700)
    zsec.Cert().save_public(outside / "x.key")
    (trust / "link.key").symlink_to(outside / "x.key")
    os.mkfifo(trust / "pipe.key")
    (trust / ".swp").write_text("")
    unreadable = trust / "locked.key"
    unreadable.write_text("x")
    unreadable.chmod(0)
    code, out, err = _run(["check", str(trust), "--json"])
    assert (code, err) == (1, "")
    report = json.loads(out)
    found = {(Path(p["path"]).name, p["problem"]) for p in report["problems"]}
    expected = {
        ("leaked.key", "secret-in-public-file"),
        ("other.key_secret", "secret-file"),
        ("junk.key", "invalid"),
        ("open.key", "bad-permissions"),
        ("link.key", "symlink-outside"),
        ("pipe.key", "unreadable"),
        ("alice.key", "duplicate-key"),
    }
    if os.geteuid() != 0:  # root reads any file
        expected.add(("locked.key", "unreadable"))
    else:
        expected.add(("locked.key", "invalid"))
    assert found == expected
    assert {(Path(n["path"]).name, n["problem"]) for n in report["notes"]} == {(".swp", "skipped")}
    duplicate = next(p for p in report["problems"] if p["problem"] == "duplicate-key")
    assert "copy.key" in duplicate["detail"] and "leaked.key" in duplicate["detail"]
    # The table says the same.
    code, table, _ = _run(["check", str(trust)])
    assert code == 1
    for _, problem in expected:
        assert problem in table
    _assert_no_secret(trust / "leaked.key", out, table)


def test_check_a_group_writable_trust_directory(tmp_path: Path) -> None:
    trust, _ = _trust_dir(tmp_path)
    trust.chmod(0o775)
    code, out, _ = _run(["check", str(trust)])
    assert code == 1
    assert "bad-permissions" in out and "chmod go-w" in out


def test_check_a_password_file(tmp_path: Path) -> None:
    import json

    good = tmp_path / "good.txt"
    assert _run(["passwd", str(good), "bob", "--stdin"], io.StringIO("Cli-Stdin-Value\n"))[0] == 0
    code, out, _ = _run(["check", str(good)])
    assert code == 0 and "password file" in out and "1 user, 0 problem(s)" in out
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"# comment\nalice=Pl41n-Secret-Value\nPl41n-Secret-Value\n=x\nalice=2\n")
    bad.chmod(0o644)
    code, out, _ = _run(["check", str(bad), "--json"])
    assert code == 1
    report = json.loads(out)
    assert [p["problem"] for p in report["problems"]] == [
        "bad-permissions",
        "no-equals",
        "empty-name",
        "duplicate-user",
    ]
    assert "line 3 has no '='" in report["problems"][1]["detail"]
    assert "Pl41n-Secret-Value" not in out  # a line without '=' may be a password
    assert report["users"] == 1


def test_check_a_missing_path(tmp_path: Path) -> None:
    code, out, err = _run(["check", str(tmp_path / "nothing")])
    assert (code, out) == (1, "") and "does not exist" in err


def _audit_records(tmp_path: Path) -> Path:
    from zsec._events import AuditLog, Decision, TrustChange

    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.write(
        [
            Decision(
                time.time(), "PLAIN", "global", "192.0.2.1", "mallory\x1b[2J", None, None,
                "refused", 400, "wrong password", "wrong-password", 0.001,
            ),
            Decision(
                time.time(), "CURVE", "global", "127.0.0.1", None, "K" * 40, "alice",
                "allowed", 200, "OK", "ok", 0.0001,
            ),
            TrustChange(time.time(), "key-revoked", "global", "/certs", "J" * 40, "bob"),
        ]
    )  # fmt: skip
    audit.close()
    return path


def test_audit_tail_once_prints_a_table(tmp_path: Path) -> None:
    path = _audit_records(tmp_path)
    code, out, err = _run(["audit", "tail", str(path), "--once"])
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("TIME (UTC)")
    assert len(lines) == 4
    assert "REFUSED" in lines[1] and "mallory\\x1b[2J" in lines[1] and "wrong password" in lines[1]
    assert "ALLOWED" in lines[2] and "KKKKKKKKKKKK... (alice)" in lines[2]
    assert "key-revoked" in lines[3] and "(bob)" in lines[3]
    code, out, _ = _run(["audit", "tail", str(path), "--once", "--lines", "1"])
    assert code == 0 and len(out.splitlines()) == 2 and "key-revoked" in out


def test_audit_tail_follows_new_lines_and_rotation(tmp_path: Path) -> None:
    import threading

    from zsec._events import AuditLog, TrustChange

    path = _audit_records(tmp_path)
    out = io.StringIO()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            main(["audit", "tail", str(path), "--lines", "0", "--count", "2"], stdout=out)
        )
    )
    thread.start()
    wait_for(lambda: out.getvalue().startswith("TIME"))
    audit = AuditLog(path)
    audit.write([TrustChange(time.time(), "key-added", "global", "/certs", "A" * 40, "one")])
    wait_for(lambda: "(one)" in out.getvalue())
    os.rename(path, tmp_path / "audit.jsonl.1")
    audit.reopen()
    audit.write([TrustChange(time.time(), "key-added", "global", "/certs", "B" * 40, "two")])
    audit.close()
    thread.join(10)
    assert result == [0]
    assert out.getvalue().count("key-added") == 2 and "(two)" in out.getvalue()
