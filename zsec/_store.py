"""CertStore: trusted public certificates by key, following a directory live.

Lookups read an immutable snapshot (a dict swapped in one assignment), so
they never wait for, or see half of, a change. A watchdog observer feeds file
events to one worker thread, which re-reads only the files named by the
events and swaps in a new snapshot. Nothing here knows about sockets or ZAP.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import queue
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ._cert import MAX_CERT_BYTES, Cert, fast_fields, public_cert
from ._errors import CertificateError, FileAccessError, ZsecError, ZsecTypeError, ZsecValueError
from ._files import fspath
from ._index import KeyIndex, StoreChange, describe_change
from ._keys import KEY_BYTES, coerce_key, z85_decode_keys
from ._source import TrustFeed, TrustSource

log = logging.getLogger("zsec.store")

# How often the worker checks that the directory is still the one it watches:
# a rename of the directory itself produces no event for the path.
_ROOT_CHECK_SECONDS = 0.1
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
# Owners a strict store accepts: this process's user and root.
_TRUSTED_UIDS = (0, os.geteuid()) if hasattr(os, "geteuid") else (0,)
_POLLING_SECONDS = 0.5
_LINK_CHECK_SECONDS = 0.5


def _skipped_name(name: str) -> bool:
    # Hidden files (editor swap files, zsec's own temp files), secret files,
    # and editor backups: a backup of a deleted certificate must not keep
    # its key trusted.
    return (
        name.startswith(".")
        or name.endswith(("_secret", "~"))
        or (name.startswith("#") and name.endswith("#"))
    )


class CertStore:
    """A set of trusted public certificates, looked up by public key.

    ``CertStore(location)`` loads every certificate file under the directory
    (recursively; ``*_secret``, hidden and ``~`` backup files are skipped)
    and then follows it live: files created, changed, renamed or deleted are
    reflected within milliseconds, and a deleted directory empties the store.
    ``CertStore()`` is an in-memory store filled with ``insert``.

    With ``strict=True`` (the default) a file or directory that is writable
    by group or others, or owned by another user than this process or root,
    is refused, as OpenSSH's StrictModes does: whoever can write there can
    let themselves in. Unusable files are skipped with one log line on the
    ``zsec.store`` logger; the others stay.

    ``on_change(StoreChange)`` is called from the watcher thread after each
    update. Certificates handed out by the store are read-only; ``dup()``
    gives a copy you can change.

    Symlinked certificate files are followed (their targets are re-checked
    every 0.5 s, since no file event covers them; in strict mode the
    target's directory must be safe too); symlinked directories are not.
    Every ``audit_interval`` seconds a listing of names and inodes catches
    any file event the kernel dropped.
    """

    def __init__(
        self,
        location: Any = None,
        *,
        strict: bool = True,
        on_change: Callable[[StoreChange], None] | None = None,
        polling: bool = False,
        audit_interval: float = 30.0,
    ) -> None:
        if on_change is not None and not callable(on_change):
            raise ZsecTypeError("on_change must be callable")
        self._strict = bool(strict)
        # Listeners, replaced as a whole (copy on write) so _notify can
        # iterate without a lock.
        self._listeners: tuple[Callable[[StoreChange], None], ...] = (
            () if on_change is None else (on_change,)
        )
        self._polling = bool(polling)
        self._audit_interval = float(audit_interval)
        if not 0 < self._audit_interval < math.inf:
            raise ZsecValueError("audit_interval must be a positive, finite number of seconds")
        self._lock = threading.RLock()
        self._pending: collections.deque[StoreChange] = collections.deque()
        self._delivering = threading.Lock()
        self._snapshot: dict[bytes, Cert] = {}
        self._inserted: dict[bytes, Cert] = {}
        self._paths: dict[str, Cert] = {}
        # key -> the path holding it, or a list of paths for duplicates.
        self._holders: dict[bytes, str | list[str]] = {}
        self._bad: dict[str, str] = {}
        # Whether each directory passed the strict checks at the last look.
        self._dir_verdicts: dict[str, str | None] = {}
        # Every eligible file's inode, for the audit that catches events the
        # kernel dropped; and each symlink's target, which no event covers.
        self._inodes: dict[str, int] = {}
        self._links: dict[str, tuple[int, ...] | None] = {}
        self._next_link_check = 0.0
        self._next_audit = time.monotonic() + self._audit_interval
        self._closed = False
        self._root: str | None = None
        self._root_id: tuple[int, int] | None = None
        self._observer: Any = None
        self._worker: threading.Thread | None = None
        self._events: queue.SimpleQueue[tuple[str, bool, str, str] | None] = queue.SimpleQueue()
        self.observer_kind = "none"
        # Only the native observer reports a finished write (IN_CLOSE_WRITE).
        self._native_closes_missing = True
        # Interim: a TrustSource feeds an index beside the directory machinery.
        self._index = KeyIndex()
        self._source: TrustSource | None = None
        self._ready = True
        self._ready_cond = threading.Condition(self._lock)
        self._describe = "memory"
        if location is None:
            return
        if isinstance(location, TrustSource):
            self._source = location
            self._ready = False
            self._describe = location.describe()
            finalizer = weakref.finalize(self, location.close)
            try:
                location.start(TrustFeed(weakref.ref(self)))
            except BaseException:
                finalizer()
                raise
            self._finalizer = finalizer
            return
        root = os.path.abspath(fspath(location, "certificate store location"))
        try:
            st = os.stat(root)
        except OSError as exc:
            raise FileAccessError(
                f"certificate directory {root}: {exc.strerror}", errno=exc.errno, filename=root
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise FileAccessError(f"certificate store location {root} is not a directory")
        self._root = root
        # Watch first, then scan: a change during the scan is then seen twice
        # rather than never.
        self._start_observer()
        try:
            with self._lock:
                self._full_scan()
            self._deliver()
            self._worker = threading.Thread(
                target=self._run, name=f"zsec-certstore:{os.path.basename(root)}", daemon=True
            )
            self._worker.start()
        except BaseException:
            self._stop_observer()
            raise
        _live_stores.add(self)

    # -- lookups (any thread, lock-free) --------------------------------------

    def lookup(self, public_key: bytes | str) -> Cert | None:
        """Return the trusted certificate for a public key (32 bytes or 40 Z85), or None."""
        if type(public_key) is not bytes or len(public_key) != KEY_BYTES:
            public_key = coerce_key(public_key, "public key")
        return self._snapshot.get(public_key)

    def __contains__(self, public_key: object) -> bool:
        try:
            return self.lookup(public_key) is not None  # type: ignore[arg-type]
        except ZsecError:
            return False

    def __len__(self) -> int:
        return len(self._snapshot)

    def __iter__(self) -> Iterator[Cert]:
        return iter(list(self._snapshot.values()))

    @property
    def ready(self) -> bool:
        """Whether the store's source is in step with its truth (always True in memory)."""
        return self._ready and not self._closed

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the store is ready, at most ``timeout`` seconds; return ``ready``."""
        with self._ready_cond:
            self._ready_cond.wait_for(lambda: self._ready or self._closed, timeout)
            return self.ready

    # -- feeding (TrustFeed calls these; any thread) ---------------------------

    def _feed_reset(self, entries: Mapping[str, object]) -> None:
        clean = _trusted_entries(entries)
        with self._lock:
            if self._closed:
                return
            new, keys = self._index.reset(clean)
            self._swap(new, keys)
        self._deliver()

    def _feed_update(self, put: Mapping[str, object], delete: Iterable[str]) -> None:
        clean = _trusted_entries(put)
        gone = [_entry_name(name) for name in delete]
        with self._lock:
            if self._closed:
                return
            new, keys = self._index.update(clean, gone)
            self._swap(new, keys)
        self._deliver()

    def _feed_ready(self, ready: bool, reason: str) -> None:
        with self._lock:
            if self._closed or ready == self._ready:
                return
            self._ready = ready
            self._snapshot = self._index.table if ready else dict(self._index.inserted)
            self._ready_cond.notify_all()
        if ready:
            log.info("certificate store %s is ready", self._describe)
        else:
            log.warning(
                "certificate store %s is not ready (%s): its keys are refused until it is",
                self._describe,
                reason or "no reason given",
            )

    def _swap(self, new: KeyIndex, keys: set[bytes]) -> None:
        old, self._index = self._index, new
        self._snapshot = new.table if self._ready else dict(new.inserted)
        if self._listeners and keys:
            self._notify(describe_change(old, new, keys, self._describe))

    @property
    def location(self) -> str | None:
        """The absolute directory path, or None for an in-memory store."""
        return self._root

    # -- changes ------------------------------------------------------------

    def insert(self, cert: Cert) -> None:
        """Trust a certificate held in memory; it stays across reloads and file changes.

        A copy is stored, so changing ``cert`` afterwards does not change the
        store. In force when this returns.
        """
        if not isinstance(cert, Cert):
            raise ZsecTypeError(f"insert() needs a Cert, not {type(cert).__name__}")
        copy = cert.dup()
        copy._secret = None  # a trust store has no use for secret keys
        copy._freeze()
        with self._lock:
            self._check_open()
            if self._source is not None:
                self._swap(*self._index.insert(copy))
            else:
                self._inserted[copy.public_key] = copy
                self._publish({copy.public_key})
        self._deliver()

    def reload(self) -> None:
        """Rescan the whole directory now; in force when this returns."""
        if self._source is not None:
            self._check_open()
            self._source.refresh()
            return
        with self._lock:
            self._check_open()
            if self._root is not None:
                self._full_scan()
        self._deliver()

    def close(self) -> None:
        """Stop watching and empty the store, so nothing stays trusted by a closed store.

        Idempotent; also called on ``with`` exit.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            old = self._snapshot
            self._snapshot = {}
            self._paths.clear()
            self._holders.clear()
            self._inserted.clear()
        if self._source is not None:
            self._finalizer()
        self._stop_observer()
        if self._worker is not None:
            self._events.put(None)
            if self._worker is not threading.current_thread():
                self._worker.join(timeout=5)
        _live_stores.discard(self)
        del old

    def __enter__(self) -> CertStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._root or self._describe
        state = " closed" if self._closed else ""
        return f"<CertStore {where} certs={len(self._snapshot)}{state}>"

    def subscribe(self, listener: Callable[[StoreChange], None]) -> Callable[[], None]:
        """Call ``listener(StoreChange)`` after every change; returns a function that unsubscribes.

        Listeners run in the thread that made the change (the watcher, or
        the caller of ``insert``/``reload``) right after the new set is in
        force. They must be quick and must not call back into the store;
        an exception is logged and ignored.
        """
        if not callable(listener):
            raise ZsecTypeError("a store listener must be callable")
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    def _check_open(self) -> None:
        if self._closed:
            raise ZsecError("this CertStore is closed")

    # -- the watcher ----------------------------------------------------------

    def _start_observer(self) -> None:
        from watchdog.observers.polling import PollingObserverVFS

        assert self._root is not None
        handler = _Handler(self._events)
        observer: Any = None
        if not self._polling:
            try:
                from watchdog.observers import Observer

                observer = Observer()
                _schedule(observer, handler, self._root)
                observer.start()
                _hook_overflow(observer, self._events)
                self.observer_kind = "native"
                self._native_closes_missing = not _reports_closes(observer)
            except Exception as exc:  # noqa: BLE001 - any failure means: poll instead
                log.warning(
                    "cannot watch %s natively (%s); polling every %.1fs instead",
                    self._root,
                    exc,
                    _POLLING_SECONDS,
                )
                _stop_quietly(observer)
                observer = None
        if observer is None:
            # watchdog's snapshots compare mtime and size, which a same-size
            # rewrite with the old mtime restored fools; ctime cannot be set
            # back, so poll with the later of the two as "mtime".
            observer = PollingObserverVFS(
                stat=_stat_with_ctime, listdir=os.scandir, polling_interval=_POLLING_SECONDS
            )
            _schedule(observer, handler, self._root)
            observer.start()
            self.observer_kind = "polling"
            self._native_closes_missing = True
        self._observer = observer
        st = os.stat(self._root)
        self._root_id = (st.st_dev, st.st_ino)

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        _stop_quietly(observer)

    def _run(self) -> None:
        while True:
            try:
                item = self._events.get(timeout=_ROOT_CHECK_SECONDS)
            except queue.Empty:
                item = ("check", True, "", "")
            batch = [item]
            while True:
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                return
            try:
                with self._lock:
                    if self._closed:
                        return
                    self._apply_events(batch)  # type: ignore[arg-type]
                self._deliver()
            except Exception:
                # The watcher must outlive any surprise; a full rescan puts the
                # store back in step with the directory.
                log.exception("certificate store %s: update failed; rescanning", self._root)
                try:
                    with self._lock:
                        if not self._closed:
                            self._full_scan()
                    self._deliver()
                except Exception:
                    log.exception("certificate store %s: rescan failed", self._root)

    def _apply_events(self, batch: list[tuple[str, bool, str, str]]) -> None:
        assert self._root is not None
        root = self._root
        if not self._root_still_watched():
            return
        # path -> whether a failure to load it may be a write in progress
        # (created or modified, not yet closed): those are not logged yet.
        refresh: dict[str, bool] = {}
        trees: dict[str, None] = {}
        for kind, is_dir, src, dest in batch:
            if kind == "check":
                continue
            if kind == "overflow":
                self._full_scan()
                return
            if not is_dir:
                # The last event decides: after "closed" the content is final.
                refresh.pop(src, None)
                refresh[src] = kind in ("created", "modified") and not self._native_closes_missing
                if dest:
                    refresh.pop(dest, None)
                    refresh[dest] = False
            elif kind == "deleted" and src == root:
                self._root_gone()
                return
            elif kind in ("created", "deleted", "moved") or self._dir_status_changed(src):
                trees[src] = None
                if dest:
                    trees[dest] = None
        changed: set[bytes] = set()
        for tree in trees:
            self._rescan_tree(tree, changed)
        now = time.monotonic()
        if self._links and now >= self._next_link_check:
            self._next_link_check = now + _LINK_CHECK_SECONDS
            for path, signature in list(self._links.items()):
                if _target_signature(path) != signature:
                    refresh.setdefault(path, False)
        if now >= self._next_audit:
            self._next_audit = now + self._audit_interval
            if self.observer_kind == "native":
                for path in self._audit():
                    refresh.setdefault(path, False)
        for path, quiet in refresh.items():
            if _under(path, root):
                self._refresh(path, changed, quiet)
        self._publish(changed)

    def _audit(self) -> list[str]:
        """Paths whose name or inode differs from what the store last saw.

        A safety net for file events the kernel dropped (an inotify queue
        overflow that watchdog reported where no one listened): a listing
        of names and inodes, no file is read.
        """
        assert self._root is not None
        found: dict[str, int] = {}
        stack = [self._root]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue
            for entry in entries:
                if _skipped_name(entry.name):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        found[entry.path] = entry.inode()
                except OSError:
                    continue
        known = self._inodes
        differ = [p for p, inode in found.items() if known.get(p) != inode]
        differ += [p for p in known if p not in found]
        if differ:
            # Usually events still on their way; reloading them twice is harmless.
            log.debug("certificate store %s: audit reloads %d path(s)", self._root, len(differ))
        return differ

    def _root_still_watched(self) -> bool:
        """Detect the directory vanishing or being swapped for another (no event says so)."""
        assert self._root is not None
        try:
            st = os.stat(self._root)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
            if not stat.S_ISDIR(st.st_mode):
                current = None
        except OSError:
            current = None
        if current == self._root_id and self._observer is not None:
            if self._observer.is_alive():
                return True
            # The watcher died (it should not): without it changes would go
            # unseen, so start a new one and rescan what it may have missed.
            log.warning(
                "watcher for %s stopped unexpectedly; restarting it and rescanning", self._root
            )
            self._stop_observer()
            self._start_observer()
            self._full_scan()
            return False
        if self._root_id is not None:
            self._root_gone()
        if current is not None:
            log.warning("certificate directory %s is back: loading it", self._root)
            self._start_observer()
            self._full_scan()
        return False

    def _root_gone(self) -> None:
        log.warning(
            "certificate directory %s was removed or replaced: its certificates are revoked",
            self._root,
        )
        self._stop_observer()
        self._root_id = None
        self._drain_events()
        keys = set(self._holders)
        for table in (self._paths, self._holders, self._bad, self._inodes, self._links):
            table.clear()
        self._publish(keys)

    def _drain_events(self) -> None:
        while True:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._events.put(None)
                return

    # -- scanning -------------------------------------------------------------

    def _full_scan(self) -> None:
        """Read the whole tree again and make the store match it exactly."""
        assert self._root is not None
        verdicts: dict[str, str | None] = {}
        self._inodes, self._links = {}, {}
        seen = self._scan(self._root, verdicts)
        self._dir_verdicts = verdicts
        self._paths = {}
        self._holders = {}
        for path, cert in seen.items():
            self._add(path, cert)
        self._bad = {p: r for p, r in self._bad.items() if os.path.lexists(p)}
        self._publish(None)

    def _rescan_tree(self, tree: str, changed: set[bytes]) -> None:
        """Make everything at or under ``tree`` match the disk."""
        assert self._root is not None
        prefix = tree.rstrip(os.sep) + os.sep
        for path in [p for p in self._paths if p.startswith(prefix)]:
            changed.add(self._remove(path))
        for table in (self._inodes, self._links, self._bad):
            for path in [p for p in table if p.startswith(prefix)]:
                del table[path]
        # A directory renamed to a hidden or backup name is out of the store.
        if not _under(tree, self._root) or not os.path.isdir(tree) or self._skipped(tree):
            return
        verdicts: dict[str, str | None] = {}
        seen = self._scan(tree, verdicts)
        self._dir_verdicts.update(verdicts)
        for path, cert in seen.items():
            if path in self._paths:
                changed.add(self._remove(path))
            self._add(path, cert)
            changed.add(cert.public_key)

    def _scan(self, directory: str, verdicts: dict[str, str | None]) -> dict[str, Cert]:
        """Load every certificate under ``directory``: path -> Cert."""
        seen: dict[str, Cert] = {}
        pending: list[tuple[str, str, dict[str, str]]] = []
        self._shared: dict[str, str] = {}
        try:
            self._walk(directory, seen, pending, verdicts)
        finally:
            del self._shared
        # Keys of the common layout are decoded together, far cheaper than
        # one by one; an invalid key sends its file through the full reader.
        keys = z85_decode_keys([text for _, text, _ in pending])
        for (path, text, meta), public in zip(pending, keys, strict=True):
            if public is not None:
                seen[path] = public_cert(public, text, meta)
            else:
                cert = self._load_file(path, False)
                if cert is not None:
                    seen[path] = cert
        if self._bad:
            for path in seen:
                if self._bad.pop(path, None) is not None:
                    log.info("certificate %s is valid again", path)
        return seen

    def _walk(
        self,
        directory: str,
        seen: dict[str, Cert],
        pending: list[tuple[str, str, dict[str, str]]],
        dirs_ok: dict[str, str | None],
    ) -> None:
        assert self._root is not None
        problem = self._dir_problem(directory, dirs_ok)
        if problem is not None:
            self._report(directory, problem)
            return
        try:
            entries = list(os.scandir(directory))
            dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            self._report(directory, f"cannot list directory: {exc.strerror}")
            return
        # Metadata names and many values (organization, created-by) repeat
        # across files; sharing one string object for each keeps a large
        # store small.
        share = self._shared.setdefault
        try:
            read = self._read_file
            for entry in entries:
                name = entry.name
                # Cheap first look: every skipped name starts with . or # or
                # ends with ~ or t.
                if (name[0] in ".#" or name[-1] in "~t") and _skipped_name(name):
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir:
                    self._walk(entry.path, seen, pending, dirs_ok)
                    continue
                # The directory passed its checks above; opening relative to
                # it keeps to that directory even if a parent is renamed.
                path = entry.path
                try:
                    self._inodes[path] = entry.inode()
                    link = entry.is_symlink()
                except OSError:
                    continue
                if link:
                    # No event reports a change to a link's target: poll it.
                    self._links[path] = _target_signature(path)
                    if self._strict and self._link_problem(path, False):
                        continue
                data = read(path, False, name, dir_fd)
                if data is None:
                    continue
                fields = fast_fields(data, share)
                if fields is not None and fields[1] is None:
                    pending.append((path, fields[0], fields[2]))
                else:
                    cert = self._cert_from(path, data, False)
                    if cert is not None:
                        seen[path] = cert
        finally:
            os.close(dir_fd)

    def _refresh(self, path: str, changed: set[bytes], quiet: bool) -> None:
        """Re-read one file after an event and update the indexes to match."""
        cert = None
        try:
            st = None if self._skipped(path) else os.lstat(path)
        except OSError:
            st = None
        if st is None or stat.S_ISDIR(st.st_mode):
            self._bad.pop(path, None)
            self._inodes.pop(path, None)
            self._links.pop(path, None)
        else:
            self._inodes[path] = st.st_ino
            if stat.S_ISLNK(st.st_mode):
                self._links[path] = _target_signature(path)
                if not (self._strict and self._link_problem(path, quiet)):
                    cert = self._read(path, quiet)
            else:
                self._links.pop(path, None)
                cert = self._read(path, quiet)
        if path in self._paths:
            changed.add(self._remove(path))
        if cert is not None:
            self._add(path, cert)
            changed.add(cert.public_key)

    def _skipped(self, path: str) -> bool:
        assert self._root is not None
        rel = os.path.relpath(path, self._root)
        return any(_skipped_name(part) for part in rel.split(os.sep) if part != ".")

    def _link_problem(self, path: str, quiet: bool) -> bool:
        """Strict mode: a link's target must sit in a directory as safe as the store's."""
        target_dir = os.path.dirname(os.path.realpath(path))
        try:
            problem = _mode_problem(os.stat(target_dir), target_dir, "directory")
        except OSError as exc:
            problem = f"cannot stat {target_dir}: {exc.strerror}"
        if problem is not None and not quiet:
            self._report(path, f"the link's target directory is refused: {problem}")
        return problem is not None

    def _read(self, path: str, quiet: bool) -> Cert | None:
        """Check the file's directories, then load it as ``_load_file`` does."""
        if self._strict:
            problem = self._dir_problem(os.path.dirname(path), {})
            if problem is not None:
                if not quiet:
                    self._report(path, f"its directory is refused: {problem}")
                return None
        return self._load_file(path, quiet)

    def _load_file(self, path: str, quiet: bool) -> Cert | None:
        """Load one public certificate, or log why not (unless ``quiet``) and return None."""
        data = self._read_file(path, quiet)
        return None if data is None else self._cert_from(path, data, quiet)

    def _read_file(
        self, path: str, quiet: bool, name: str | None = None, dir_fd: int | None = None
    ) -> bytes | None:
        """Read a regular file that passes the strict checks, or log why not and return None.

        With ``dir_fd``, the file is opened as ``name`` relative to it.
        """
        # O_NONBLOCK so a FIFO planted in the directory cannot hang the
        # watcher; fstat on the open file so the checks and the content
        # describe the same file.
        try:
            if dir_fd is None:
                fd = os.open(path, _OPEN_FLAGS)
            else:
                fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)  # type: ignore[arg-type]
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._skip(path, f"cannot open: {exc.strerror}", quiet)
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            if self._strict and (st.st_mode & 0o022 or st.st_uid not in _TRUSTED_UIDS):
                problem = _mode_problem(st, path, "file")
                if problem is not None:
                    self._skip(path, problem, quiet)
                    return None
            size = st.st_size
            if size > MAX_CERT_BYTES:
                self._skip(path, f"larger than {MAX_CERT_BYTES} bytes", quiet)
                return None
            # One read of size+1 bytes normally reaches the end; a file that
            # grows meanwhile is read on, up to the cap.
            data = os.read(fd, size + 1)
            if len(data) > size:
                while len(data) <= MAX_CERT_BYTES:
                    chunk = os.read(fd, MAX_CERT_BYTES + 1 - len(data))
                    if not chunk:
                        break
                    data += chunk
                if len(data) > MAX_CERT_BYTES:
                    self._skip(path, f"larger than {MAX_CERT_BYTES} bytes", quiet)
                    return None
        except OSError as exc:
            self._skip(path, f"cannot read: {exc.strerror}", quiet)
            return None
        finally:
            os.close(fd)
        return data

    def _cert_from(self, path: str, data: bytes, quiet: bool) -> Cert | None:
        try:
            cert = Cert.from_bytes(data, path)
        except CertificateError as exc:
            self._skip(path, str(exc).removeprefix(f"{path}: "), quiet)
            return None
        if cert._secret is not None:
            log.warning(
                "certificate %s holds a secret key; a trust directory should hold public "
                "files only (the secret key is ignored)",
                path,
            )
            cert._secret = None
        cert._freeze()
        if self._bad and self._bad.pop(path, None) is not None:
            log.info("certificate %s is valid again", path)
        return cert

    def _skip(self, path: str, reason: str, quiet: bool) -> None:
        if not quiet:
            self._report(path, reason)

    def _dir_problem(self, directory: str, cache: dict[str, str | None]) -> str | None:
        """Why a directory (or one between it and the root) cannot be trusted, or None."""
        if not self._strict:
            return None
        assert self._root is not None
        if directory in cache:
            return cache[directory]
        problem: str | None = None
        if directory != self._root and _under(directory, self._root):
            problem = self._dir_problem(os.path.dirname(directory), cache)
        if problem is None:
            try:
                problem = _mode_problem(os.stat(directory), directory, "directory")
            except OSError as exc:
                problem = f"cannot stat {directory}: {exc.strerror}"
        cache[directory] = problem
        return problem

    def _dir_status_changed(self, directory: str) -> bool:
        # A directory event that is only a modification matters when it
        # changes whether the directory is trusted (chmod, chown).
        if not self._strict:
            return False
        if directory not in self._dir_verdicts:
            return False
        now = self._dir_problem(directory, {})
        if self._dir_verdicts[directory] == now:
            return False
        self._dir_verdicts[directory] = now
        return True

    def _report(self, path: str, reason: str) -> None:
        if self._bad.get(path) != reason:
            self._bad[path] = reason
            log.warning("skipped certificate %s: %s", path, reason)

    # -- indexes ----------------------------------------------------------------

    def _add(self, path: str, cert: Cert) -> None:
        key = cert.public_key
        self._paths[path] = cert
        held = self._holders.get(key)
        if held is None:
            self._holders[key] = path
        elif isinstance(held, str):
            self._holders[key] = [held, path]
        else:
            held.append(path)

    def _remove(self, path: str) -> bytes:
        cert = self._paths.pop(path)
        key = cert.public_key
        held = self._holders[key]
        if isinstance(held, str):
            del self._holders[key]
        else:
            held.remove(path)
            if len(held) == 1:
                self._holders[key] = held[0]
        return key

    def _current(self, key: bytes) -> Cert | None:
        cert = self._inserted.get(key)
        if cert is not None:
            return cert
        held = self._holders.get(key)
        if held is None:
            return None
        return self._paths[held if isinstance(held, str) else held[0]]

    def _publish(self, keys: set[bytes] | None) -> None:
        """Swap in a snapshot reflecting the indexes for ``keys`` (None: all), then notify."""
        old = self._snapshot
        if keys is None:
            paths = self._paths
            new = {k: paths[h if isinstance(h, str) else h[0]] for k, h in self._holders.items()}
            new.update(self._inserted)
            keys = set(old) | set(new)
        elif not keys:
            return
        else:
            new = dict(old)
            for key in keys:
                after = self._current(key)
                if after is None:
                    new.pop(key, None)
                else:
                    new[key] = after
        self._snapshot = new
        if not self._listeners:
            return
        added, removed, updated = [], [], []
        for key in keys:
            before, after = old.get(key), new.get(key)
            if after is None:
                if before is not None:
                    removed.append(before)
            elif before is None:
                added.append(after)
            elif before is not after and before._meta != after._meta:
                updated.append(after)
        self._notify(
            StoreChange(tuple(added), tuple(removed), tuple(updated), self._root or "memory")
        )

    def _notify(self, change: StoreChange) -> None:
        # Called under the lock: queue it; _deliver runs the listeners after
        # the lock is released, in the order the changes were made.
        if change:
            self._pending.append(change)

    def _deliver(self) -> None:
        # One thread at a time delivers, in order. A thread that finds another
        # delivering (or is itself delivering: a listener that inserts) leaves
        # its change queued for that one, which looks again after letting go.
        while self._pending:
            if not self._delivering.acquire(blocking=False):
                return
            try:
                while self._pending:
                    change = self._pending.popleft()
                    for listener in self._listeners:
                        try:
                            listener(change)
                        except Exception:
                            log.exception("certificate store listener failed")
            finally:
                self._delivering.release()


