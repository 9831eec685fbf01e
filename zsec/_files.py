"""File helpers: capped reads and atomic writes that never leave a half-written file."""

from __future__ import annotations

import contextlib
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


def read_capped(path: str, limit: int, what: str = "file") -> bytes:
    """Read a whole regular file of at most ``limit`` bytes.

    Raises ``FileAccessError``: with the OS errno when it cannot be read,
    without one when it is larger than ``limit``.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise FileAccessError(
            f"cannot read {what} {path}: {exc.strerror or exc}", errno=exc.errno, filename=path
        ) from None
    if len(data) > limit:
        raise FileAccessError(f"{what} {path} is larger than {limit} bytes", filename=path)
    return data


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
    "current_umask",
    "fspath",
    "owner_to_keep",
    "read_capped",
    "write_atomic",
]
