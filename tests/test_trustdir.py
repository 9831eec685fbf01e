"""Trust-directory reading (_trustdir) and the directory source's planning step (plan)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import zsec
from zsec import _trustdir as td
from zsec._dirsource import plan
from zsec._watch import CATCH_UP, OVERFLOW, FsEvent

from .helpers import watch_opens

ROOT = "/srv/clients"


def _plan(*items: object, changed: frozenset[str] = frozenset()) -> object:
    return plan(
        items,  # type: ignore[arg-type]
        lambda p: p if td.under(p, ROOT) else None,
        ROOT,
        closes_reported=True,
        dir_changed=lambda d: d in changed,
    )


@pytest.mark.parametrize(
    ("name", "skipped"),
    [
        ("alice.key", False),
        ("no-extension", False),
        (".hidden.key", True),
        ("..data", True),
        ("alice.key~", True),
        ("#alice.key#", True),
        ("alice.key_secret", True),
    ],
)
def test_skipped_names(name: str, skipped: bool) -> None:
    assert td.skipped_name(name) is skipped


def test_a_file_event_re_reads_the_file_and_the_last_event_decides() -> None:
    todo = _plan(
        FsEvent("created", False, f"{ROOT}/a.key"),
        FsEvent("modified", False, f"{ROOT}/a.key"),
        FsEvent("closed", False, f"{ROOT}/a.key"),
        FsEvent("created", False, f"{ROOT}/b.key"),
    )
    # a.key is complete; b.key may still be being written (no failure logged yet).
    assert todo.files == {f"{ROOT}/a.key": False, f"{ROOT}/b.key": True}  # type: ignore[attr-defined]
    assert not todo.rescan_all and not todo.links  # type: ignore[attr-defined]


def test_a_hidden_name_asks_for_every_link_to_be_compared() -> None:
    todo = _plan(FsEvent("created", True, f"{ROOT}/..data"))  # Kubernetes' swap
    assert todo.links and todo.files == {} and todo.trees == [f"{ROOT}/..data"]  # type: ignore[attr-defined]


def test_directory_events_rescan_trees_and_a_chmod_only_when_the_verdict_changed() -> None:
    todo = _plan(
        FsEvent("moved", True, f"{ROOT}/old", f"{ROOT}/new"),
        FsEvent("attrib", True, f"{ROOT}/same"),
        FsEvent("attrib", True, f"{ROOT}/opened"),
        changed=frozenset({f"{ROOT}/opened"}),
    )
    assert todo.trees == [f"{ROOT}/old", f"{ROOT}/new", f"{ROOT}/opened"]  # type: ignore[attr-defined]


def test_overflow_or_the_root_deleted_means_a_full_rescan() -> None:
    assert _plan(FsEvent("created", False, f"{ROOT}/a.key"), OVERFLOW).rescan_all  # type: ignore[attr-defined]
    assert _plan(FsEvent("deleted", True, ROOT)).rescan_all  # type: ignore[attr-defined]


def test_events_outside_the_root_are_ignored_and_catch_up_is_noted() -> None:
    todo = _plan(FsEvent("created", False, "/elsewhere/x.key"), CATCH_UP)
    assert todo.files == {} and todo.catch_up  # type: ignore[attr-defined]


def test_differ_names_new_gone_and_replaced_paths() -> None:
    assert sorted(td.differ({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 9, "d": 4})) == ["b", "c", "d"]


def test_read_cert_returns_the_problem_instead_of_logging_it(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.key")
    loaded = td.read_cert(str(tmp_path / "pipe.key"), strict=True)
    assert loaded.cert is None and loaded.problem is not None and "regular" in loaded.problem
    assert td.read_cert(str(tmp_path / "missing.key"), strict=True) == td.GONE
    cert = zsec.Cert()
    cert.save_public(tmp_path / "open.key")
    (tmp_path / "open.key").chmod(0o666)
    loaded = td.read_cert(str(tmp_path / "open.key"), strict=True)
    assert loaded.cert is None and "chmod go-w" in (loaded.problem or "")
    loaded = td.read_cert(str(tmp_path / "open.key"), strict=False)
    assert loaded.cert is not None and loaded.cert.public_key == cert.public_key


def test_a_scan_notes_secret_keys_and_secret_files(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    leaked, paired = zsec.Cert(), zsec.Cert()
    leaked.save_secret(tmp_path / "leaked.key")
    paired.save(tmp_path / "paired.key")  # paired.key and paired.key_secret
    found = td.scan(str(tmp_path), str(tmp_path), str(tmp_path), strict=True)
    assert set(found.entries) == {str(tmp_path / "leaked.key"), str(tmp_path / "paired.key")}
    assert all(c.secret_key is None for c in found.entries.values())
    assert set(found.secrets) == {str(tmp_path / "leaked.key"), str(tmp_path / "paired.key_secret")}


@pytest.mark.parametrize(
    "key",
    ["~" * 40, "%nSc1" + "0" * 35, "é" * 40],
    ids=["outside-the-alphabet", "group-above-32-bits", "not-ascii"],
)
def test_a_key_of_forty_characters_that_does_not_decode_is_refused_with_the_readers_reason(
    tmp_path: Path, key: str
) -> None:
    # The fast layout takes any 40 characters; the batch decoder must then
    # send the file to the full reader, in its own directory, for the reason.
    tmp_path.chmod(0o700)
    sub = tmp_path / "team"
    sub.mkdir(mode=0o700)
    good = zsec.Cert()
    good.save_public(sub / "good.key")
    text = (sub / "good.key").read_text().replace(good.public_txt, key)
    (sub / "bad.key").write_text(text)
    found = td.scan(str(tmp_path), str(tmp_path), str(tmp_path), strict=True)
    assert [c.public_key for c in found.entries.values()] == [good.public_key]
    assert "40 Z85 characters" in found.problems[str(sub / "bad.key")]


def test_a_file_swapped_for_a_link_after_the_listing_is_never_opened_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scan opens what its listing showed as a plain file without a stat
    # first; whoever can write the directory may swap in a link to a FIFO or
    # a device meanwhile (the listing of a large directory is read long
    # before its last file), and opening those is not harmless.
    trust = tmp_path / "trust"
    trust.mkdir(mode=0o700)
    kept = zsec.Cert()
    kept.save_public(trust / "kept.key")
    zsec.Cert().save_public(trust / "swapped.key")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (trust / "link").symlink_to(fifo)
    real_scandir = os.scandir

    def listing_then_swap(path: str) -> list[os.DirEntry[str]]:
        with real_scandir(path) as entries:
            listed = list(entries)
        os.replace(trust / "link", trust / "swapped.key")
        return listed

    monkeypatch.setattr(os, "scandir", listing_then_swap)
    with watch_opens(fifo) as opens:
        found = td.scan(str(trust), str(trust), str(trust), strict=False)
        assert opens() == 0
    assert set(found.entries) == {str(trust / "kept.key")}
    assert "not a regular file" in found.problems[str(trust / "swapped.key")]
