"""Everything that knows watchdog: observers, their events, overflow, the polling fallback.

Nothing else in zsec imports watchdog. A ``Watch`` turns file-system
activity under one directory into items on a queue (``FsEvent`` values and
the ``OVERFLOW`` signal); it never reads a certificate and never touches a
store. Events are only hints to re-read the disk, so a duplicate costs a
re-read and is otherwise harmless; a lost one is what the rest of the
machinery guards against.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from typing import Any, NamedTuple

log = logging.getLogger("zsec.store")

#: Seconds between two looks of the polling observer.
POLLING_SECONDS = 0.5


class FsEvent(NamedTuple):
    """One file-system event: ``kind`` is created, deleted, modified, closed, attrib or moved."""

    kind: str
    is_dir: bool
    src: str
    dest: str = ""


class Signal:
    """A named queue item that is not a file event (h11-style sentinel)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: The kernel dropped events: only a full rescan is sure to be right.
OVERFLOW = Signal("OVERFLOW")
#: A lookup missed while the directory looked newer than the last sync.
CATCH_UP = Signal("CATCH_UP")
#: The worker must exit.
STOP = Signal("STOP")

Item = FsEvent | Signal
Queue = queue.SimpleQueue  # of Item


class _Handler:
    """Turns watchdog's events into ``FsEvent`` items on a queue; never touches a store.

    With ``only`` set, passes just the events that name it (the parent
    directory's watch cares about the root's own name only). Once ``tapped``,
    the same events arrive earlier through ``_tap`` and watchdog's copies,
    which come through the dispatcher later, are dropped.
    """

    def __init__(self, events: queue.SimpleQueue[Any], only: str | None = None) -> None:
        self.events = events
        self.only = only
        self.tapped = False

    def dispatch(self, event: Any) -> None:
        if self.tapped:
            return
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(getattr(event, "dest_path", "") or "")
        self.emit(FsEvent(kind, bool(event.is_directory), src, dest))

    def emit(self, item: FsEvent) -> None:
        if self.only is not None and self.only not in (
            os.path.basename(item.src),
            os.path.basename(item.dest),
        ):
            return
        self.events.put(item)


class Watch:
    """One observer following a directory tree, plus (natively) the root's own name.

    ``start`` tries inotify and falls back to polling (``kind`` says which).
    The second, non-recursive watch on the parent directory reports a
    rename or re-pointed symlink of the root name at once; the worker's
    periodic root check is the backstop for everything else.
    """

    def __init__(self, events: queue.SimpleQueue[Any], *, polling: bool) -> None:
        self.events = events
        self.polling = polling
        self.kind = "none"
        #: Whether a finished write is reported (inotify's IN_CLOSE_WRITE).
        self.reports_closes = False
        self.observer: Any = None
        #: Whether directories below the root are watched too.
        self.recursive = True

    def start(
        self,
        real_dir: str,
        root_name_dir: tuple[str, str] | None = None,
        *,
        recursive: bool = True,
    ) -> None:
        """Watch ``real_dir`` and, natively, ``name`` in ``parent`` if given.

        ``recursive=False`` watches the directory alone (natively; polling
        always covers the tree), which spares watchdog a walk of every
        entry to find subdirectories when the caller knows there are none.
        A subdirectory created later is still reported, as an event on
        ``real_dir``: the caller must then start a recursive watch.
        """
        handler = _Handler(self.events)
        observer: Any = None
        if not self.polling:
            try:
                from watchdog.observers import Observer

                observer = Observer()
                _schedule(observer, handler, real_dir, recursive=recursive)
                self.recursive = recursive
                parent: _Handler | None = None
                if root_name_dir is not None:
                    parent = _Handler(self.events, only=root_name_dir[1])
                    try:
                        _schedule(observer, parent, root_name_dir[0], recursive=False)
                    except OSError:
                        parent = None  # the periodic root check still covers a swap
                observer.start()
                hook_overflow(observer, self.events)
                handlers = {real_dir: handler}
                if parent is not None and root_name_dir is not None:
                    handlers[root_name_dir[0]] = parent
                _tap(observer, handlers)
                self.kind = "native"
                self.reports_closes = _reports_closes(observer)
            except Exception as exc:  # noqa: BLE001 - any failure means: poll instead
                log.warning(
                    "cannot watch %s natively (%s); polling every %.1fs instead",
                    real_dir,
                    exc,
                    POLLING_SECONDS,
                )
                stop_observer(observer)
                observer = None
        if observer is None:
            from watchdog.observers.polling import PollingObserverVFS

            # watchdog's snapshots compare mtime and size, which a same-size
            # rewrite with the old mtime restored fools; ctime cannot be set
            # back, so poll with the later of the two as "mtime".
            observer = PollingObserverVFS(
                stat=_stat_with_ctime, listdir=os.scandir, polling_interval=POLLING_SECONDS
            )
            _schedule(observer, handler, real_dir, recursive=True)
            observer.start()
            self.recursive = True
            self.kind = "polling"
            self.reports_closes = False
        self.observer = observer
        _live.add(self)

    def alive(self) -> bool:
        return self.observer is not None and bool(self.observer.is_alive())

    def stop(self, *, wait: bool = True) -> None:
        """Stop the observer threads (waiting for them unless ``wait`` is False); idempotent."""
        _live.discard(self)
        observer, self.observer = self.observer, None
        if observer is None:
            return
        if wait:
            stop_observer(observer)
        else:
            threading.Thread(target=stop_observer, args=(observer,), daemon=True).start()


