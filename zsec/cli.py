"""The ``zsec`` command: makecert and friends.

Every subcommand is ``main(argv) -> int``-testable, prints one clear line on
error and never prints a secret key or a password.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from ._cert import Cert
from ._errors import ZsecError
from ._passwords import check_username, set_password

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


def _cmd_makecert(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    path: str = args.file
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="ZeroMQ security tools.")
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
