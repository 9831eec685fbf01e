"""File helpers: capped reads and atomic writes that never leave a half-written file."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from collections.abc import Sequence

from ._errors import FileAccessError, ZsecTypeError

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def fspath(path: object, what: str = "path") -> str:
    """Return ``path`` as a str, or raise ``ZsecTypeError`` naming what was expected."""
    try:
        result = os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        raise ZsecTypeError(
            f"{what} must be a str or os.PathLike, not {type(path).__name__}"
        ) from None
    if isinstance(result, bytes):
        result = os.fsdecode(result)
    if not result:
        raise FileAccessError(f"{what} is empty")
    return str(result)


def current_umask() -> int:
    """Return the process umask without changing it, even briefly.

    Setting and restoring the umask would open a window in which another
    thread creates files with no mask at all, so read it from /proc.
    """
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/status", encoding="ascii", errors="replace") as status:
                for line in status:
                    if line.startswith("Umask:"):
                        return int(line.split()[1], 8)
        except (OSError, ValueError):
            pass
    return 0o022


# O_NONBLOCK: opening a FIFO must not wait for a writer (it would hang the
# thread that asked, the ZAP thread included); O_NOCTTY: a terminal device
# must not become the process's controlling terminal.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# What opening a symlink with O_NOFOLLOW fails with (FreeBSD says EMLINK).
_LINK_ERRNOS = (errno.ELOOP, errno.EMLINK)
#: Owners a strict check accepts: this process's user and root.
TRUSTED_UIDS = (0, os.geteuid()) if hasattr(os, "geteuid") else (0,)


def printable(text: str) -> str:
    """A name or text from a file, a directory listing or a peer, safe to show on one line.

    Control and other non-printable characters are escaped (``\\n``,
    ``\\x1b``): whoever chose the text could otherwise forge a log line or
    rewrite the operator's terminal with an escape sequence.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def read_regular(
    path: str,
    limit: int,
    what: str = "file",
    *,
    dir_fd: int | None = None,
    name: str | None = None,
    seen_regular: bool = False,
) -> tuple[bytes, os.stat_result]:
    """Read a whole regular file of at most ``limit`` bytes, without ever blocking.

    The one reader for every file zsec opens. Returns the content and the
    ``fstat`` of the file that was read, so that checks on owner and mode
    describe the same file as the content. With ``dir_fd`` the file is
    opened as ``name`` relative to that directory. ``seen_regular`` says
    that the caller has just seen a regular file at this name without
    following links (``os.DirEntry.is_file(follow_symlinks=False)``, which
    is free with ``scandir``), so the check before opening is skipped; a
    link found at the name by then is not followed but checked as usual.

    Raises ``FileAccessError``: with the OS errno (ENOENT, EACCES, ...)
    when it cannot be opened or read; without one when it is not a regular
    file (a FIFO, a device, a directory) or is larger than ``limit``.
    """
    target = path if dir_fd is None or name is None else name
    try:
        # Opening is not harmless for what is not a file (it releases a
        # writer waiting on a FIFO, arms /dev/watchdog, rewinds a tape), so
        # refuse those before opening; the fstat below checks again what
        # was actually opened, in case the path changed in between.
        if not seen_regular and not stat.S_ISREG(os.stat(target, dir_fd=dir_fd).st_mode):
            raise FileAccessError(f"{what} {path} is not a regular file", filename=path)
        # A name seen as a plain file may have become a link since (the
        # listing of a large directory is read long before its last file):
        # never follow it unchecked, check it as any other name instead.
        fd = os.open(target, _OPEN_FLAGS | (_NOFOLLOW if seen_regular else 0), dir_fd=dir_fd)
    except FileAccessError:
        raise
    except OSError as exc:
        if seen_regular and exc.errno in _LINK_ERRNOS:
            return read_regular(path, limit, what, dir_fd=dir_fd, name=name)
        raise FileAccessError(
            f"cannot read {what} {path}: {exc.strerror or exc}", errno=exc.errno, filename=path
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileAccessError(f"{what} {path} is not a regular file", filename=path)
        if st.st_size > limit:
            raise FileAccessError(f"{what} {path} is larger than {limit} bytes", filename=path)
        # One read of size+1 bytes normally reaches the end; a file that
        # grows meanwhile is read on, up to the cap.
        data = os.read(fd, st.st_size + 1)
        if len(data) > st.st_size:
            while len(data) <= limit:
                chunk = os.read(fd, limit + 1 - len(data))
                if not chunk:
                    break
                data += chunk
            if len(data) > limit:
                raise FileAccessError(f"{what} {path} is larger than {limit} bytes", filename=path)
    except OSError as exc:
        raise FileAccessError(
            f"cannot read {what} {path}: {exc.strerror or exc}", errno=exc.errno, filename=path
        ) from None
    finally:
        os.close(fd)
    return data, st


def read_capped(path: str, limit: int, what: str = "file") -> bytes:
    """Read a whole regular file of at most ``limit`` bytes (``read_regular`` without the stat)."""
    return read_regular(path, limit, what)[0]


def mode_problem(st: os.stat_result, path: str, what: str, opt_out: str) -> str | None:
    """Why a file or directory with this stat cannot be trusted, or None.

    The one ownership rule (OpenSSH's StrictModes): nothing that group or
    others can write, nothing owned by another user than this process's or
    root. The message names the fix and ``opt_out``, how to turn the check
    off (for example ``CertStore(..., strict=False)``).
    """
    if st.st_mode & 0o022:
        return (
            f"{what} mode {stat.S_IMODE(st.st_mode):04o} is writable by group or others, "
            f"so they could change who is trusted; fix: chmod go-w {path} (or use {opt_out})"
        )
    if st.st_uid not in TRUSTED_UIDS:
        me = TRUSTED_UIDS[-1]
        return (
            f"{what} is owned by uid {st.st_uid}, not by this process (uid {me}) "
            f"or root; fix: chown {me} {path} (or use {opt_out})"
        )
    return None


def stat_signature(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file's content, identity or permissions change."""
    return (
        st.st_dev,
        st.st_ino,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_size,
        st.st_mode,
        st.st_uid,
    )


def write_atomic(
    items: Sequence[tuple[str, bytes, int]], *, owner: tuple[int, int] | None = None
) -> None:
    """Write each ``(path, data, mode)`` so that every path holds old or new content, never half.

    Every file goes to a temporary file in its target directory (created
    0600, so a secret is never readable by others, not even briefly), is
    flushed to disk, given its final mode, and only then renamed over the
    target. If anything fails before the renames, the temporary files are
    removed and the targets are untouched.
    """
    staged: list[tuple[str, str]] = []
    try:
        for path, data, mode in items:
            directory = os.path.dirname(os.path.abspath(path))
            fd, tmp = tempfile.mkstemp(
                prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
            )
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            if owner is not None:
                _give(tmp, owner, mode)
        for tmp, path in staged:
            os.replace(tmp, path)
        for directory in {os.path.dirname(os.path.abspath(p)) for _, p in staged}:
            _fsync_dir(directory)
    except OSError as exc:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        target = exc.filename if isinstance(exc.filename, str) else items[len(staged) - 1][0]
        raise FileAccessError(
            f"cannot write {target}: {exc.strerror or exc}", errno=exc.errno, filename=target
        ) from None
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def _give(tmp: str, owner: tuple[int, int], mode: int) -> None:
    if hasattr(os, "chown"):
        with contextlib.suppress(OSError):
            os.chown(tmp, owner[0], owner[1])
    if os.stat(tmp).st_gid != owner[1] and mode & 0o070:
        os.chmod(tmp, mode & ~0o070)


def owner_to_keep(path: str) -> tuple[int, int] | None:
    """The (uid, gid) of an existing regular file worth keeping when it is replaced.

    None for a symlink or anything but a regular file, and for a file in a
    directory others can write (a sticky /tmp): there, whoever created the
    name first must not receive what replaces it.
    """
    try:
        st = os.lstat(path)
        parent = os.stat(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or parent.st_mode & 0o022:
        return None
    return st.st_uid, st.st_gid


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not every platform allows it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = [
    "PUBLIC_MODE",
    "SECRET_MODE",
    "TRUSTED_UIDS",
    "current_umask",
    "fspath",
    "mode_problem",
    "owner_to_keep",
    "read_capped",
    "read_regular",
    "stat_signature",
    "write_atomic",
]
