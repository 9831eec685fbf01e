"""CertStore benchmarks: load time, change-to-visible latency, symlink swaps, 100k scale, lookups.

Run: .venv/bin/python bench/bench_store.py [--runs N] [--ops N] [--swaps N] [--skip-100k]

Every comparison runs zsec and pyzmq's zmq.auth in the same process, interleaved,
and prints medians and the ratio (zsec / pyzmq; below 1.0 means zsec is faster).
Only public API is used: changes are timed both as a lookup sees them and as
the store publishes them (a subscribe() listener stamps every StoreChange).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import timeit
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import zmq.auth

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cert_dir

import zsec

_NOW = datetime.datetime(2026, 1, 1)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _public_bytes(cert: zsec.Cert, scratch: Path) -> bytes:
    """The bytes ``save_public`` writes for ``cert`` (to write them in place elsewhere)."""
    path = scratch / "render.key"
    cert.save_public(path, now=_NOW)
    return path.read_bytes()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


class _Recorder:
    """A store listener that stamps every change with the time it was delivered."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, zsec.StoreChange]] = []

    def __call__(self, change: zsec.StoreChange) -> None:
        self.changes.append((time.perf_counter(), change))

    def first(self, since: int, test: Callable[[zsec.StoreChange], bool]) -> float | None:
        for stamp, change in self.changes[since:]:
            if test(change):
                return stamp
        return None


def bench_load(count: int, runs: int) -> None:
    directory = cert_dir(count)
    ours, theirs = [], []

    def run_ours() -> None:
        gc.collect()
        start = time.perf_counter()
        store = zsec.CertStore(directory)
        ours.append(time.perf_counter() - start)
        assert len(store) == count
        store.close()

    def run_theirs() -> None:
        gc.collect()
        start = time.perf_counter()
        certs = zmq.auth.load_certificates(str(directory))
        theirs.append(time.perf_counter() - start)
        assert len(certs) == count

    zmq.auth.load_certificates(str(directory))  # warm the page cache for both
    for i in range(runs):
        # Alternate who goes first: the second reads files the first just cached.
        for step in (run_ours, run_theirs) if i % 2 == 0 else (run_theirs, run_ours):
            step()
    zs, py = statistics.median(ours), statistics.median(theirs)
    ratios = sorted(o / t for o, t in zip(ours, theirs, strict=True))
    print(
        f"load {count} certs: zsec CertStore {zs * 1000:.1f} ms (strict checks, full "
        f"validation, watcher started), pyzmq load_certificates {py * 1000:.1f} ms; "
        f"ratio zsec/pyzmq {zs / py:.2f} (median of {runs}; paired ratios "
        f"{ratios[0]:.2f}-{ratios[-1]:.2f})"
    )
    # The same in CPU time, which other processes on a busy machine do not inflate.
    ours_cpu, theirs_cpu = [], []
    for _ in range(runs):
        gc.collect()
        start = time.process_time()
        store = zsec.CertStore(directory)
        ours_cpu.append(time.process_time() - start)
        store.close()  # not timed, as in the wall-clock figures
        gc.collect()
        start = time.process_time()
        zmq.auth.load_certificates(str(directory))
        theirs_cpu.append(time.process_time() - start)
    zc, pc = statistics.median(ours_cpu), statistics.median(theirs_cpu)
    print(
        f"  in CPU time: zsec {zc * 1000:.1f} ms, pyzmq {pc * 1000:.1f} ms, ratio {zc / pc:.2f}; "
        f"machine load factor (pyzmq wall / CPU) {py / pc:.1f}"
    )