def _entry_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ZsecTypeError(f"a trust entry name must be a non-empty str, not {name!r}")
    return name


def _trusted_entries(entries: Mapping[str, object]) -> dict[str, Cert]:
    """Check a feed's entries and keep a read-only public copy of each certificate."""
    clean: dict[str, Cert] = {}
    for name, cert in entries.items():
        if not isinstance(cert, Cert):
            raise ZsecTypeError(f"trust entry {name!r} must be a Cert, not {type(cert).__name__}")
        clean[_entry_name(name)] = cert._trusted_copy()
    return clean


def _target_signature(path: str) -> tuple[int, ...] | None:
    """What identifies a symlink target's content and permissions, or None if unreachable.

    The target's directory counts too: strict mode judges it, and a chmod
    there must be noticed as much as one on the file.
    """
    try:
        st = os.stat(path)
        parent = os.stat(os.path.dirname(os.path.realpath(path)))
    except OSError:
        return None
    return (
        st.st_dev,
        st.st_ino,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_size,
        st.st_mode,
        st.st_uid,
        parent.st_ino,
        parent.st_mode,
        parent.st_uid,
    )


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _mode_problem(st: os.stat_result, path: str, what: str) -> str | None:
    if st.st_mode & 0o022:
        return (
            f"{what} mode {stat.S_IMODE(st.st_mode):04o} is writable by group or others, "
            f"so they could add their own keys; fix: chmod go-w {path} "
            "(or use CertStore(..., strict=False))"
        )
    if hasattr(os, "geteuid") and st.st_uid not in (0, os.geteuid()):
        return (
            f"{what} is owned by uid {st.st_uid}, not by this process (uid {os.geteuid()}) "
            f"or root; fix: chown {os.geteuid()} {path} (or use CertStore(..., strict=False))"
        )
    return None


