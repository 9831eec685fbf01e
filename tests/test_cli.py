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

from .helpers import ROOT


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
