"""``zsec trust add|remove|list|import``: the fleet's trusted certificates in etcd.

Each certificate is one key, ``<prefix><Z85 public key>``, holding the
public certificate text (metadata included, never a secret key). Writes of
one command are one etcd transaction, so every server sees all of them at
the same revision or none.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from ._cert import MAX_CERT_BYTES, Cert
from ._errors import (
    CertificateError,
    EtcdUnavailable,
    FileAccessError,
    KeyFormatError,
    ZsecError,
)
from ._etcd import (
    DEFAULT_CERT_PREFIX,
    DEFAULT_MAX_TXN_OPS,
    DEFAULT_USER_PREFIX,
    EtcdConnection,
    EtcdSettings,
    cert_from_entry,
    check_prefix,
    check_user_entry,
)
from ._files import printable, read_capped
from ._keys import coerce_key, z85_encode
from ._passwords import check_username, hash_password


def cert_value(cert: Cert) -> bytes:
    """The etcd value for a certificate: its public certificate text."""
    public = cert.dup()
    public._secret = None
    return public._render(False, datetime.datetime.now())


def _load_public(path: str, stdout: TextIO | None = None) -> Cert:
    data = read_capped(path, MAX_CERT_BYTES, "certificate")
    cert = Cert.from_bytes(data, path)
    if cert._secret is not None and stdout is not None:
        stdout.write(f"Note: {path} holds a secret key; only its public key goes to etcd\n")
    cert._secret = None  # only the public part ever goes to etcd
    return cert


def _connect(args: argparse.Namespace, stdin: TextIO) -> EtcdConnection:
    password = None
    if args.etcd_user is not None:
        if args.password_stdin:
            line = stdin.readline()
            if not line:
                raise ZsecError("no etcd password on standard input")
            password = line.rstrip("\r\n")
        elif stdin is sys.stdin and stdin.isatty():
            password = getpass.getpass(f"etcd password for {args.etcd_user}: ")
        else:
            raise ZsecError("no terminal to ask for the etcd password; pass --password-stdin")
    settings = EtcdSettings(
        args.endpoints,
        ca_cert=args.ca_cert,
        cert=args.cert,
        key=args.key,
        user=args.etcd_user,
        password=password,
        timeout=args.timeout,
    )
    # The first endpoint that answers; a write to a dead one would just fail.
    problem: EtcdUnavailable | None = None
    for index in range(len(settings.endpoints)):
        conn = settings.connect(index)
        try:
            conn.revision(args.prefix.encode())
            return conn
        except EtcdUnavailable as exc:
            conn.close()
            problem = exc
    assert problem is not None
    raise problem


def _name(prefix: str, cert: Cert) -> bytes:
    return (prefix + cert.public_txt).encode()


def _cmd_add(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    certs = [(path, _load_public(path, stdout)) for path in args.files]
    with _connect(args, stdin) as conn:
        revision = conn.txn({_name(args.prefix, c): cert_value(c) for _, c in certs})
    for path, cert in certs:
        stdout.write(f"Trusted {cert.public_txt} ({path})\n")
    stdout.write(f"etcd revision {revision}\n")
    return 0


def _key_of(item: str) -> str:
    """A Z85 public key given as itself, as 64 hex digits, or as a certificate file."""
    if os.path.exists(item):
        return _load_public(item).public_txt
    try:
        return z85_encode(coerce_key(item, "public key"))
    except KeyFormatError:
        raise ZsecError(
            f"{item!r} is neither a certificate file nor a public key "
            "(40 Z85 characters or 64 hex digits)"
        ) from None


def _cmd_remove(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    keys = list(dict.fromkeys(_key_of(item) for item in args.keys))
    prefix = args.prefix.encode()
    # etcd key -> the public key it holds. Servers trust a certificate under
    # any entry name, so every entry holding a revoked key goes, not only
    # the one named after it (an entry written by hand, say).
    entries = {(args.prefix + k).encode(): k for k in keys}
    with _connect(args, stdin) as conn:
        _, values = conn.get_prefix(prefix)
        for name, value in values.items():
            if name in entries:
                continue
            try:
                cert = cert_from_entry(
                    name[len(prefix) :].decode("utf-8", "surrogateescape"), value
                )
            except CertificateError:
                continue
            if cert.public_txt in keys:
                entries[name] = cert.public_txt
        revision, deleted = conn.txn_deleted(deletes=list(entries))
    removed = dict.fromkeys(keys, 0)
    for key, count in zip(entries.values(), deleted, strict=True):
        removed[key] += count
    for key, count in removed.items():
        stdout.write(f"Revoked {key}\n" if count else f"Not in etcd: {key}\n")
    stdout.write(f"etcd revision {revision}\n")
    return 0 if all(removed.values()) else 1


def _cmd_list(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    prefix = args.prefix.encode()
    with _connect(args, stdin) as conn:
        revision, values = conn.get_prefix(prefix)
    good = 0
    for key in sorted(values):
        name = key[len(prefix) :].decode("utf-8", "replace")
        try:
            cert = cert_from_entry(name, values[key])
        except (CertificateError, ValueError) as exc:
            stdout.write(printable(f"{name}  INVALID: {exc}") + "\n")
            continue
        good += 1
        label = ", ".join(
            f"{k}={printable(cert.meta(k) or '')}" for k in ("name", "email") if cert.meta(k)
        )
        stdout.write(f"{cert.public_txt}  {label}\n".replace("  \n", "\n"))
    stdout.write(f"{good} trusted certificate(s) under {args.prefix} at etcd revision {revision}\n")
    return 0


def _skipped_name(name: str) -> bool:
    # The directory store's rules: hidden files, secret files, editor backups.
    return (
        name.startswith(".")
        or name.endswith(("_secret", "~"))
        or (name.startswith("#") and name.endswith("#"))
    )


def _trust_dir(directory: str, stdout: TextIO, strict: bool = False) -> dict[str, Cert]:
    """The certificates under ``directory``; files that are not certificates are skipped.

    ``strict`` (``import --replace``): a file or directory that cannot be read
    raises instead, since it may hold a key the fleet trusts, which replacing
    would revoke everywhere (an operator without read access, say).
    """
    if not os.path.isdir(directory):
        raise FileAccessError(f"{directory} is not a directory", filename=directory)

    def unreadable(exc: OSError) -> None:
        if strict:
            raise FileAccessError(
                f"cannot read {exc.filename}: {exc.strerror}; nothing was written "
                "(--replace would revoke whatever it holds)",
                filename=exc.filename,
            )
        stdout.write(f"Skipped {exc.filename}: {exc.strerror}\n")

    found: dict[str, Cert] = {}
    for root, dirs, files in os.walk(directory, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not _skipped_name(d))
        for name in sorted(files):
            if _skipped_name(name):
                continue
            path = os.path.join(root, name)
            try:
                cert = _load_public(path, stdout)
            except FileAccessError as exc:
                if strict:
                    raise FileAccessError(
                        f"{exc}; nothing was written (--replace would revoke whatever it holds)",
                        filename=path,
                    ) from None
                stdout.write(f"Skipped {path}: {exc}\n")
                continue
            except CertificateError as exc:
                stdout.write(f"Skipped {path}: {exc}\n")
                continue
            found.setdefault(cert.public_txt, cert)
    return found


def _batches(ops: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(ops), size):
        yield ops[start : start + size]


def _cmd_import(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    certs = _trust_dir(args.directory, stdout, strict=args.replace)
    prefix = args.prefix.encode()
    with _connect(args, stdin) as conn:
        stale: list[bytes] = []
        if args.replace:
            _, existing = conn.get_prefix(prefix)
            wanted = {_name(args.prefix, c) for c in certs.values()}
            stale = [k for k in existing if k not in wanted]
        puts = [(_name(args.prefix, c), cert_value(c)) for c in certs.values()]
        total = len(puts) + len(stale)
        if total > args.max_txn_ops and not args.batches:
            raise ZsecError(
                f"importing {args.directory} takes {total} writes, more than etcd allows in "
                f"one transaction ({args.max_txn_ops}); nothing was written. Raise etcd's "
                "--max-txn-ops and pass the same --max-txn-ops here, or pass --batches to "
                "write in several transactions (servers may then see a partial import)"
            )
        ops: list[tuple[bytes, bytes | None]] = [*puts, *((k, None) for k in stale)]
        revision = 0
        for batch in _batches(ops, args.max_txn_ops):
            revision = conn.txn(
                {k: v for k, v in batch if v is not None}, [k for k, v in batch if v is None]
            )
    stdout.write(
        f"Imported {len(puts)} certificate(s) from {args.directory}"
        + (f", removed {len(stale)} not in it" if args.replace else "")
        + f"; etcd revision {revision}\n"
    )
    return 0


def _new_password(args: argparse.Namespace, stdin: TextIO) -> bytes:
    if args.stdin:
        line = stdin.readline()
        if not line:
            raise ZsecError("no password on standard input")
        return line.rstrip("\r\n").encode("utf-8", "surrogateescape")
    if stdin is sys.stdin and stdin.isatty():
        first = getpass.getpass(f"New password for {args.user}: ")
        if getpass.getpass("Repeat the password: ") != first:
            raise ZsecError("the two passwords differ; nothing was changed")
        return first.encode("utf-8", "surrogateescape")
    raise ZsecError("no terminal to ask for the password; pass it with --stdin")


def _cmd_passwd(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    check_username(args.user.encode("utf-8", "surrogateescape"))
    with _connect(args, stdin) as conn:
        key = (args.prefix + args.user).encode("utf-8", "surrogateescape")
        if args.remove:
            revision, deleted = conn.txn_deleted(deletes=[key])
            stdout.write(
                f"{'Removed' if deleted[0] else 'No such user:'} {args.user}; "
                f"etcd revision {revision}\n"
            )
            return 0 if deleted[0] else 1
        password = _new_password(args, stdin)
        if not password or len(password) > 255:
            raise ZsecError("a password must be 1 to 255 bytes")
        entry = check_user_entry(args.user, hash_password(password))
        revision = conn.txn({key: entry})
    stdout.write(f"Set {args.user} (argon2id hash) under {args.prefix}; etcd revision {revision}\n")
    return 0


def add_trust_parser(sub: Any) -> None:
    """Add ``zsec trust`` and its subcommands to the ``zsec`` parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    conn = common.add_argument_group("etcd connection")
    conn.add_argument(
        "--endpoints",
        default=os.environ.get("ZSEC_ETCD_ENDPOINTS", "127.0.0.1:2379"),
        help="etcd endpoints, comma-separated host:port or https://host:port "
        "(default: $ZSEC_ETCD_ENDPOINTS or 127.0.0.1:2379)",
    )
    conn.add_argument(
        "--prefix",
        help=f"key prefix (default: {DEFAULT_CERT_PREFIX} for certificates, "
        f"{DEFAULT_USER_PREFIX} for passwd)",
    )
    conn.add_argument("--ca-cert", metavar="FILE", help="CA certificate: use TLS, verify etcd")
    conn.add_argument("--cert", metavar="FILE", help="client certificate (TLS client auth)")
    conn.add_argument("--key", metavar="FILE", help="client certificate's private key")
    conn.add_argument("--user", dest="etcd_user", help="etcd user (password asked at the terminal)")
    conn.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the etcd password from the first line of standard input",
    )
    conn.add_argument("--timeout", type=float, default=5.0, help="seconds per request (5)")

    trust = sub.add_parser(
        "trust",
        help="manage the fleet's trusted certificates in etcd",
        description="Add, revoke, list and import the CURVE public certificates that every "
        "server following etcd trusts. One command is one etcd transaction.",
    )
    cmds = trust.add_subparsers(dest="trust_command", metavar="ACTION")
    cmds.required = True
    add = cmds.add_parser(
        "add", parents=[common], help="trust certificate files", description="Trust FILEs."
    )
    add.add_argument("files", nargs="+", metavar="FILE", help="public certificate files")
    add.set_defaults(run=_cmd_add)
    remove = cmds.add_parser(
        "remove",
        parents=[common],
        help="revoke keys or certificate files",
        description="Revoke each KEY (Z85 or hex public key, or a certificate file) on every "
        "server at once, in one transaction. Exits 1 if a key was not trusted. A Z85 key can "
        "start with '-': put -- before the keys (zsec trust remove -- KEY).",
    )
    remove.add_argument("keys", nargs="+", metavar="KEY", help="public key or certificate file")
    remove.set_defaults(run=_cmd_remove)
    listing = cmds.add_parser(
        "list", parents=[common], help="list trusted keys", description="List trusted keys."
    )
    listing.set_defaults(run=_cmd_list)
    imp = cmds.add_parser(
        "import",
        parents=[common],
        help="copy a trust directory into etcd in one transaction",
        description="Trust every certificate file under DIRECTORY (the directory store's "
        "rules: hidden, *_secret and backup files are skipped) in one transaction.",
    )
    imp.add_argument("directory", metavar="DIR")
    imp.add_argument(
        "--replace",
        action="store_true",
        help="also revoke keys under the prefix that DIR does not hold",
    )
    imp.add_argument(
        "--max-txn-ops",
        type=int,
        default=DEFAULT_MAX_TXN_OPS,
        help=f"etcd's --max-txn-ops (default {DEFAULT_MAX_TXN_OPS})",
    )
    imp.add_argument(
        "--batches",
        action="store_true",
        help="when over --max-txn-ops, write in several transactions (not atomic)",
    )
    imp.set_defaults(run=_cmd_import)
    passwd = cmds.add_parser(
        "passwd",
        parents=[common],
        help="add, change or remove a PLAIN user (argon2id hash in etcd)",
        description="Store an argon2id hash of USER's password under the users prefix; "
        "the password is hashed here and never leaves this machine in clear. The password "
        "is asked twice at the terminal, or read from stdin with --stdin (after the etcd "
        "password line, when --password-stdin is given too).",
    )
    passwd.add_argument("user", metavar="USER")
    passwd.add_argument("--stdin", action="store_true", help="read the password from stdin")
    passwd.add_argument("--remove", action="store_true", help="remove USER instead")
    passwd.set_defaults(run=_cmd_passwd)
    for parser, prefix in ((add, DEFAULT_CERT_PREFIX), (remove, DEFAULT_CERT_PREFIX),
                           (listing, DEFAULT_CERT_PREFIX), (imp, DEFAULT_CERT_PREFIX),
                           (passwd, DEFAULT_USER_PREFIX)):  # fmt: skip
        parser.set_defaults(run=_with_prefix(parser.get_default("run"), prefix))


def _with_prefix(run: Any, default: str) -> Any:
    """``run`` with ``args.prefix`` defaulting to ``default`` (the actions' own default is
    shared by every subcommand, so it cannot differ per subcommand)."""

    def wrapped(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
        if args.prefix is None:
            args.prefix = default
        check_prefix(args.prefix)
        return int(run(args, stdin, stdout))

    return wrapped
