"""KeyIndex: which public keys a store trusts, as an immutable value.

Rules of this file: no I/O, no logging, no threads, no clock. Every
operation returns a new ``KeyIndex`` and the set of keys whose answer may
have changed; the store publishes the new value with one assignment, so a
lookup sees the whole of one index or the whole of the next, never half.

Theory of operation. A trust source names its entries (a file path, an etcd
key); each entry holds one public certificate. Several entries may hold the
same key: the key stays trusted until the last of them goes, and the first
holder's certificate is the one handed out. Certificates given to
``insert`` sit beside the source's entries and win over them: they are the
program's own decision and no file change undoes it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from ._cert import Cert

# key -> the entry holding it, or a tuple of entries when several do (rare).
_Holders = dict[bytes, "str | tuple[str, ...]"]


@dataclass(frozen=True)
class StoreChange:
    """What one update did to a store; passed to ``on_change`` and ``subscribe`` listeners.

    ``added`` and ``removed`` hold certificates whose keys became trusted or
    stopped being trusted; ``updated`` holds keys still trusted whose
    certificate (metadata) changed. ``store`` describes the store's source
    (``"directory /etc/zsec/clients"``, ``"memory"``) and ``sources`` maps a
    public key to the entry that held it (a file path, an etcd key) where
    one did, so that an audit trail can say where a change came from.
    """

    added: tuple[Cert, ...] = ()
    removed: tuple[Cert, ...] = ()
    updated: tuple[Cert, ...] = ()
    store: str = ""
    sources: Mapping[bytes, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)


class KeyIndex:
    """An immutable index of trusted certificates: source entries plus inserted ones.

    ``table`` is the lookup dict (public key -> Cert); callers must not
    change it. Build new values with ``reset``, ``update`` and ``insert``.
    """

    __slots__ = ("_entries", "_holders", "_inserted", "_primary", "table")

    def __init__(
        self,
        entries: dict[str, Cert] | None = None,
        holders: _Holders | None = None,
        primary: dict[bytes, Cert] | None = None,
        inserted: dict[bytes, Cert] | None = None,
    ) -> None:
        self._entries: dict[str, Cert] = {} if entries is None else entries
        self._holders: _Holders = {} if holders is None else holders
        # key -> its first holder's certificate: the table when nothing is inserted.
        self._primary: dict[bytes, Cert] = {} if primary is None else primary
        self._inserted: dict[bytes, Cert] = {} if inserted is None else inserted
        if self._inserted:
            table = dict(self._primary)
            table.update(self._inserted)
            self.table: dict[bytes, Cert] = table
        else:
            self.table = self._primary

    # -- reading ------------------------------------------------------------

    @property
    def entries(self) -> Mapping[str, Cert]:
        """The source's entries: name -> certificate."""
        return self._entries

    @property
    def inserted(self) -> Mapping[bytes, Cert]:
        """Certificates given to ``insert``: key -> certificate."""
        return self._inserted

    def holders(self, key: bytes) -> tuple[str, ...]:
        """The entries holding ``key``, first (the one handed out) first."""
        held = self._holders.get(key)
        if held is None:
            return ()
        return (held,) if isinstance(held, str) else held

    def __len__(self) -> int:
        return len(self.table)

    # -- new values ------------------------------------------------------------

    def reset(self, entries: Mapping[str, Cert]) -> tuple[KeyIndex, set[bytes]]:
        """The index with the source's entries replaced by ``entries`` as a whole.

        A ``dict`` is kept as it is (no copy): the caller must not change it.
        """
        mine = entries if type(entries) is dict else dict(entries)
        keys = [cert.public_key for cert in mine.values()]
        holders: _Holders = dict(zip(keys, mine, strict=True))
        primary = dict(zip(keys, mine.values(), strict=True))
        if len(holders) != len(mine):  # a key held by several entries: the first wins
            holders, primary = {}, {}
            for name, cert in mine.items():
                key = cert.public_key
                held = holders.get(key)
                if held is None:
                    holders[key] = name
                    primary[key] = cert
                else:
                    holders[key] = (held, name) if isinstance(held, str) else (*held, name)
        new = KeyIndex(mine, holders, primary, self._inserted)
        return new, _differing(self.table, new.table)

    def update(
        self, put: Mapping[str, Cert] = {}, delete: Iterable[str] = ()
    ) -> tuple[KeyIndex, set[bytes]]:
        """The index with entries in ``delete`` removed, then those in ``put`` set."""
        entries = dict(self._entries)
        holders = dict(self._holders)
        primary = dict(self._primary)
        touched: set[bytes] = set()
        for name in (*delete, *put):
            old = entries.pop(name, None)
            if old is not None:
                touched.add(_drop(holders, primary, entries, old.public_key, name))
        for name, cert in put.items():
            entries[name] = cert
            key = cert.public_key
            touched.add(key)
            held = holders.get(key)
            if held is None:
                holders[key] = name
                primary[key] = cert
            else:
                holders[key] = (held, name) if isinstance(held, str) else (*held, name)
        new = KeyIndex(entries, holders, primary, self._inserted)
        return new, {k for k in touched if self.table.get(k) is not new.table.get(k)}

    def insert(self, cert: Cert) -> tuple[KeyIndex, set[bytes]]:
        """The index with ``cert`` inserted (it replaces an earlier insert of its key)."""
        inserted = dict(self._inserted)
        inserted[cert.public_key] = cert
        new = KeyIndex(self._entries, self._holders, self._primary, inserted)
        return new, {cert.public_key}

    def without_entries(self) -> KeyIndex:
        """The index keeping only inserted certificates."""
        return KeyIndex(inserted=self._inserted)


def _drop(
    holders: _Holders, primary: dict[bytes, Cert], entries: dict[str, Cert], key: bytes, name: str
) -> bytes:
    held = holders[key]
    if isinstance(held, str):
        del holders[key]
        del primary[key]
        return key
    rest = tuple(n for n in held if n != name)
    holders[key] = rest[0] if len(rest) == 1 else rest
    primary[key] = entries[rest[0]]
    return key


def _differing(old: Mapping[bytes, Cert], new: Mapping[bytes, Cert]) -> set[bytes]:
    if not old:
        return set(new)
    changed = {k for k, cert in new.items() if old.get(k) is not cert}
    changed.update(k for k in old if k not in new)
    return changed


def describe_change(
    old: KeyIndex, new: KeyIndex, keys: Collection[bytes], store: str
) -> StoreChange:
    """What moving from ``old`` to ``new`` did to ``keys``, as a ``StoreChange``.

    A key whose certificate object changed but whose metadata did not (a
    file rewritten with the same content) is not reported.
    """
    added: list[Cert] = []
    removed: list[Cert] = []
    updated: list[Cert] = []
    sources: dict[bytes, str] = {}
    for key in keys:
        before, after = old.table.get(key), new.table.get(key)
        if after is None:
            if before is None:
                continue
            removed.append(before)
            where = old
        elif before is None:
            added.append(after)
            where = new
        elif before is not after and before.metadata != after.metadata:
            updated.append(after)
            where = new
        else:
            continue
        if key not in where.inserted:
            held = where.holders(key)
            if held:
                sources[key] = held[0]
    return StoreChange(tuple(added), tuple(removed), tuple(updated), store, sources)
