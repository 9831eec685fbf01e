"""KeyIndex: the immutable key index, driven with tables (no files, no threads)."""

from __future__ import annotations

import pytest

import zsec
from zsec._index import KeyIndex, describe_change


def _cert(name: str = "") -> zsec.Cert:
    cert = zsec.Cert()
    if name:
        cert.set_meta("name", name)
    return cert._trusted_copy()


def test_an_update_returns_a_new_index_and_leaves_the_old_one_alone() -> None:
    a = _cert("a")
    empty = KeyIndex()
    one, changed = empty.update(put={"a.key": a})
    assert changed == {a.public_key}
    assert one.table == {a.public_key: a}
    assert empty.table == {} and len(empty) == 0


def test_a_key_held_by_two_entries_stays_until_the_last_goes() -> None:
    first = _cert("first")
    second = first.dup()
    second.set_meta("name", "second")
    second = second._trusted_copy()
    index, _ = KeyIndex().reset({"a.key": first, "b.key": second})
    assert index.table[first.public_key] is first
    assert index.holders(first.public_key) == ("a.key", "b.key")
    index, changed = index.update(delete=["a.key"])
    assert index.table[first.public_key] is second and changed == {first.public_key}
    index, changed = index.update(delete=["b.key"])
    assert first.public_key not in index.table and changed == {first.public_key}
    assert index.holders(first.public_key) == ()


def test_an_inserted_certificate_wins_over_an_entry_and_outlives_a_reset() -> None:
    on_file, in_memory = _cert("file"), _cert("memory")
    same_key = zsec.Cert.from_keys(in_memory.public_key)._trusted_copy()
    index, _ = KeyIndex().insert(in_memory)
    index, _ = index.reset({"x.key": same_key, "y.key": on_file})
    assert index.table[in_memory.public_key] is in_memory
    index, changed = index.reset({})
    assert index.table == {in_memory.public_key: in_memory}
    assert changed == {on_file.public_key}


@pytest.mark.parametrize(
    ("before", "after", "added", "removed", "updated"),
    [
        ({}, {"a": "v1"}, 1, 0, 0),
        ({"a": "v1"}, {}, 0, 1, 0),
        ({"a": "v1"}, {"a": "v2"}, 0, 0, 1),
        ({"a": "v1"}, {"a": "v1"}, 0, 0, 0),  # same metadata, new object: nothing to say
        ({"a": "v1"}, {"b": "v1"}, 0, 0, 0),  # renamed: the key stays, no change
    ],
)
def test_describe_change_reports_added_removed_and_updated(
    before: dict[str, str], after: dict[str, str], added: int, removed: int, updated: int
) -> None:
    key = zsec.Cert()

    def entries(table: dict[str, str]) -> dict[str, zsec.Cert]:
        out = {}
        for name, value in table.items():
            cert = zsec.Cert.from_keys(key.public_key)
            cert.set_meta("v", value)
            out[name] = cert._trusted_copy()
        return out

    old, _ = KeyIndex().reset(entries(before))
    new, keys = old.reset(entries(after))
    change = describe_change(old, new, keys, "test")
    assert (len(change.added), len(change.removed), len(change.updated)) == (
        added,
        removed,
        updated,
    )
    assert change.store == "test"
    if change:
        assert change.sources == {key.public_key: next(iter(after or before))}


def test_a_reset_keeping_a_key_never_reports_it() -> None:
    kept, dropped, new = _cert(), _cert(), _cert()
    old, _ = KeyIndex().reset({"kept": kept, "dropped": dropped})
    index, keys = old.reset({"kept": kept, "new": new})
    change = describe_change(old, index, keys, "s")
    assert [c.public_key for c in change.added] == [new.public_key]
    assert [c.public_key for c in change.removed] == [dropped.public_key]
    assert change.sources == {new.public_key: "new", dropped.public_key: "dropped"}
    assert kept.public_key in index.table
