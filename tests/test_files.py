"""File helpers: atomic writes, owners and modes of replaced files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import zsec
from zsec._files import read_regular, write_atomic
from zsec._passwords import set_password

from .helpers import fast_hash, watch_opens


def test_a_replaced_secret_file_belongs_to_its_writer(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # a sticky, world-writable directory like /tmp
    planted = shared / "server.key_secret"
    planted.write_text("planted by someone else\n")
    if os.geteuid() == 0:
        os.chown(planted, 4321, 4321)
    zsec.Cert().save(shared / "server.key")
    st = planted.stat()
    assert st.st_uid == os.geteuid()  # never handed to whoever created the name first
    assert st.st_mode & 0o777 == 0o600


def test_set_password_keeps_the_owner_only_for_a_plain_file_in_a_private_directory(
    tmp_path: Path,
) -> None:
    private = tmp_path / "etc"
    private.mkdir(mode=0o755)
    path = private / "passwords"
    path.write_text("bob=x\n")
    path.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(path, 4321, 4322)
    set_password(str(path), b"alice", b"pw", hasher=fast_hash)
    st = path.stat()
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (4321, 4322)  # the service can still read it
    assert st.st_mode & 0o777 == 0o640
    link = private / "link"
    link.symlink_to(path)
    set_password(str(link), b"carol", b"pw", hasher=fast_hash)
    assert link.stat().st_uid == os.geteuid() and not link.is_symlink()


def test_group_read_is_dropped_when_the_group_cannot_be_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "passwords"
    path.write_text("bob=x\n")
    path.chmod(0o640)

    def cannot(*args: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chown", cannot)
    write_atomic([(str(path), b"bob=y\n", 0o640)], owner=(4321, 4322))
    if path.stat().st_gid != 4322:
        assert path.stat().st_mode & 0o070 == 0  # not opened to the writer's own group


def test_no_reader_blocks_on_a_fifo(tmp_path: Path) -> None:
    # Nobody ever opens these FIFOs for writing: an ordinary open() would
    # wait forever. Every file zsec reads goes through the one reader, which
    # refuses anything but a regular file without waiting.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(zsec.FileAccessError, match="not a regular file"):
        set_password(str(fifo), b"alice", b"pw", hasher=fast_hash)
    with pytest.raises(zsec.FileAccessError, match="not a regular file"):
        zsec.PasswordFile(fifo)
    with pytest.raises(zsec.FileAccessError, match="not a regular file"):
        zsec.Cert.load(fifo)
    secret_fifo = tmp_path / "server.key_secret"
    os.mkfifo(secret_fifo)
    cert = zsec.Cert()
    cert.save(tmp_path / "other.key")
    os.replace(tmp_path / "other.key", tmp_path / "server.key")
    # The secret file is a FIFO: Cert.load falls back to the public file.
    assert zsec.Cert.load(tmp_path / "server.key").public_key == cert.public_key


def test_the_reader_never_opens_what_is_not_a_regular_file(tmp_path: Path) -> None:
    # Opening is not harmless for everything that is not a file: it releases
    # a writer waiting on a FIFO, arms /dev/watchdog, rewinds a tape. The
    # reader refuses such a path before opening it (and checks again after).
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    with watch_opens(fifo) as opens:
        for path in (fifo, link):
            with pytest.raises(zsec.FileAccessError) as refused:
                read_regular(str(path), 1024, "certificate")
            assert str(refused.value) == f"certificate {path} is not a regular file"
            assert refused.value.errno is None
        directory = os.open(tmp_path, os.O_RDONLY)
        try:
            with pytest.raises(zsec.FileAccessError, match="not a regular file"):
                read_regular(str(fifo), 1024, dir_fd=directory, name="fifo")
        finally:
            os.close(directory)
        assert opens() == 0
    regular = tmp_path / "regular"
    regular.write_bytes(b"data")
    with watch_opens(regular) as opens:
        assert read_regular(str(regular), 1024)[0] == b"data"
        assert opens() == 1  # the watch sees opens: the zero above means none