class _Handler:
    """Forwards watchdog events to the store's queue; never touches the store."""

    def __init__(self, events: queue.SimpleQueue[Any]) -> None:
        self._events = events

    def dispatch(self, event: Any) -> None:
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(getattr(event, "dest_path", "") or "")
        self._events.put((kind, bool(event.is_directory), src, dest))


def _schedule(observer: Any, handler: _Handler, root: str) -> None:
    from watchdog import events as ev

    wanted = [
        getattr(ev, name)
        for name in (
            "FileCreatedEvent",
            "FileDeletedEvent",
            "FileModifiedEvent",
            "FileMovedEvent",
            "FileClosedEvent",
            "FileAttribEvent",
            "DirCreatedEvent",
            "DirDeletedEvent",
            "DirMovedEvent",
            "DirModifiedEvent",
            "DirAttribEvent",
        )
        if hasattr(ev, name)
    ]
    try:
        observer.schedule(handler, root, recursive=True, event_filter=wanted)
    except TypeError:  # watchdog before 4.0 has no event_filter
        observer.schedule(handler, root, recursive=True)


def _stat_with_ctime(path: str) -> os.stat_result:
    st = os.stat(path)
    if st.st_ctime_ns <= st.st_mtime_ns:
        return st
    return os.stat_result(
        tuple(st), {"st_mtime": st.st_ctime, "st_mtime_ns": st.st_ctime_ns, "st_ctime": st.st_ctime}
    )