def _schedule(observer: Any, handler: _Handler, path: str, *, recursive: bool) -> None:
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
        observer.schedule(handler, path, recursive=recursive, event_filter=wanted)
    except TypeError:  # watchdog before 4.0 has no event_filter
        observer.schedule(handler, path, recursive=recursive)


def _stat_with_ctime(path: str) -> os.stat_result:
    st = os.stat(path)
    if st.st_ctime_ns <= st.st_mtime_ns:
        return st
    return os.stat_result(
        tuple(st), {"st_mtime": st.st_ctime, "st_mtime_ns": st.st_ctime_ns, "st_ctime": st.st_ctime}
    )


def _reports_closes(observer: Any) -> bool:
    from watchdog import events as ev

    return hasattr(ev, "FileClosedEvent") and "Inotify" in type(observer).__name__


def stop_observer(observer: Any) -> None:
    """Stop a watchdog observer and wait for it (not when called from one of its threads)."""
    if observer is None:
        return
    try:
        observer.stop()
        if observer.is_alive() and observer is not threading.current_thread():
            observer.join(timeout=5)
    except Exception:
        log.debug("watchdog observer did not stop cleanly", exc_info=True)


# -- raw inotify events, without watchdog's wait for a matching move ------------------
#
# watchdog holds every IN_MOVED_FROM for 0.5 s to pair it with its IN_MOVED_TO,
# and its queue is first-in first-out: a file moved out of the directory would
# stay trusted for half a second, and every change behind it would wait too.
# The watch group's on_event sees each kernel event as it is read, so the tap
# passes it on at once (a move is a deletion of its source and a creation of
# its destination, which is all a store needs) and the handler drops the
# late copies. watchdog keeps doing its own bookkeeping (moving watches).


def _tap(observer: Any, handlers: dict[str, _Handler]) -> bool:
    """Pass each emitter's raw inotify events straight to its handler; whether all are in."""
    tapped = 0
    emitters = list(getattr(observer, "emitters", ()))
    for emitter in emitters:
        group = getattr(emitter, "_inotify", None)
        original = getattr(group, "on_event", None)
        source_path = getattr(group, "_build_event_source_path", None)
        handler = handlers.get(os.fsdecode(getattr(emitter.watch, "path", "")))
        if handler is None or not callable(original) or not callable(source_path):
            continue

        def tapped_on_event(
            event: Any, original: Any = original, source_path: Any = source_path, h: Any = handler
        ) -> None:
            path = source_path(event)
            original(event)
            if path is not None:
                item = _raw_event(event, os.fsdecode(path))
                if item is not None:
                    h.emit(item)

        group.on_event = tapped_on_event  # type: ignore[union-attr]
        handler.tapped = True
        tapped += 1
    return bool(emitters) and tapped == len(emitters)


def _raw_event(event: Any, path: str) -> FsEvent | None:
    is_dir = bool(event.is_directory)
    if event.is_moved_from or event.is_delete or event.is_delete_self or event.is_move_self:
        return FsEvent("deleted", is_dir, path)
    if event.is_moved_to or event.is_create:
        return FsEvent("created", is_dir, path)
    if event.is_modify:
        return FsEvent("modified", is_dir, path)
    if event.is_close_write:
        return FsEvent("closed", is_dir, path)
    if event.is_attrib:
        return FsEvent("attrib", is_dir, path)
    return None


# -- lost events --------------------------------------------------------------------
#
# When the kernel's inotify queue overflows, events are lost and only a full
# rescan is right. Three signals say so, because none is enough alone:
#   1. hook_overflow wraps the watch group's on_queue_overflow (watchdog 7.x):
#      direct and immune to logging configuration, but it reaches two private
#      levels into watchdog and a release may move them;
#   2. _OverflowListener hears watchdog's log record about the overflow, which
#      survives such a refactoring but not an application that silences
#      watchdog's loggers;
#   3. the store's periodic audit (names and inodes, no file read) catches
#      whatever both missed, within audit_interval.
# A spurious OVERFLOW costs one rescan; a missed one could keep a revoked key.


def hook_overflow(observer: Any, events: queue.SimpleQueue[Any]) -> bool:
    """Have watchdog's inotify overflow handler put ``OVERFLOW`` on the queue; whether it is in."""
    hooked = False
    for emitter in list(getattr(observer, "emitters", ())):
        group = getattr(emitter, "_inotify", None)
        original = getattr(group, "on_queue_overflow", None)
        if not callable(original):
            continue

        def on_overflow(original: Any = original) -> None:
            original()
            events.put(OVERFLOW)

        group.on_queue_overflow = on_overflow  # type: ignore[union-attr]
        hooked = True
    return hooked


# Watches to resynchronise when watchdog logs an overflow (signal 2).
_live: weakref.WeakSet[Watch] = weakref.WeakSet()


class _OverflowListener(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "overflow" in str(record.msg).lower():
            for watch in list(_live):
                watch.events.put(OVERFLOW)
        return True


for _name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
    logging.getLogger(_name).addFilter(_OverflowListener())
