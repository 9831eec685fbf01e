"""TrustSource and TrustFeed: how any source of trusted keys feeds a CertStore.

A source (a directory, an etcd prefix, your own database) knows the current
set of trusted public certificates; the store knows how to publish them
atomically and tell listeners. The feed is the one narrow door between the
two: ``reset`` (the whole set), ``update`` (a change), ``set_ready``
(whether the source is in step with its truth). This is CZMQ's
``zcertstore_set_loader`` turned around: the source pushes when it knows
something changed, instead of the store asking on every lookup.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import Protocol

from ._cert import Cert


class _Sink(Protocol):
    def _feed_reset(self, entries: Mapping[str, Cert]) -> None: ...
    def _feed_update(self, put: Mapping[str, Cert], delete: Iterable[str]) -> None: ...
    def _feed_ready(self, ready: bool, reason: str) -> None: ...


class TrustFeed:
    """What a ``TrustSource`` calls to change the store it feeds; made by the store.

    Thread-safe: call it from any thread. Each call is one atomic publish:
    a lookup sees the set before the call or after it, never part of it,
    and a key present before and after a ``reset`` is never absent. Entry
    names are the source's own (a file path, an etcd key); they show up in
    ``StoreChange.sources`` so that an audit trail can say where a key came
    from. Certificates are copied without their secret key and read-only.

    The feed holds its store weakly: once the store is closed or gone,
    every call does nothing, so a source thread that outlives it is
    harmless.
    """

    __slots__ = ("__weakref__", "_sink")

    def __init__(self, sink: _SinkRef) -> None:
        self._sink = sink

    def reset(self, entries: Mapping[str, Cert]) -> None:
        """Replace the source's whole set: entry name -> public ``Cert``."""
        store = self._sink()
        if store is not None:
            store._feed_reset(entries)

    def update(self, put: Mapping[str, Cert] = {}, delete: Iterable[str] = ()) -> None:
        """Remove the entries named in ``delete``, then set those in ``put``, as one change.

        ``delete`` is a collection of names (a list, a set, dict keys), never
        one name on its own: a lone ``str`` is refused with ``ZsecTypeError``.
        """
        store = self._sink()
        if store is not None:
            store._feed_update(put, delete)

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Say whether the source is in step with its truth.

        While not ready, lookups of the source's keys return None (fail
        closed); certificates given to ``CertStore.insert`` stay trusted.
        Listeners are not told of a removal: the keys are suspended, not
        revoked. Each transition is logged once, with ``reason``.
        """
        store = self._sink()
        if store is not None:
            store._feed_ready(bool(ready), str(reason))


class _SinkRef(Protocol):
    def __call__(self) -> _Sink | None: ...


class TrustSource(abc.ABC):
    """A source of trusted public certificates that feeds a ``CertStore``.

    ``CertStore(source)`` calls ``start(feed)`` once and ``close()`` when
    the store closes (or is collected). The store is not ready, and trusts
    none of the source's keys, until the source calls
    ``feed.set_ready(True)``; fill it first with ``feed.reset``. A source
    must hold no reference to the store itself, only the feed, so that a
    store dropped without ``close()`` can still be collected.
    """

    @abc.abstractmethod
    def start(self, feed: TrustFeed) -> None:
        """Begin feeding the store (this may start threads); raise to refuse."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop feeding; idempotent."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short description for logs and events, e.g. ``"etcd 127.0.0.1:2379 /certs/"``."""

    def refresh(self) -> None:  # noqa: B027 - optional, with a default that does nothing
        """Catch up with the truth now, if the source can; ``CertStore.reload()`` calls it.

        When this returns, what the source knew at the call is in force.
        The default does nothing.
        """
