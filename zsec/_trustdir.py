"""Reading a trust directory: which names count, strict checks, loading certificates.

Rules of this file: functions only, no threads, no logging. A function that
finds something wrong returns the reason as text; the caller decides whether
and when to log it (a file still being written is not worth a warning yet).

Paths come in pairs where a directory may be reached through a symlink: the
*real* path is where the files are read (the resolved directory, the one
being watched), the *shown* path is the one the user configured, which names
entries in the store, in logs and in ``StoreChange.sources``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from ._cert import MAX_CERT_BYTES, Cert, fast_fields, public_cert
from ._errors import CertificateError, FileAccessError
from ._files import TRUSTED_UIDS, mode_problem, read_regular, stat_signature
from ._keys import z85_decode_keys

OPT_OUT = "CertStore(..., strict=False)"
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def skipped_name(name: str) -> bool:
    """Whether a file or directory name is left out of a trust directory.

    Hidden names (editor swap files, temporary files of atomic writes,
    Kubernetes' ``..data``), secret files, and editor backups: a backup of a
    deleted certificate must not keep its key trusted.
    """
    return (
        name.startswith(".")
        or name.endswith(("_secret", "~"))
        or (name.startswith("#") and name.endswith("#"))
    )


def secret_name(name: str) -> bool:
    """Whether a visible name is a secret certificate file (``<name>_secret``)."""
    return name.endswith("_secret") and not name.startswith(".")


def under(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or inside it (lexically)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def skipped_path(path: str, root: str) -> bool:
    """Whether any part of ``path`` below ``root`` is a skipped name."""
    rel = os.path.relpath(path, root)
    return any(skipped_name(part) for part in rel.split(os.sep) if part != ".")


def dir_problem(real: str, real_root: str, cache: dict[str, str | None]) -> str | None:
    """Why a directory, or one between it and the root, cannot be trusted (strict mode)."""
    if real in cache:
        return cache[real]
    problem: str | None = None
    if real != real_root and under(real, real_root):
        problem = dir_problem(os.path.dirname(real), real_root, cache)
    if problem is None:
        try:
            problem = mode_problem(os.stat(real), real, "directory", OPT_OUT)
        except OSError as exc:
            problem = f"cannot stat {real}: {exc.strerror}"
    cache[real] = problem
    return problem


def link_problem(path: str) -> str | None:
    """Strict mode: why a symlink's target directory is not as safe as the store's, or None."""
    target_dir = os.path.dirname(os.path.realpath(path))
    try:
        problem = mode_problem(os.stat(target_dir), target_dir, "directory", OPT_OUT)
    except OSError as exc:
        problem = f"cannot stat {target_dir}: {exc.strerror}"
    return None if problem is None else f"the link's target directory is refused: {problem}"


def link_signature(path: str) -> tuple[int, ...] | None:
    """What identifies a symlink target's content and permissions, or None if unreachable.

    The target's directory counts too: strict mode judges it, and a chmod
    there must be noticed as much as one on the file.
    """
    try:
        st = os.stat(path)
        parent = os.stat(os.path.dirname(os.path.realpath(path)))
    except OSError:
        return None
    return (*stat_signature(st), parent.st_ino, parent.st_mode, parent.st_uid)


def secret_signature(path: str) -> tuple[int, ...] | None:
    """The lstat signature of a secret file, to warn about it once per change."""
    try:
        return stat_signature(os.lstat(path))
    except OSError:
        return None


class Loaded(NamedTuple):
    """The outcome of reading one certificate file.

    ``cert`` is a read-only public certificate, or None; ``problem`` says
    why not (None when the file is simply gone); ``had_secret`` is True
    when the file also held a secret key, which was dropped.
    """

    cert: Cert | None
    problem: str | None = None
    had_secret: bool = False


GONE = Loaded(None)


def read_cert(
    real: str, *, strict: bool, dir_fd: int | None = None, name: str | None = None
) -> Loaded:
    """Read one certificate file with the hardened reader and the strict checks."""
    try:
        data, st = read_regular(real, MAX_CERT_BYTES, "certificate", dir_fd=dir_fd, name=name)
    except FileAccessError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return GONE
        return Loaded(None, _reason(exc, real))
    if strict:
        problem = mode_problem(st, real, "file", OPT_OUT)
        if problem is not None:
            return Loaded(None, problem)
    return parse_cert(real, data)


def parse_cert(real: str, data: bytes) -> Loaded:
    """Parse certificate bytes read from ``real`` into a read-only public certificate."""
    try:
        cert = Cert.from_bytes(data, real)
    except CertificateError as exc:
        return Loaded(None, str(exc).removeprefix(f"{real}: "))
    had_secret = cert.secret_key is not None
    return Loaded(cert._trusted_copy(), None, had_secret)


def _reason(exc: FileAccessError, path: str) -> str:
    text = str(exc)
    for prefix in (f"certificate {path} ", f"cannot read certificate {path}: "):
        if text.startswith(prefix):
            return text.removeprefix(prefix)
    return text


@dataclass
class Scan:
    """Everything one walk of a trust directory found, keyed by shown path."""

    entries: dict[str, Cert] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    # Files whose certificate held a secret key, and *_secret files: path -> signature.
    secrets: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    inodes: dict[str, int] = field(default_factory=dict)
    links: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    # Strict verdict of each directory walked (real path -> problem or None).
    verdicts: dict[str, str | None] = field(default_factory=dict)


def scan(real_dir: str, shown_dir: str, real_root: str, *, strict: bool) -> Scan:
    """Load every certificate at or under one directory of a trust directory."""
    found = Scan()
    _walk(real_dir, shown_dir, real_root, strict, found)
    return found


def _keep(found: Scan, shown: str, loaded: Loaded) -> None:
    if loaded.cert is not None:
        found.entries[shown] = loaded.cert
        if loaded.had_secret:
            found.secrets[shown] = secret_signature(shown)
    elif loaded.problem is not None:
        found.problems[shown] = loaded.problem


def _walk(
    real: str,
    shown: str,
    real_root: str,
    strict: bool,
    found: Scan,
) -> None:
    if strict:
        problem = dir_problem(real, real_root, found.verdicts)
        if problem is not None:
            found.problems[shown] = problem
            return
    else:
        found.verdicts[real] = None
    try:
        entries = list(os.scandir(real))
        dir_fd = os.open(real, _DIR_FLAGS)
    except OSError as exc:
        found.problems[shown] = f"cannot list directory: {exc.strerror}"
        return
    sep = os.sep
    pending: list[tuple[str, str, str, str]] = []
    try:
        for entry in entries:
            name = entry.name
            # Cheap first look: every skipped name starts with . or # or
            # ends with ~ or t.
            if (name[0] in ".#" or name[-1] in "~t") and skipped_name(name):
                if secret_name(name) and not entry.is_dir(follow_symlinks=False):
                    found.secrets[shown + sep + name] = secret_signature(entry.path)
                continue
            try:
                # From the listing's file type: no system call for a plain file.
                regular = entry.is_file(follow_symlinks=False)
                inode = entry.inode()
                is_dir = not regular and entry.is_dir(follow_symlinks=False)
                link = not regular and entry.is_symlink()
            except OSError:
                continue
            path = shown + sep + name
            if is_dir:
                _walk(entry.path, path, real_root, strict, found)
                continue
            found.inodes[path] = inode
            if link:
                # No event reports a change to a link's target: it is polled.
                found.links[path] = link_signature(entry.path)
                if strict:
                    problem = link_problem(entry.path)
                    if problem is not None:
                        found.problems[path] = problem
                        continue
            # The directory passed its checks above; opening relative to it
            # keeps to that directory even if a parent is renamed meanwhile.
            try:
                data, st = read_regular(
                    entry.path,
                    MAX_CERT_BYTES,
                    "certificate",
                    dir_fd=dir_fd,
                    name=name,
                    seen_regular=regular,
                )
            except FileAccessError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    found.problems[path] = _reason(exc, entry.path)
                continue
            if strict and (st.st_mode & 0o022 or st.st_uid not in TRUSTED_UIDS):
                problem = mode_problem(st, path, "file", OPT_OUT)
                if problem is not None:
                    found.problems[path] = problem
                    continue
            fields = fast_fields(data)
            if fields is not None and fields[1] is None:
                pending.append((path, name, fields[0], fields[2]))
            else:
                _keep(found, path, parse_cert(path, data))
        # Keys of the common layout are decoded together, far cheaper than
        # one by one; an invalid key sends its file through the full reader,
        # read again through the same directory handle.
        keys = z85_decode_keys([text for _, _, text, _ in pending])
        for (path, name, text, meta), public in zip(pending, keys, strict=True):
            if public is not None:
                found.entries[path] = public_cert(public, text, meta)
            else:
                loaded = read_cert(path, strict=strict, dir_fd=dir_fd, name=name)
                _keep(found, path, loaded)
    finally:
        os.close(dir_fd)


def list_inodes(real_dir: str, shown_dir: str, *, recursive: bool = True) -> dict[str, int]:
    """Every eligible file's inode at or under a directory, by shown path (no file is read)."""
    found: dict[str, int] = {}
    stack = [(real_dir, shown_dir)]
    while stack:
        real, shown = stack.pop()
        try:
            entries = list(os.scandir(real))
        except OSError:
            continue
        for entry in entries:
            if skipped_name(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        stack.append((entry.path, shown + os.sep + entry.name))
                else:
                    found[shown + os.sep + entry.name] = entry.inode()
            except OSError:
                continue
    return found


def differ(known: Mapping[str, int], found: Mapping[str, int]) -> list[str]:
    """Paths whose inode differs between two listings, or that are in only one (pure)."""
    changed = [p for p, inode in found.items() if known.get(p) != inode]
    changed += [p for p in known if p not in found]
    return changed


def is_regular_or_link(st: os.stat_result) -> bool:
    """Whether an lstat result may hold a certificate (a file or a symlink to one)."""
    return stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)
