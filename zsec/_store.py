"""CertStore: trusted public certificates by key, fed by a directory or any TrustSource.

Lookups read an immutable ``KeyIndex`` table (a dict swapped in one
assignment), so they never wait for, or see half of, a change. Every change
arrives through a ``TrustFeed``: the directory source (``_dirsource``) uses
the same door as one you write yourself. Nothing here knows about sockets,
ZAP or watchdog.
"""

from __future__ import annotations

import collections
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ._cert import Cert
from ._dirsource import DirectorySource
from ._errors import ZsecError, ZsecTypeError
from ._index import KeyIndex, StoreChange, describe_change
from ._keys import KEY_BYTES, coerce_key
from ._source import TrustFeed, TrustSource

log = logging.getLogger("zsec.store")


class CertStore:
    """A set of trusted public certificates, looked up by public key.

    ``CertStore(path)`` loads every certificate file under the directory
    (recursively; ``*_secret``, hidden and ``~`` backup files are skipped,
    and a ``*_secret`` file is reported in the log) and then follows it
    live: files created, changed, renamed or deleted are reflected within
    milliseconds, and a deleted directory empties the store.
    ``CertStore(source)`` is fed by a ``TrustSource`` of your own (a
    database, etcd); ``CertStore()`` is an in-memory store filled with
    ``insert``.

    The directory is followed by its name: if ``path`` is (or passes
    through) a symlink, the directory it leads to is watched, and
    re-pointing the link swaps the whole set as one change. A key in both
    the old and the new directory is never absent, even for a moment;
    dropped keys are revoked and added ones trusted within milliseconds.
    Kubernetes Secret and ConfigMap volumes (``name -> ..data/name``) are
    followed the same way.

    Read-your-writes: a lookup that misses, while the directory has
    changed since the store last looked at it, waits up to 100 ms for the
    store to catch up, so a certificate saved into the directory (by
    ``save_public`` or any create-then-rename) just before a client
    connects is found. This covers names created directly in the
    directory; a file rewritten in place is caught within the normal
    latency. A miss never reads a file on the caller's thread.

    With ``strict=True`` (the default) a file or directory that is writable
    by group or others, or owned by another user than this process or root,
    is refused, as OpenSSH's StrictModes does: whoever can write there can
    let themselves in. Unusable files are skipped with one log line on the
    ``zsec.store`` logger; the others stay.

    ``on_change(StoreChange)`` (and every ``subscribe``d listener) is called
    after each change, outside the store's lock. Certificates handed out by
    the store are read-only; ``dup()`` gives a copy you can change.

    Symlinked certificate files are followed (their targets are re-checked
    every 0.5 s, and at once when a hidden name such as ``..data``
    changes; in strict mode the target's directory must be safe too);
    symlinked directories inside the store are not. Every
    ``audit_interval`` seconds a listing of names and inodes catches any
    file event the kernel dropped.
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
        self._lock = threading.Lock()
        self._index = KeyIndex()
        # What lookups read: the index's table, or only the inserted
        # certificates while the source is not ready.
        self._table: dict[bytes, Cert] = self._index.table
        self._ready = location is None
        self._ready_changed = threading.Condition(self._lock)
        self._closed = False
        # Listeners, replaced as a whole (copy on write) so delivery can
        # iterate without a lock.
        self._listeners: tuple[Callable[[StoreChange], None], ...] = (
            () if on_change is None else (on_change,)
        )
        self._pending: collections.deque[StoreChange] = collections.deque()
        self._delivering = threading.Lock()
        self._source: TrustSource | None = None
        self._directory: DirectorySource | None = None
        self._describe = "memory"
        self._on_miss: Callable[[Callable[[], bool]], None] | None = None
        if location is None:
            return
        if isinstance(location, TrustSource):
            source: TrustSource = location
        else:
            self._directory = DirectorySource(
                location, strict=strict, polling=polling, audit_interval=audit_interval
            )
            source = self._directory
            self._on_miss = self._directory.catch_up
        self._source = source
        self._describe = source.describe()
        # The source holds the store only through the feed's weak reference,
        # so a store dropped without close() is collected, and this stops it.
        self._finalizer = weakref.finalize(self, source.close)
        try:
            source.start(TrustFeed(weakref.ref(self)))
        except BaseException:
            self._finalizer()
            raise
        self._deliver()

    # -- lookups (any thread, lock-free) --------------------------------------

    def lookup(self, public_key: bytes | str) -> Cert | None:
        """Return the trusted certificate for a public key (32 bytes or 40 Z85), or None."""
        if type(public_key) is not bytes or len(public_key) != KEY_BYTES:
            public_key = coerce_key(public_key, "public key")
        cert = self._table.get(public_key)
        if cert is None and self._on_miss is not None:
            key = public_key
            self._on_miss(lambda: key in self._table)
            cert = self._table.get(public_key)
        return cert

    def __contains__(self, public_key: object) -> bool:
        try:
            return self.lookup(public_key) is not None  # type: ignore[arg-type]
        except ZsecError:
            return False

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self) -> Iterator[Cert]:
        return iter(list(self._table.values()))

    @property
    def location(self) -> str | None:
        """The directory path as given (made absolute), or None for other stores."""
        return self._directory.root if self._directory is not None else None

    @property
    def observer_kind(self) -> str:
        """How a directory is followed: ``native`` (inotify), ``polling``, or ``none``."""
        return self._directory.kind if self._directory is not None else "none"

    @property
    def reloads(self) -> int:
        """How many times the source re-read everything (a directory rescan, an etcd reload)."""
        return int(getattr(self._source, "reloads", 0))

    @property
    def overflows(self) -> int:
        """How many times the kernel dropped file events and forced a rescan (directories)."""
        return self._directory.overflows if self._directory is not None else 0

    @property
    def ready(self) -> bool:
        """Whether the source is in step with its truth (until then its keys fail closed)."""
        return self._ready and not self._closed

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the store is ready, at most ``timeout`` seconds; return ``ready``."""
        with self._ready_changed:
            self._ready_changed.wait_for(lambda: self._ready or self._closed, timeout)
        return self.ready

    # -- changes ------------------------------------------------------------

    def insert(self, cert: Cert) -> None:
        """Trust a certificate held in memory; it stays across reloads and source changes.

        A read-only copy without the secret key is stored, so changing
        ``cert`` afterwards does not change the store. In force when this
        returns.
        """
        if not isinstance(cert, Cert):
            raise ZsecTypeError(f"insert() needs a Cert, not {type(cert).__name__}")
        copy = cert._trusted_copy()
        with self._lock:
            self._check_open()
            self._swap(*self._index.insert(copy))
        self._deliver()

    def reload(self) -> None:
        """Have the source catch up now (a directory is read again); in force when this returns."""
        self._check_open()
        if self._source is not None:
            self._source.refresh()
        self._deliver()

    def close(self) -> None:
        """Stop following the source and empty the store; idempotent, also on ``with`` exit.

        Nothing stays trusted by a closed store. Listeners are not told:
        closing a store is not a revocation of every key it held.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._index = KeyIndex()
            self._table = self._index.table
            self._ready_changed.notify_all()
        if self._source is not None:
            self._finalizer()

    def __enter__(self) -> CertStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.location or self._describe
        state = " closed" if self._closed else ("" if self._ready else " not-ready")
        return f"<CertStore {where} certs={len(self._table)}{state}>"

    def subscribe(self, listener: Callable[[StoreChange], None]) -> Callable[[], None]:
        """Call ``listener(StoreChange)`` after every change; returns a function that unsubscribes.

        Listeners run outside the store's lock, one change at a time and in
        order, in whichever thread delivers (the watcher, or the caller of
        ``insert``/``reload``), right after the new set is in force. They
        should be quick; an exception is logged and ignored.
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

    # -- the feed's side (TrustFeed calls these, from any thread) ---------------------

    def _feed_reset(self, entries: Mapping[str, Cert]) -> None:
        clean = _trusted_entries(entries)
        with self._lock:
            if self._closed:
                return
            self._swap(*self._index.reset(clean))
        self._deliver()

    def _feed_update(self, put: Mapping[str, Cert], delete: Iterable[str]) -> None:
        clean = _trusted_entries(put)
        if isinstance(delete, (str, bytes, bytearray)):
            # Iterable, so taken as names it would delete its characters and
            # silently leave the entry it names trusted.
            raise ZsecTypeError(
                f"delete must be a collection of entry names, not one {type(delete).__name__}: "
                f"write delete=[{delete!r}]"
            )
        gone = [_entry_name(name) for name in delete]
        with self._lock:
            if self._closed:
                return
            self._swap(*self._index.update(clean, gone))
        self._deliver()

    def _feed_ready(self, ready: bool, reason: str) -> None:
        with self._lock:
            if self._closed or ready == self._ready:
                return
            self._ready = ready
            self._table = self._visible(self._index)
            self._ready_changed.notify_all()
        if ready:
            log.info("certificate store %s is ready", self._describe)
        else:
            log.warning(
                "certificate store %s is not ready (%s): its keys are refused until it is",
                self._describe,
                reason or "no reason given",
            )

    def _visible(self, index: KeyIndex) -> dict[bytes, Cert]:
        return index.table if self._ready else index.without_entries().table

    def _swap(self, new: KeyIndex, keys: set[bytes]) -> None:
        """Publish ``new`` with one assignment (under the lock) and queue its change."""
        old, self._index = self._index, new
        self._table = self._visible(new)
        if self._listeners and keys:
            change = describe_change(old, new, keys, self._describe)
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


def _trusted_entries(entries: Mapping[str, Cert]) -> dict[str, Cert]:
    """Check a feed's entries and keep a read-only public copy of each certificate."""
    if not isinstance(entries, Mapping):
        raise ZsecTypeError(
            f"trust entries must be a mapping of entry name to Cert, not {type(entries).__name__}"
        )
    clean: dict[str, Cert] = {}
    for name, cert in entries.items():
        if not isinstance(cert, Cert):
            raise ZsecTypeError(f"trust entry {name!r} must be a Cert, not {type(cert).__name__}")
        clean[_entry_name(name)] = cert._trusted_copy()
    return clean
