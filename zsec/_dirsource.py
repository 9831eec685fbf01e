"""DirectorySource: a trust directory followed live, feeding a CertStore.

One worker thread owns all the state below. It takes file events off a
queue in batches (``_watch`` puts them there), turns each batch into a plan
(``plan``: pure), re-reads only what the plan names (``_trustdir``), and
hands the result to the store as ONE ``TrustFeed.update``; a full reload is
ONE ``TrustFeed.reset``. So a lookup never sees half of a batch, and a key
present before and after a swap of the whole directory is never absent.

The directory is followed by what the user named, not by what it was when
the store opened: the name is resolved again on every batch (and at least
every 0.1 s), so a symlink re-pointed to another directory, a directory
renamed away or replaced, or one deleted and recreated, is noticed, the new
directory watched, and its certificates published as one change.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from . import _trustdir as td
from ._cert import Cert
from ._errors import FileAccessError, ZsecValueError
from ._files import fspath, printable
from ._source import TrustFeed, TrustSource
from ._watch import CATCH_UP, OVERFLOW, STOP, FsEvent, Item, Watch

log = logging.getLogger("zsec.store")


# How often an idle worker checks that the name still leads to the same
# directory: a re-pointed symlink above the root gives no event at all.
ROOT_CHECK_SECONDS = 0.1
# How often symlinked certificates' targets are compared (no event covers them).
LINK_CHECK_SECONDS = 0.5
# Read-your-writes: how long a lookup that missed may wait for the worker to
# look at a directory that changed since its last look. Bounded, and only
# paid while the directory is newer than that look, so a stream of unknown
# keys cannot make it wait more than once per change of the directory.
MISS_WAIT_SECONDS = 0.1
# Directory timestamps come from a coarse clock (a few ms): a change within
# this long of the last look may carry the same timestamp, so a look that
# recent does not count as settled.
_STAMP_SETTLE_NS = 20_000_000


class Plan(NamedTuple):
    """What one batch of events asks the worker to do."""

    #: Re-read everything (the kernel dropped events).
    rescan_all: bool
    #: Files to re-read: shown path -> True while a write may be in progress
    #: (created or modified and not yet closed), when a failure is not reported yet.
    files: dict[str, bool]
    #: Directories to re-read as a whole (created, removed, renamed, chmod).
    trees: list[str]
    #: Compare every symlink's target now: a hidden name changed, which is how
    #: Kubernetes swaps ``..data`` under the links of a Secret volume.
    links: bool
    #: A lookup missed and waits: list the root directory for names not yet seen.
    catch_up: bool
    #: Directories whose listing to compare with what was seen: the polling
    #: observer reports a directory as modified when a name in it changed, and
    #: a name that came and went between two polls it never reports at all.
    listings: list[str]


def plan(
    batch: Iterable[Item],
    shown: Callable[[str], str | None],
    root: str,
    *,
    closes_reported: bool,
    dir_changed: Callable[[str], bool],
) -> Plan:
    """Turn a batch of queue items into a ``Plan`` (pure but for ``dir_changed``).

    ``shown`` maps an event's path to the path the store knows it by, or
    None when it lies outside; ``dir_changed`` says whether a directory's
    strict verdict changed (a chmod or chown that only modified it).
    """
    files: dict[str, bool] = {}
    trees: dict[str, None] = {}
    listings: dict[str, None] = {}
    links = catch_up = False
    for item in batch:
        if item is OVERFLOW:
            return Plan(True, {}, [], True, True, [])
        if item is CATCH_UP:
            catch_up = True
            continue
        if not isinstance(item, FsEvent):
            continue
        src = shown(item.src)
        dest = shown(item.dest) if item.dest else None
        for path in (src, dest):
            if path is not None and path != root and td.skipped_path(path, root):
                links = True
        if src is None and dest is None:
            continue
        if not item.is_dir:
            if src is not None:
                # The last event decides: after "closed" the content is final.
                files.pop(src, None)
                files[src] = item.kind in ("created", "modified") and closes_reported
            if dest is not None:
                files.pop(dest, None)
                files[dest] = False
        elif item.kind == "deleted" and src == root:
            return Plan(True, {}, [], True, catch_up, [])
        elif item.kind in ("created", "deleted", "moved") or (src is not None and dir_changed(src)):
            for path in (src, dest):
                if path is not None:
                    trees[path] = None
        elif src is not None and item.kind == "modified":
            listings[src] = None
    return Plan(False, files, list(trees), links, catch_up, list(listings))


class DirectorySource(TrustSource):
    """The trust source behind ``CertStore(path)``: a directory, followed live."""

    def __init__(
        self, location: object, *, strict: bool, polling: bool, audit_interval: float
    ) -> None:
        self._audit_interval = float(audit_interval)
        if not 0 < self._audit_interval < math.inf:
            raise ZsecValueError("audit_interval must be a positive, finite number of seconds")
        root = os.path.abspath(fspath(location, "certificate store location"))
        try:
            st = os.stat(root)
        except OSError as exc:
            raise FileAccessError(
                f"certificate directory {root}: {exc.strerror}", errno=exc.errno, filename=root
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise FileAccessError(f"certificate store location {root} is not a directory")
        self.root = root
        self._strict = bool(strict)
        self._polling = bool(polling)
        self._lock = threading.RLock()
        # The thread inside ``_owned`` (feeding the store, so possibly running
        # its listeners): a lookup there must not wait for the worker.
        self._holder: int | None = None
        self._events: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._watch: Watch | None = None
        self._feed: TrustFeed | None = None
        self._worker: threading.Thread | None = None
        self._closed = False
        # For operators (metrics): whole-directory reloads, and the ones the
        # kernel forced by dropping file events.
        self.reloads = 0
        self.overflows = 0
        # The directory the name led to at the last look, and its identity.
        self._real: str | None = None
        self._root_id: tuple[int, int] | None = None
        # What the store was last fed (shown path -> certificate), and what
        # the audit and the link check compare against.
        self._known: dict[str, Cert] = {}
        self._inodes: dict[str, int] = {}
        self._links: dict[str, tuple[int, ...] | None] = {}
        self._verdicts: dict[str, str | None] = {}
        # Problems and secret files already logged, so each is said once per change.
        self._reported: dict[str, str] = {}
        self._secrets: dict[str, tuple[int, ...] | None] = {}
        self._next_link_check = 0.0
        self._next_audit = time.monotonic() + self._audit_interval
        # Read-your-writes: lookups that missed take a ticket; the worker
        # answers every ticket issued before it drained the queue.
        self._sync = threading.Condition(threading.Lock())
        self._tickets = 0
        self._answered = 0
        self._synced: tuple[int, ...] | None = None
        # The waiting lookups' "is my key there now?" checks.
        self._probes: list[Callable[[], bool]] = []
        # When to list the root once more because the last look was too recent to trust.
        self._recheck_at = 0.0

    # -- TrustSource ---------------------------------------------------------------

    def describe(self) -> str:
        return f"directory {self.root}"

    @property
    def kind(self) -> str:
        """Which observer follows the directory: native, polling, or none."""
        return self._watch.kind if self._watch is not None else "none"

    def start(self, feed: TrustFeed) -> None:
        self._feed = feed
        with self._owned():
            self._check_root()  # the first look: watch, then load
        feed.set_ready(True)
        self._worker = threading.Thread(
            target=self._run, name=f"zsec-certstore:{os.path.basename(self.root)}", daemon=True
        )
        self._worker.start()

    def refresh(self) -> None:
        with self._owned():
            if self._closed:
                return
            if self._check_root():
                self._resync()

    def close(self) -> None:
        # _closed first: a worker that then finds the watch gone or stopped
        # knows it was this, not a dead watcher to restart (_check_root).
        self._closed = True
        self._events.put(STOP)
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=5)
        with self._sync:
            self._sync.notify_all()

    @contextlib.contextmanager
    def _owned(self) -> Iterator[None]:
        """Hold the source's lock, remembering which thread does."""
        with self._lock:
            outer, self._holder = self._holder, threading.get_ident()
            try:
                yield
            finally:
                self._holder = outer

    # -- read-your-writes (called by CertStore.lookup on a miss, any thread) -----

    def catch_up(self, found: Callable[[], bool]) -> None:
        """If the directory changed since the worker last listed it, wait briefly for a look.

        Called by ``CertStore.lookup`` on a miss, on the caller's thread (the
        ZAP thread): never reads a file or lists a directory itself, only one
        ``stat`` of the root, then at most ``MISS_WAIT_SECONDS`` of waiting,
        ended early as soon as ``found()`` (the lookup again) succeeds.
        """
        if self._closed or self._worker is None:
            return
        if self._holder == threading.get_ident():
            # A listener called while this thread feeds the store (the worker,
            # or reload()): the look it would wait for needs this very thread,
            # so waiting would only stall every change queued behind it.
            return
        try:
            stamp = _stamp(os.stat(self.root))
        except OSError:
            return
        if stamp == self._synced:
            return
        with self._sync:
            self._tickets += 1
            ticket = self._tickets
            self._probes.append(found)
            try:
                self._events.put(CATCH_UP)
                self._sync.wait_for(
                    lambda: self._answered >= ticket or self._closed or found(), MISS_WAIT_SECONDS
                )
            finally:
                self._probes.remove(found)

    # -- the worker -------------------------------------------------------------------

    def _run(self) -> None:
        # Exits when: STOP is queued (close), or the source is closed.
        events = self._events
        while not self._closed:
            timeout = ROOT_CHECK_SECONDS
            if self._recheck_at:
                timeout = min(timeout, max(0.0, self._recheck_at - time.monotonic()))
            try:
                first: Item | None = events.get(timeout=timeout)
            except queue.Empty:
                first = None
            with self._sync:
                tickets = self._tickets
            batch = [] if first is None else [first]
            while True:
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            if STOP in batch:
                return
            try:
                with self._owned():
                    if self._closed:
                        return
                    self._apply(batch)
            except Exception:
                # The watcher must outlive any surprise; a full rescan puts the
                # store back in step with the directory.
                log.exception("certificate store %s: update failed; rescanning", self.root)
                try:
                    with self._owned():
                        if not self._closed and self._check_root():
                            self._resync()
                except Exception:
                    log.exception("certificate store %s: rescan failed", self.root)
            with self._sync:
                self._answered = max(self._answered, tickets)
                self._sync.notify_all()

    def _apply(self, batch: list[Item]) -> None:
        """Bring the store in step with the directory for one batch of events."""
        catch_up = CATCH_UP in batch
        recheck = bool(self._recheck_at) and time.monotonic() >= self._recheck_at
        if recheck:
            catch_up, self._recheck_at = True, 0.0
        # Taken before anything is read: what the directory looked like at
        # the latest when this pass began.
        stamp = self._root_stamp() if catch_up else None
        if not self._check_root():
            return  # reloaded (or emptied) as a whole
        watch = self._watch
        if watch is None:
            return  # close() took it since the check: the store is closed
        todo = plan(
            batch,
            self._shown,
            self.root,
            closes_reported=watch.reports_closes,
            dir_changed=self._recheck_dir,
        )
        if todo.rescan_all:
            if OVERFLOW in batch:
                self.overflows += 1
            self._resync(stamp)
            return
        put: dict[str, Cert] = {}
        gone: set[str] = set()
        for tree in todo.trees:
            self._rescan_tree(tree, put, gone)
        files = todo.files
        now = time.monotonic()
        links_now = todo.links or catch_up or now >= self._next_link_check
        if self._links and links_now:
            self._next_link_check = now + LINK_CHECK_SECONDS
            for path, signature in list(self._links.items()):
                if td.link_signature(path) != signature:
                    files.setdefault(path, False)
        if now >= self._next_audit:
            self._next_audit = now + self._audit_interval
            if self.kind == "native":
                for path in self._audit():
                    files.setdefault(path, False)
        # Names found by a listing may be files still being written: their
        # problems are logged when an event (or the audit) reports them.
        for directory in todo.listings:
            if directory not in todo.trees:
                for path in self._listing_changes(directory):
                    files.setdefault(path, True)
        self._refresh_all(files, put, gone)
        self._publish(put, gone)
        if catch_up:
            with self._sync:
                waiting = [probe for probe in self._probes if not probe()]
            if waiting or recheck:
                # Names the events have not (yet) told of; a lookup only
                # misses a key that is new, so new names are all that count.
                put, gone = {}, set()
                self._refresh_all(dict.fromkeys(self._new_names(), True), put, gone)
                self._publish(put, gone)
                self._settled(stamp)
            # Otherwise every waiting lookup found its key in the events: the
            # listing (and the claim to have seen the directory) can wait.

    def _refresh_all(self, files: dict[str, bool], put: dict[str, Cert], gone: set[str]) -> None:
        """Re-read files; log what is wrong with those not possibly still being written."""
        for path, in_progress in files.items():
            if td.under(path, self.root):
                problem = self._refresh(path, put, gone)
                if problem is not None and not in_progress:
                    self._report(path, problem, self._reported)

    def _root_stamp(self) -> tuple[tuple[int, ...], bool] | None:
        """The root's stamp for read-your-writes, and whether it is so recent that it may be stale.

        Directory timestamps come from a coarse clock: a change made right
        after this look can carry the same timestamp, so a recent stamp asks
        for one more look a moment later.
        """
        try:
            st = os.stat(self.root)
        except OSError:
            return None
        now = time.time_ns()
        fresh = min(abs(now - st.st_mtime_ns), abs(now - st.st_ctime_ns)) < _STAMP_SETTLE_NS
        return _stamp(st), fresh

    def _settled(self, stamp: tuple[tuple[int, ...], bool] | None) -> None:
        if stamp is None:
            self._synced = None
            return
        self._synced = stamp[0]
        if stamp[1]:
            self._recheck_at = time.monotonic() + _STAMP_SETTLE_NS / 1e9

    def _shown(self, path: str) -> str | None:
        real = self._real
        if real is None:
            return None
        if path == real:
            return self.root
        if path.startswith(real) and path[len(real) : len(real) + 1] == os.sep:
            return self.root + path[len(real) :]
        return None

    def _real_of(self, shown: str) -> str:
        assert self._real is not None
        return self._real + shown[len(self.root) :]

    # -- following the root -------------------------------------------------------

    def _check_root(self) -> bool:
        """Make sure the name still leads to the watched directory.

        Returns True when it does (the events in hand apply). Otherwise it
        has already acted and returns False: a directory that is gone is
        emptied (its keys revoked); a new one (a re-pointed symlink, a
        directory renamed into place, one recreated, or the first look) is
        watched and loaded as ONE change; a dead watcher is replaced and
        the directory reloaded.
        """
        real = os.path.realpath(self.root)
        try:
            st = os.stat(real)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
            if not stat.S_ISDIR(st.st_mode):
                current = None
        except OSError:
            current = None
        watch = self._watch
        if current is None:
            if self._real is not None:
                log.warning(
                    "certificate directory %s was removed or replaced: "
                    "its certificates are revoked",
                    self.root,
                )
                self._forget_root()
            return False
        if current == self._root_id and real == self._real:
            if watch is None or not watch.alive():
                if self._closed:
                    # close() took the watcher away or stopped it, from another
                    # thread, after this batch began: nothing to restart. It
                    # sets _closed first, so this sees any stop it made.
                    return False
                log.warning(
                    "watcher for %s stopped unexpectedly; restarting it and rescanning", self.root
                )
            elif watch.recursive or not (_may_have_subdirs(st) or self._read_subdir(real)):
                return True
            else:
                log.info(
                    "certificate directory %s has a subdirectory now: watching the whole tree",
                    printable(self.root),
                )
        elif self._real is None:
            if self._worker is not None:  # not the first look
                log.warning("certificate directory %s is back: loading it", self.root)
        elif real != self._real:
            log.info(
                "certificate directory %s now leads to %s: loading it as one change",
                printable(self.root),
                printable(real),
            )
        else:
            log.warning("certificate directory %s was replaced by another: loading it", self.root)
        self._watch_and_load(real, current, recursive=_may_have_subdirs(st))
        if self._watch is not None and not self._watch.recursive and self._read_subdir(real):
            # The link count said there is no subdirectory, the listing found
            # one (a file system that does not count them): watch the tree.
            flat = self._watch
            self._watch_and_load(real, current, recursive=True)
            flat.stop(wait=False)
        if watch is not None:
            # Not waited for: its threads end on their own, and the new set
            # is already in force.
            watch.stop(wait=False)
        return False

    def _read_subdir(self, real: str) -> bool:
        """Whether a scan walked a directory below ``real``.

        Where the link count says nothing (SMB mounts report 2 for every
        directory), a subdirectory made after the load shows only here,
        once the event on the root has had it read.
        """
        return any(d != real for d in self._verdicts)

    def _watch_and_load(self, real: str, current: tuple[int, int], *, recursive: bool) -> None:
        """Start a new watch on ``real``, then read it all and feed it as one change."""
        stamp = self._root_stamp()
        watch = Watch(self._events, polling=self._polling)
        # Watch first, then scan: a change during the scan is then seen
        # twice rather than never.
        root_name = (os.path.dirname(self.root), os.path.basename(self.root))
        try:
            watch.start(real, root_name, recursive=recursive)
        except Exception:
            # Not watched: still read what the name leads to now (one that
            # cannot be listed is an empty set), never the directory it led
            # to before, and leave its identity unknown so that the next
            # look tries the watch again rather than take it for watched.
            self._real, self._root_id = real, None
            self._resync(stamp)
            raise
        self._watch = watch
        if self._closed:
            # close() ran meanwhile and may have taken only the previous
            # watch: this one is ours to stop, and a closed store reads nothing.
            self._watch = None
            watch.stop(wait=False)
            return
        self._real, self._root_id = real, current
        self._resync(stamp)

    def _forget_root(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        self._real = self._root_id = None
        self._inodes, self._links, self._verdicts = {}, {}, {}
        self._reported, self._secrets = {}, {}
        self._drain()
        self._known = {}
        if self._feed is not None:
            self._feed.reset({})

    def _drain(self) -> None:
        while True:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return
            if item is STOP:
                self._events.put(STOP)
                return

    # -- reading ---------------------------------------------------------------------

    def _resync(self, stamp: tuple[tuple[int, ...], bool] | None = None) -> None:
        """Read the whole directory again and feed it as one reset.

        ``stamp`` is the root's stamp taken before the events in hand were
        read, if the caller has one; otherwise it is taken now, before the
        scan. A full read has seen the directory either way, so it settles
        read-your-writes: rescans forced from outside (a dropped event, a
        reload) never leave lookups that miss waiting for the worker.
        """
        assert self._real is not None
        if stamp is None:
            stamp = self._root_stamp()
        self.reloads += 1
        found = td.scan(self._real, self.root, self._real, strict=self._strict)
        self._inodes, self._links, self._verdicts = found.inodes, found.links, found.verdicts
        old_reported, self._reported = self._reported, {}
        self._absorb(found, old_reported)
        self._secrets = {p: s for p, s in self._secrets.items() if p in found.secrets}
        self._known = found.entries
        if self._feed is not None:
            self._feed.reset(found.entries)
        self._settled(stamp)

    def _rescan_tree(self, tree: str, put: dict[str, Cert], gone: set[str]) -> None:
        """Make everything at or under ``tree`` match the disk."""
        assert self._real is not None
        prefix = tree.rstrip(os.sep) + os.sep
        for path in [p for p in self._known if p.startswith(prefix)]:
            gone.add(path)
            put.pop(path, None)
        for table in (self._inodes, self._links, self._reported, self._secrets):
            for path in [p for p in table if p.startswith(prefix)]:
                del table[path]
        # A directory renamed to a hidden or backup name is out of the store.
        if not td.under(tree, self.root) or td.skipped_path(tree, self.root):
            return
        real = self._real_of(tree)
        if not os.path.isdir(real) or os.path.islink(real):
            return
        found = td.scan(real, tree, self._real, strict=self._strict)
        self._inodes.update(found.inodes)
        self._links.update(found.links)
        self._verdicts.update(found.verdicts)
        self._absorb(found, self._reported)
        for path, cert in found.entries.items():
            put[path] = cert
            gone.discard(path)

    def _absorb(self, found: td.Scan, before: dict[str, str]) -> None:
        """Log what a scan found wrong (once per problem) or fixed."""
        for path, reason in found.problems.items():
            self._report(path, reason, before)
        for path in found.entries:
            if path in before and path not in found.problems:
                before.pop(path, None)
                log.info("certificate %s is valid again", printable(path))
        for path, signature in found.secrets.items():
            self._note_secret(path, signature, path in found.entries)

    def _refresh(self, path: str, put: dict[str, Cert], gone: set[str]) -> str | None:
        """Re-read one file and record what the store must hold for it; return why not, if so."""
        if td.skipped_path(path, self.root):
            if td.secret_name(os.path.basename(path)):
                self._note_secret(path, td.secret_signature(self._real_of(path)), False)
            self._drop(path, put, gone)
            return None
        real = self._real_of(path)
        try:
            st: os.stat_result | None = os.lstat(real)
        except OSError:
            st = None
        if st is None or stat.S_ISDIR(st.st_mode):
            for table in (self._inodes, self._links, self._reported):
                table.pop(path, None)
            self._drop(path, put, gone)
            return None
        self._inodes[path] = st.st_ino
        problem: str | None = None
        if stat.S_ISLNK(st.st_mode):
            self._links[path] = td.link_signature(real)
            if self._strict:
                problem = td.link_problem(real)
        else:
            self._links.pop(path, None)
        if problem is None and self._strict:
            directory = td.dir_problem(os.path.dirname(real), self._real or real, {})
            if directory is not None:
                problem = f"its directory is refused: {directory}"
        loaded = td.GONE
        if problem is None:
            loaded = td.read_cert(real, strict=self._strict)
            problem = loaded.problem
            if problem is not None:
                problem = problem.replace(real, path)
        if loaded.cert is None:
            self._drop(path, put, gone)
            return problem
        put[path] = loaded.cert
        gone.discard(path)
        if self._reported.pop(path, None) is not None:
            log.info("certificate %s is valid again", printable(path))
        if loaded.had_secret:
            self._note_secret(path, td.secret_signature(real), True)
        return None

    def _drop(self, path: str, put: dict[str, Cert], gone: set[str]) -> None:
        put.pop(path, None)
        if path in self._known:
            gone.add(path)

    def _publish(self, put: dict[str, Cert], gone: set[str]) -> None:
        gone -= put.keys()
        for path in gone:
            self._known.pop(path, None)
        # A file re-read to the very same certificate need not be fed again.
        put = {p: c for p, c in put.items() if self._known.get(p) is not c}
        self._known.update(put)
        if (put or gone) and self._feed is not None:
            self._feed.update(put, gone)
            # A lookup waiting in catch_up may find its key now.
            with self._sync:
                self._sync.notify_all()

    def _recheck_dir(self, shown: str) -> bool:
        """Whether a directory's strict verdict changed; updates the stored verdict."""
        if not self._strict or self._real is None:
            return False
        real = self._real_of(shown)
        if real not in self._verdicts:
            return False
        now = td.dir_problem(real, self._real, {})
        if self._verdicts[real] == now:
            return False
        self._verdicts[real] = now
        return True

    def _audit(self) -> list[str]:
        """Paths whose name or inode differs from what the store last saw (lost events)."""
        assert self._real is not None
        changed = td.differ(self._inodes, td.list_inodes(self._real, self.root))
        if changed:
            # Usually events still on their way; reloading them twice is harmless.
            log.debug("certificate store %s: audit reloads %d path(s)", self.root, len(changed))
        return changed

    def _new_names(self) -> list[str]:
        """Names directly in the root that are new, or another inode, since last seen."""
        assert self._real is not None
        try:
            with os.scandir(self._real) as entries:
                found = {e.name: e.inode() for e in entries}
        except OSError:
            return []
        prefix = self.root + os.sep
        known = self._inodes
        return [
            prefix + name
            for name, inode in found.items()
            if known.get(prefix + name) != inode and not td.skipped_name(name)
        ]

    def _listing_changes(self, directory: str) -> list[str]:
        """Names directly in ``directory`` that are new, gone, or not the inode last seen."""
        if td.skipped_path(directory, self.root):
            return []
        known = {p: i for p, i in self._inodes.items() if os.path.dirname(p) == directory}
        found = td.list_inodes(self._real_of(directory), directory, recursive=False)
        return td.differ(known, found)

    # -- logging, once per change --------------------------------------------------------

    def _report(self, path: str, reason: str, before: dict[str, str]) -> None:
        if before.get(path) != reason:
            log.warning("skipped certificate %s: %s", printable(path), printable(reason))
        self._reported[path] = reason

    def _note_secret(self, path: str, signature: tuple[int, ...] | None, inside: bool) -> None:
        if signature is None:
            self._secrets.pop(path, None)
            return
        if self._secrets.get(path) == signature:
            return
        self._secrets[path] = signature
        if inside:
            log.warning(
                "certificate %s holds a secret key: its public key stays trusted as a public "
                "key, but the secret key must be removed from this server (keep only the "
                "public certificate in a trust directory)",
                printable(path),
            )
        else:
            log.warning(
                "%s is a secret certificate file in a trust directory: it is not read, and "
                "no key is trusted because of it; remove it from this server (a secret key "
                "belongs only on the machine that uses it)",
                printable(path),
            )


def _may_have_subdirs(st: os.stat_result) -> bool:
    """Whether a directory's link count allows subdirectories (2 = itself and its ``.``).

    Most Linux file systems count one link per subdirectory (its ``..``);
    btrfs and some others always say 1, which counts as "maybe".
    """
    return st.st_nlink != 2


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