def _hook_overflow(observer: Any, events: queue.SimpleQueue[Any]) -> bool:
    """Have watchdog's inotify overflow handler tell this store to rescan.

    watchdog (7.x) rebuilds its watches after the kernel drops events, but
    tells its handlers nothing; its log line is the only other sign, and
    logging configuration can silence that. Returns whether the hook is in.
    """
    hooked = False
    for emitter in list(getattr(observer, "emitters", ())):
        group = getattr(emitter, "_inotify", None)
        original = getattr(group, "on_queue_overflow", None)
        if not callable(original):
            continue

        def on_overflow(original: Any = original) -> None:
            original()
            events.put(("overflow", True, "", ""))

        group.on_queue_overflow = on_overflow  # type: ignore[union-attr]
        hooked = True
    return hooked


def _reports_closes(observer: Any) -> bool:
    from watchdog import events as ev

    return hasattr(ev, "FileClosedEvent") and "Inotify" in type(observer).__name__


def _stop_quietly(observer: Any) -> None:
    if observer is None:
        return
    try:
        observer.stop()
        if observer.is_alive() and observer is not threading.current_thread():
            observer.join(timeout=5)
    except Exception:
        log.debug("watchdog observer did not stop cleanly", exc_info=True)


# Stores to resynchronise when the kernel drops file events (inotify queue
# overflow): watchdog only logs it, so listen for that log record.
_live_stores: weakref.WeakSet[CertStore] = weakref.WeakSet()


class _OverflowListener(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "overflow" in str(record.msg).lower():
            for store in list(_live_stores):
                store._events.put(("overflow", True, "", ""))
        return True


for _name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
    logging.getLogger(_name).addFilter(_OverflowListener())