def bench_latency(count: int, ops: int, *, via_symlink: bool, seed: int = 3) -> None:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="zsec-latency-"))
    try:
        scratch = work / "scratch"
        scratch.mkdir()
        directory = work / "curve"
        shutil.copytree(cert_dir(count), directory)
        directory.chmod(0o700)
        (directory / ".complete").unlink()
        files = {p.name: zsec.Cert.load(p) for p in directory.iterdir()}
        pyzmq_view = zmq.auth.load_certificates(str(directory))
        location = directory
        if via_symlink:
            location = work / "current"
            location.symlink_to(directory)
        published: dict[str, list[float]] = {}
        looked: list[float] = []
        missed = 0
        pyzmq_missed = 0
        recorder = _Recorder()
        with zsec.CertStore(location, on_change=recorder) as store:
            for i in range(ops):
                kind = rng.choice(["add", "delete", "same-size rewrite", "atomic replace"])
                name = rng.choice(sorted(files))
                old: zsec.Cert | None = files[name]
                new: zsec.Cert | None = None
                path = directory / name
                data = b""
                if kind == "add":
                    old, name = None, f"new-{i}.key"
                    path = directory / name
                    new = zsec.Cert.from_keys(rng.randbytes(32))
                    new.set_meta("name", f"new {i}")
                    data = _public_bytes(new, scratch)
                elif kind == "same-size rewrite":
                    assert old is not None
                    new = zsec.Cert.from_keys(rng.randbytes(32))
                    for key in old.meta_keys():
                        new.set_meta(key, old.meta(key) or "")
                    data = _public_bytes(new, scratch)
                elif kind == "atomic replace":
                    new = zsec.Cert.from_keys(rng.randbytes(32))
                    new.set_meta("name", f"replacement {i}")
                    data = _public_bytes(new, scratch)
                mark = len(recorder.changes)
                start = time.perf_counter()
                if kind == "add":
                    path.write_bytes(data)
                elif kind == "delete":
                    path.unlink()
                elif kind == "same-size rewrite":
                    stat = path.stat()
                    assert len(data) == stat.st_size
                    with open(path, "r+b") as handle:
                        handle.write(data)
                    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
                else:
                    tmp = directory / f".{name}.tmp"
                    tmp.write_bytes(data)
                    os.replace(tmp, path)
                done = time.perf_counter()

                def seen(change: zsec.StoreChange, o: zsec.Cert | None = old) -> bool:
                    return o is None or any(c.public_key == o.public_key for c in change.removed)

                def shown(change: zsec.StoreChange, n: zsec.Cert | None = new) -> bool:
                    return n is None or any(c.public_key == n.public_key for c in change.added)

                # As a lookup sees it (a miss may wait for the store to catch up).
                while not (
                    (old is None or old.public_key not in store)
                    and (new is None or new.public_key in store)
                ):
                    if time.perf_counter() - done > 2.0:
                        break
                    time.sleep(0.0002)
                looked.append(time.perf_counter() - start)
                # As the store published it, from the watcher alone.
                while True:
                    gone_at = recorder.first(mark, seen) if old is not None else start
                    there_at = recorder.first(mark, shown) if new is not None else start
                    if gone_at is not None and there_at is not None:
                        published.setdefault(kind, []).append(max(gone_at, there_at) - start)
                        break
                    if time.perf_counter() - done > 2.0:
                        missed += 1
                        break
                    time.sleep(0.0002)
                if new is not None:
                    files[name] = new
                    pyzmq_missed += new.public_txt.encode() not in pyzmq_view
                else:
                    del files[name]
                    pyzmq_missed += old is not None and old.public_txt.encode() in pyzmq_view
            expected = {c.public_key for c in files.values()}
            final_ok = {c.public_key for c in store} == expected
        every = [v for values in published.values() for v in values]
        where = "root is a symlink" if via_symlink else "plain root"
        print(
            f"change-to-visible with {count} certs, {ops} random ops, {where}, published by "
            f"the watcher: p50 {_pct(every, 0.5):.2f} ms, p99 {_pct(every, 0.99):.2f} ms, "
            f"max {max(every) * 1000:.2f} ms, missed {missed}, final state exact: {final_ok}"
        )
        for kind, values in sorted(published.items()):
            print(
                f"  {kind:18s} n={len(values):3d} p50 {_pct(values, 0.5):.2f} ms"
                f"  max {max(values) * 1000:.2f} ms"
            )
        print(
            f"  as lookups see it: p50 {_pct(looked, 0.5):.2f} ms, p99 {_pct(looked, 0.99):.2f} ms"
        )
        print(f"  pyzmq zmq.auth (loads once): changes not reflected {pyzmq_missed}/{ops}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_swap(count: int, swaps: int, period: float = 0.05) -> None:
    """Re-point the root symlink between two directories every ``period`` seconds.

    Both directories hold the same ``count`` kept keys (in files of other
    names and metadata) plus 10% keys of their own. Counted: lookups of kept
    keys that missed (a reader thread, through the public lookup), kept keys
    ever reported removed, and the time from each swap to the store
    publishing it (the new side's own keys added).
    """
    rng = random.Random(5)
    work = Path(tempfile.mkdtemp(prefix="zsec-swap-"))
    try:
        kept = [zsec.Cert.from_keys(rng.randbytes(32)) for _ in range(count)]
        own = {
            side: [zsec.Cert.from_keys(rng.randbytes(32)) for _ in range(count // 10)]
            for side in "ab"
        }
        sides = {}
        for side in "ab":
            directory = work / side
            directory.mkdir(mode=0o700)
            for i, cert in enumerate(kept):
                copy = cert.dup()
                copy.set_meta("side", side)
                copy.save_public(directory / f"{side}-kept-{i}.key", now=_NOW)
            for i, cert in enumerate(own[side]):
                cert.save_public(directory / f"{side}-own-{i}.key", now=_NOW)
            sides[side] = directory
        link = work / "clients"
        link.symlink_to(sides["a"])
        kept_keys = {c.public_key for c in kept}
        markers = {own[side][0].public_key: side for side in "ab"}
        # Only what is measured is kept: holding every StoreChange (1,100
        # certificates each) would grow the heap until the collector's full
        # passes took 100 ms, a pause of this script, not of the store.
        seen: list[tuple[float, set[bytes]]] = []
        removed_kept = 0

        def recorder(change: zsec.StoreChange) -> None:
            nonlocal removed_kept
            stamp = time.perf_counter()
            seen.append((stamp, {c.public_key for c in change.added if c.public_key in markers}))
            removed_kept += sum(1 for c in change.removed if c.public_key in kept_keys)

        misses = [0, 0]
        stop = threading.Event()
        with zsec.CertStore(link, on_change=recorder) as store:

            def reader() -> None:
                keys = list(kept_keys)
                while not stop.is_set():
                    for key in rng.sample(keys, 50):
                        misses[0] += 1
                        if store.lookup(key) is None:
                            misses[1] += 1
                    time.sleep(0.0005)

            thread = threading.Thread(target=reader)
            thread.start()
            followed: list[float] = []
            unfollowed = 0
            side = "a"
            swapped_at: list[tuple[float, str, int]] = []
            next_swap = time.perf_counter()
            for _ in range(swaps):
                side = "b" if side == "a" else "a"
                next_swap += period
                time.sleep(max(0.0, next_swap - time.perf_counter()))
                tmp = work / ".clients.tmp"
                tmp.symlink_to(sides[side])
                mark = len(seen)
                start = time.perf_counter()
                os.replace(tmp, link)
                swapped_at.append((start, side, mark))
            deadline = time.perf_counter() + 5
            final = {c.public_key for c in own[side]} | kept_keys
            while {c.public_key for c in store} != final and time.perf_counter() < deadline:
                time.sleep(0.001)
            stop.set()
            thread.join()
            final_ok = {c.public_key for c in store} == final
        for start, side, mark in swapped_at:
            marker = own[side][0].public_key
            at = next((stamp for stamp, added in seen[mark:] if marker in added), None)
            if at is None:
                unfollowed += 1
            else:
                followed.append(at - start)
        print(
            f"symlink swap every {period * 1000:.0f} ms, {swaps} swaps, {count} kept keys + "
            f"{count // 10} own per side: swap-to-published p50 {_pct(followed, 0.5):.1f} ms, "
            f"p99 {_pct(followed, 0.99):.1f} ms, max {max(followed) * 1000:.1f} ms "
            f"({unfollowed} swaps overtaken by the next one); kept keys reported removed: "
            f"{removed_kept}; kept-key lookups that missed: {misses[1]} of {misses[0]}; "
            f"final state exact: {final_ok}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_scale(count: int, runs: int) -> None:
    directory = cert_dir(count)
    times = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        store = zsec.CertStore(directory)
        times.append(time.perf_counter() - start)
        store.close()
        del store
    gc.collect()
    rss_before = _rss_kib()
    store = zsec.CertStore(directory)
    gc.collect()
    rss_after = _rss_kib()
    store.close()
    del store
    gc.collect()
    tracemalloc.start()
    store = zsec.CertStore(directory)
    traced, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"load {count} certs: median {statistics.median(times):.2f} s of {runs}; memory "
        f"{traced / count:.0f} B/cert traced by tracemalloc, "
        f"{(rss_after - rss_before) * 1024 / count:.0f} B/cert by RSS growth"
    )
    store.close()


def _time_lookups(store: zsec.CertStore, keys: list[bytes]) -> float:
    lookup = store.lookup
    return min(timeit.repeat(lambda: [lookup(k) for k in keys], number=20, repeat=7))


def bench_lookup(sizes: list[int]) -> None:
    results = {}
    for size in sizes:
        directory = cert_dir(size)
        with zsec.CertStore(directory) as store:
            present = [c.public_key for c in store]
            rng = random.Random(1)
            sample = [rng.choice(present) for _ in range(1000)]
            absent = [rng.randbytes(32) for _ in range(1000)]
            hit = _time_lookups(store, sample)
            miss = _time_lookups(store, absent)
            results[size] = (hit / 20000 * 1e9, miss / 20000 * 1e9)
    base = results[sizes[0]]
    for size, (hit, miss) in results.items():
        print(
            f"lookup with {size} certs: hit {hit:.0f} ns, miss {miss:.0f} ns "
            f"(x{hit / base[0]:.2f} / x{miss / base[1]:.2f} of {sizes[0]})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--ops", type=int, default=400)
    parser.add_argument("--swaps", type=int, default=100)
    parser.add_argument("--swap-certs", type=int, default=1000)
    parser.add_argument("--skip-100k", action="store_true")
    parser.add_argument("--only", choices=["load", "latency", "swap", "scale", "lookup"])
    args = parser.parse_args()
    print(f"zsec {zsec.__version__}, pyzmq {zmq.pyzmq_version()}, python {sys.version.split()[0]}")
    if args.only in (None, "load"):
        bench_load(10_000, args.runs)
    if args.only in (None, "latency"):
        bench_latency(10_000, args.ops, via_symlink=False)
        bench_latency(10_000, args.ops, via_symlink=True)
    if args.only in (None, "swap"):
        bench_swap(args.swap_certs, args.swaps)
    if args.only in (None, "scale") and not args.skip_100k:
        bench_scale(100_000, max(3, args.runs // 3))
    if args.only in (None, "lookup"):
        bench_lookup([100, 10_000] if args.skip_100k else [100, 100_000])


if __name__ == "__main__":
    main()
