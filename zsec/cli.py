"""The ``zsec`` command: makecert, passwd, cert show, check, audit tail, demo.

Every subcommand is ``main(argv) -> int``-testable, prints one clear line on
error and never prints a secret key or a password. Exit status: 0 success,
1 an error (or, for ``check``, findings), 2 a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import hashlib
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ._cert import MAX_CERT_BYTES, Cert
from ._errors import CertificateError, FileAccessError, ZsecError
from ._events import read_audit
from ._files import mode_problem, printable, read_regular
from ._passwords import (
    _HASH_PREFIXES as HASH_PREFIXES,
)
from ._passwords import (
    MAX_PASSWORD_FILE_BYTES,
    check_username,
    parse_passwords,
    set_password,
)
from ._trustdir import OPT_OUT, dir_problem, link_problem, skipped_name, under

PROG = "zsec"


class _Eof(Exception):
    """Input ended at a prompt."""


def _prompt(question: str, stdin: TextIO, stdout: TextIO) -> str:
    stdout.write(question)
    stdout.flush()
    line = stdin.readline()
    if not line:
        stdout.write("\n")
        raise _Eof(question.strip().rstrip(":"))
    return line.rstrip("\r\n")


def _check_directory(path: str) -> None:
    """Refuse early, and clearly, to write into a directory that does not exist."""
    shown = os.path.dirname(path) or "."
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(directory):
        return
    if os.path.lexists(directory):
        raise ZsecError(f"cannot write {path}: {shown} is not a directory")
    raise ZsecError(
        f"cannot write {path}: directory {shown} does not exist; create it first (mkdir -p {shown})"
    )


def _cmd_makecert(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    path: str = args.file
    _check_directory(path)
    if not args.force:
        for existing in (path, path + "_secret"):
            if os.path.lexists(existing):
                raise ZsecError(f"{existing} already exists; use --force to replace it")
    cert = Cert()
    interactive = args.interactive or (not args.batch and stdin.isatty())
    answers = {"name": args.name, "email": args.email, "organization": args.org}
    questions = {
        "name": "Enter your full name: ",
        "email": "Enter your email address: ",
        "organization": "Enter your organization: ",
    }
    for key, question in questions.items():
        value = answers[key]
        if value is None and interactive:
            try:
                value = _prompt(question, stdin, stdout)
            except _Eof as eof:
                raise ZsecError(f"input ended at the prompt '{eof}'") from None
        if value:
            cert.set_meta(key, value)
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep:
            raise ZsecError(f"--meta expects KEY=VALUE, got {item!r}")
        cert.set_meta(key, value)
    cert.set_meta("created-by", "zsec makecert")
    cert.set_meta("date-created", datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"))
    cert.save(path)
    stdout.write(f"Public key: {cert.public_txt}\n")
    stdout.write(f"Public certificate: {path}\n")
    stdout.write(f"Secret certificate: {path}_secret (mode 0600, keep it private)\n")
    return 0


def _cmd_passwd(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    username = args.user.encode("utf-8", "surrogateescape")
    check_username(username)
    _check_directory(args.file)
    if args.stdin:
        # Bytes, not text: a password need not be valid in the locale's
        # encoding, and a decoding error would quote it.
        source = getattr(stdin, "buffer", None)
        raw = (
            source.readline()
            if source is not None
            else stdin.readline().encode("utf-8", "surrogateescape")
        )
        if not raw:
            raise ZsecError("no password on standard input")
        password = raw.rstrip(b"\r\n")
    elif stdin is sys.stdin and stdin.isatty():
        try:
            first = getpass.getpass(f"New password for {args.user}: ")
            if getpass.getpass("Repeat the password: ") != first:
                raise ZsecError("the two passwords differ; nothing was changed")
        except UnicodeError:
            raise ZsecError("the password could not be read as text") from None
        password = first.encode("utf-8", "surrogateescape")
    else:
        raise ZsecError("no terminal to ask for the password; pass it with --stdin")
    replaced = set_password(args.file, username, password)
    mode = os.stat(args.file).st_mode & 0o777
    verb = "Replaced the password of" if replaced else "Added"
    stdout.write(f"{verb} {args.user} in {args.file} (argon2id hash, file mode {mode:04o})\n")
    return 0


def _cmd_demo(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    from ._demo import DemoFailure, run_demo

    try:
        run_demo(stdout)
    except DemoFailure as exc:
        raise ZsecError(str(exc)) from None
    return 0


# -- cert show ---------------------------------------------------------------------


def fingerprint(public_key: bytes) -> str:
    """A short fingerprint of a public key: the first 64 bits of its SHA-256, in hex."""
    digest = hashlib.sha256(public_key).hexdigest()[:16]
    return "SHA256:" + ":".join(digest[i : i + 4] for i in range(0, 16, 4))


def _owner(st: os.stat_result) -> str:
    try:
        import pwd

        user = f"{pwd.getpwuid(st.st_uid).pw_name} (uid {st.st_uid})"
    except (ImportError, KeyError):
        user = f"uid {st.st_uid}"
    try:
        import grp

        group = f"{grp.getgrgid(st.st_gid).gr_name} (gid {st.st_gid})"
    except (ImportError, KeyError):
        group = f"gid {st.st_gid}"
    return f"{user}, group {group}"


def show_cert(path: str) -> str:
    """What ``zsec cert show`` prints for ``path``; never the secret key."""
    data, st = read_regular(path, MAX_CERT_BYTES, "certificate")
    cert = Cert.from_bytes(data, path)
    rows: list[tuple[str, str]] = [("file", path)]
    notes: list[str] = []
    if cert.secret_key is not None:
        rows.append(("kind", "secret certificate (holds the secret key, which is not shown)"))
        if st.st_mode & 0o077:
            notes.append(
                f"the secret file is readable or writable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); fix: chmod 600 {path}"
            )
    else:
        rows.append(("kind", "public certificate"))
        if os.path.lexists(path + "_secret"):
            rows.append(("secret file", f"{path}_secret exists"))
    rows.append(("public key", cert.public_txt))
    rows.append(("fingerprint", fingerprint(cert.public_key)))
    meta = cert.metadata
    if meta:
        for i, (name, value) in enumerate(meta.items()):
            rows.append(("metadata" if i == 0 else "", f"{printable(name)} = {printable(value)}"))
    else:
        rows.append(("metadata", "(none)"))
    rows.append(("mode", f"{stat.S_IMODE(st.st_mode):04o} ({stat.filemode(st.st_mode)})"))
    rows.append(("owner", _owner(st)))
    problem = mode_problem(st, path, "file", "CertStore(..., strict=False)")
    if problem is not None:
        notes.append(f"a strict CertStore skips this file: {problem}")
    rows += [("warning", note) for note in notes]
    return "".join(f"{name + ':' if name else '':13s}{value}\n" for name, value in rows)


# -- check ---------------------------------------------------------------------------

_STORE_OPT_OUT = OPT_OUT


class _Findings:
    def __init__(self) -> None:
        self.problems: list[dict[str, str]] = []
        self.notes: list[dict[str, str]] = []

    def problem(self, path: str, code: str, detail: str) -> None:
        self.problems.append({"path": path, "problem": code, "detail": detail})

    def note(self, path: str, code: str, detail: str) -> None:
        self.notes.append({"path": path, "problem": code, "detail": detail})


def _check_trust_dir(root: str, found: _Findings) -> int:
    """Lint a trust directory as a strict CertStore reads it; returns the certificates it holds."""
    real_root = os.path.realpath(root)
    keys: dict[bytes, list[str]] = {}

    verdicts: dict[str, str | None] = {}

    def walk(directory: str) -> None:
        # The store's own rule: this directory and every one up to the root.
        problem = dir_problem(os.path.realpath(directory), real_root, verdicts)
        if problem is not None and problem.startswith("cannot stat"):
            found.problem(directory, "unreadable", problem)
            return
        if problem is not None:
            found.problem(directory, "bad-permissions", f"skipped with all it holds: {problem}")
            return
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            found.problem(directory, "unreadable", f"cannot list the directory: {exc.strerror}")
            return
        for entry in entries:
            check_entry(entry)

    def check_entry(entry: os.DirEntry[str]) -> None:
        name, path = entry.name, entry.path
        if name.endswith("_secret"):
            found.problem(
                path,
                "secret-file",
                "a secret certificate in a trust directory: the store skips it, but anyone "
                "who can read this directory has the key; move it off the server",
            )
            return
        if skipped_name(name):
            found.note(path, "skipped", "hidden or backup name: the store ignores it")
            return
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError as exc:
            found.problem(path, "unreadable", f"cannot stat: {exc.strerror}")
            return
        if is_dir:
            walk(path)
            return
        if is_link:
            target = os.path.realpath(path)
            if not under(target, real_root):
                found.problem(
                    path,
                    "symlink-outside",
                    f"links outside the directory, to {target}: whoever controls that file "
                    "controls this trust; copy the certificate in instead",
                )
            if os.path.isdir(path):
                found.note(path, "skipped", "a symlinked directory: the store does not follow it")
                return
            problem = link_problem(path)
            if problem is not None:
                found.problem(path, "bad-permissions", f"skipped: {problem}")
                return
        try:
            data, st = read_regular(path, MAX_CERT_BYTES, "certificate")
        except FileAccessError as exc:
            found.problem(path, "unreadable", f"skipped: {exc}")
            return
        problem = mode_problem(st, path, "file", _STORE_OPT_OUT)
        if problem is not None:
            found.problem(path, "bad-permissions", f"skipped: {problem}")
            return
        try:
            cert = Cert.from_bytes(data, path)
        except CertificateError as exc:
            found.problem(path, "invalid", f"skipped: {str(exc).removeprefix(path + ': ')}")
            return
        if cert.secret_key is not None:
            found.problem(
                path,
                "secret-in-public-file",
                "holds a secret key: its public key is still trusted, but the secret must be "
                "removed from the server (keep only the public part: zsec makecert writes both)",
            )
        keys.setdefault(cert.public_key, []).append(path)

    walk(root)
    for paths in keys.values():
        if len(paths) > 1:
            found.problem(
                paths[0],
                "duplicate-key",
                f"the same key as {', '.join(paths[1:])}: revoking it means deleting every copy",
            )
    if not keys:
        found.note(root, "empty", "no certificate: a CURVE store here admits nobody")
    return len(keys)


def _check_password_file(path: str, found: _Findings) -> int:
    """Lint a PLAIN password file as the authenticator reads it; returns the users it holds."""
    try:
        data, st = read_regular(path, MAX_PASSWORD_FILE_BYTES, "password file")
    except FileAccessError as exc:
        found.problem(path, "unreadable", str(exc))
        return 0
    if st.st_mode & 0o044:
        found.problem(
            path,
            "bad-permissions",
            f"mode {stat.S_IMODE(st.st_mode):04o} lets group or others read the passwords; "
            f"fix: chmod 600 {path}",
        )
    problem = mode_problem(st, path, "file", "another owner at your own risk")
    if problem is not None:
        found.problem(path, "bad-permissions", problem)
    seen: dict[bytes, int] = {}
    plain = 0
    for number, line in enumerate(data.split(b"\n"), 1):
        line = line.removesuffix(b"\r")
        if not line or line.startswith(b"#"):
            continue
        name, sep, password = line.partition(b"=")
        # The line's content is never shown: it may be a password.
        if not sep:
            found.problem(path, "no-equals", f"line {number} has no '=': it is ignored")
            continue
        if not name:
            found.problem(path, "empty-name", f"line {number} has an empty name: it is ignored")
            continue
        shown = printable(name.decode("utf-8", "backslashreplace"))
        if name in seen:
            found.problem(
                path,
                "duplicate-user",
                f"line {number}: user {shown} again (first on line {seen[name]}); the last wins",
            )
        seen[name] = number
        if not password.startswith(HASH_PREFIXES):
            plain += 1
    if plain:
        found.note(
            path,
            "plain-text",
            f"{plain} password(s) in plain text; zsec passwd stores argon2id hashes instead",
        )
    return len(parse_passwords(data))


def check_path(path: str) -> dict[str, Any]:
    """Lint a trust directory or a password file; the report ``zsec check`` prints."""
    found = _Findings()
    if os.path.isdir(path):
        kind, count = "trust directory", _check_trust_dir(path, found)
        counted = "certificates"
    elif os.path.lexists(path):
        kind, count = "password file", _check_password_file(path, found)
        counted = "users"
    else:
        raise ZsecError(f"{path} does not exist")
    return {
        "path": path,
        "kind": kind,
        counted: count,
        "problems": found.problems,
        "notes": found.notes,
    }


def render_report(report: dict[str, Any]) -> str:
    """The report as a readable table."""
    counted = "certificates" if "certificates" in report else "users"
    problems, notes = report["problems"], report["notes"]
    out = [
        f"{report['kind']} {printable(report['path'])}: {report[counted]} "
        f"{counted if report[counted] != 1 else counted[:-1]}, "
        f"{len(problems)} problem(s)\n"
    ]
    rows = [("PROBLEM", r["problem"], r["path"], r["detail"]) for r in problems]
    rows += [("note", r["problem"], r["path"], r["detail"]) for r in notes]
    if rows:
        width = max(len(r[1]) for r in rows)
        for level, code, where, detail in rows:
            out.append(f"{level:8s} {code:{width}s}  {printable(where)}\n")
            out.append(f"{'':8s} {'':{width}s}  {printable(detail)}\n")
    else:
        out.append("no problems found\n")
    return "".join(out)


# -- audit tail ------------------------------------------------------------------------

_HEADER = (
    f"{'TIME (UTC)':23s} {'VERDICT':12s} {'MECH':5s} {'DOMAIN':12s} {'ADDRESS':15s} "
    f"{'IDENTITY':30s} REASON\n"
)


def audit_row(record: dict[str, Any]) -> str:
    """One audit record as a table row."""

    def text(name: str) -> str:
        value = record.get(name)
        return "" if value is None else printable(str(value))

    when = text("time").replace("T", " ").removesuffix("Z")[:23]
    if record.get("event") == "decision":
        who = text("username") or (text("key")[:12] + "..." if record.get("key") else "")
        if record.get("cert_name"):
            who += f" ({text('cert_name')})"
        verdict = text("verdict").upper()
        reason = "" if record.get("status") == 200 else text("reason")
        return (
            f"{when:23s} {verdict:12s} {text('mechanism'):5s} {text('domain'):12s} "
            f"{text('address'):15s} {who:30s} {reason}\n"
        )
    who = text("key")[:12] + "..." if record.get("key") else text("address")
    if record.get("cert_name"):
        who += f" ({text('cert_name')})"
    where = text("source") or text("store")
    detail = " ".join(x for x in (where, text("reason")) if x)
    return (
        f"{when:23s} {text('action'):12s} {'':5s} {text('domain'):12s} {text('address'):15s} "
        f"{who:30s} {detail}\n"
    )


def _last_lines(fd: int, size: int, count: int) -> list[bytes]:
    """The last ``count`` complete lines before offset ``size``."""
    if count == 0:
        return []
    data = b""
    at = size
    while at > 0 and data.count(b"\n") <= count:
        step = min(65536, at)
        at -= step
        data = os.pread(fd, step, at) + data
    lines = data.split(b"\n")[:-1]  # what follows the last newline is not a line yet
    if at > 0:
        lines = lines[1:]  # the first may be cut
    return lines[-count:]


def tail_audit(
    path: str, out: TextIO, *, lines: int = 10, follow: bool = True, count: int | None = None
) -> None:
    """Print the last ``lines`` events of an audit log, then follow it (through rotations)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FileAccessError(f"cannot read audit log {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        out.write(_HEADER)
        for record in read_audit(_last_lines(fd, st.st_size, lines)):
            out.write(audit_row(record))
        out.flush()
        if not follow:
            return
        # Start after the last complete line; keep a partial one for later.
        position = st.st_size
        while position > 0 and os.pread(fd, 1, position - 1) != b"\n":
            position -= 1
        pending = b""
        shown = 0
        while count is None or shown < count:
            chunk = os.pread(fd, 65536, position)
            if chunk:
                position += len(chunk)
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for record in read_audit(complete):
                    out.write(audit_row(record))
                    shown += 1
                    if count is not None and shown >= count:
                        break
                out.flush()
                continue
            try:
                now = os.stat(path)
            except OSError:
                now = None
            if now is not None and (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                # Rotated: the old file is finished (it was read to its end); go on
                # with the new one from its start.
                os.close(fd)
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                st, position, pending = os.fstat(fd), 0, b""
                continue
            time.sleep(_FOLLOW_SECONDS)
    finally:
        os.close(fd)


_FOLLOW_SECONDS = 0.2


def _cmd_cert_show(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    stdout.write(show_cert(args.file))
    return 0


def _cmd_check(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    report = check_path(args.path)
    if args.json:
        stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        stdout.write(render_report(report))
    return 1 if report["problems"] else 0


def _cmd_audit_tail(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    if args.lines < 0:
        raise ZsecError("--lines must be 0 or more")
    tail_audit(args.file, stdout, lines=args.lines, follow=not args.once, count=args.count)
    return 0


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="ZeroMQ security tools.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    make = sub.add_parser(
        "makecert",
        help="create a CURVE certificate (public file plus _secret file)",
        description="Create a CURVE keypair and save it as FILE (public) and FILE_secret "
        "(secret, mode 0600). At a terminal it asks for name, email and organization.",
    )
    make.add_argument(
        "file",
        nargs="?",
        default="mycert.txt",
        metavar="FILE",
        help="public certificate path (default: mycert.txt)",
    )
    make.add_argument("--name", help="full name (metadata 'name')")
    make.add_argument("--email", help="email address (metadata 'email')")
    make.add_argument("--org", help="organization (metadata 'organization')")
    make.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra metadata; repeat for more",
    )
    make.add_argument("--force", action="store_true", help="replace an existing certificate")
    mode = make.add_mutually_exclusive_group()
    mode.add_argument(
        "--interactive",
        action="store_true",
        help="ask for missing fields even when input is not a terminal",
    )
    mode.add_argument("--batch", action="store_true", help="never ask, even at a terminal")
    make.set_defaults(run=_cmd_makecert)

    passwd = sub.add_parser(
        "passwd",
        help="add or replace a user in a PLAIN password file (argon2id hash)",
        description="Add USER to FILE, or replace its entry, with an argon2id hash of the "
        "password. Other lines are kept; the file is rewritten atomically with mode 0600. "
        "The password is asked twice at the terminal and never echoed.",
    )
    passwd.add_argument("file", metavar="FILE", help="password file (created if missing)")
    passwd.add_argument("user", metavar="USER", help="username")
    passwd.add_argument(
        "--stdin", action="store_true", help="read the password from the first line of stdin"
    )
    passwd.set_defaults(run=_cmd_passwd)

    demo = sub.add_parser(
        "demo",
        help="prove the five security patterns in-process, one line each",
        description="Run Grasslands, Strawhouse, Woodhouse, Stonehouse and Ironhouse on "
        "loopback: in each, the right client receives Hello and an intruder is refused.",
    )
    demo.set_defaults(run=_cmd_demo)

    cert = sub.add_parser(
        "cert",
        help="inspect certificate files",
        description="Inspect certificate files.",
    )
    cert_sub = cert.add_subparsers(dest="cert_command", metavar="ACTION")
    cert_sub.required = True
    show = cert_sub.add_parser(
        "show",
        help="show a certificate: public key, fingerprint, metadata, mode and owner",
        description="Show FILE's public key, a short fingerprint, its metadata, and the "
        "file's mode and owner. A secret key is never shown, even when FILE is a secret file.",
    )
    show.add_argument("file", metavar="FILE")
    show.set_defaults(run=_cmd_cert_show)

    check = sub.add_parser(
        "check",
        help="lint a trust directory or a password file before deploying it",
        description="Read PATH the way zsec would (a directory as a CertStore, a file as a "
        "PLAIN password file) and report every problem: files skipped and why, secret keys, "
        "duplicate keys, bad permissions, unreadable files, symlinks leaving the directory, "
        "password lines without '='. Exit status 1 when there is a problem, 0 when clean.",
    )
    check.add_argument("path", metavar="PATH")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=_cmd_check)

    audit = sub.add_parser("audit", help="read audit logs", description="Read audit logs.")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    audit_sub.required = True
    tail = audit_sub.add_parser(
        "tail",
        help="follow an audit log as a table",
        description="Print the last lines of the JSON-lines audit log FILE as a table, then "
        "follow it (through rotations) until interrupted.",
    )
    tail.add_argument("file", metavar="FILE")
    tail.add_argument(
        "-n", "--lines", type=int, default=10, metavar="N", help="last N events first (10)"
    )
    tail.add_argument("--once", action="store_true", help="print and exit, do not follow")
    tail.add_argument(
        "--count", type=int, default=None, metavar="N", help="stop after N new events"
    )
    tail.set_defaults(run=_cmd_audit_tail)
    from ._trustcli import add_trust_parser

    add_trust_parser(sub)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the ``zsec`` command and return its exit status."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    run: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.run
    try:
        return run(args, stdin, stdout)
    except ZsecError as exc:
        stderr.write(f"{PROG} {args.command}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        stderr.write(f"{PROG} {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
