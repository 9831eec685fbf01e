"""CertStore benchmarks: load time, change-to-visible latency, 100k scale, lookup cost.

Run: .venv/bin/python bench/bench_store.py [--runs N] [--ops N] [--skip-100k]

Every comparison runs zsec and pyzmq's zmq.auth in the same process, interleaved,
and prints medians and the ratio (zsec / pyzmq; below 1.0 means zsec is faster).
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
import time
import timeit
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import zmq.auth

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cert_dir

import zsec


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bench_load(count: int, runs: int) -> None:
    directory = cert_dir(count)
    ours, theirs = [], []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        store = zsec.CertStore(directory)
        ours.append(time.perf_counter() - start)
        assert len(store) == count
        store.close()
        gc.collect()
        start = time.perf_counter()
        certs = zmq.auth.load_certificates(str(directory))
        theirs.append(time.perf_counter() - start)
        assert len(certs) == count
    zs, py = statistics.median(ours), statistics.median(theirs)
    print(
        f"load {count} certs: zsec CertStore {zs * 1000:.1f} ms (strict checks, full "
        f"validation, watcher started), pyzmq load_certificates {py * 1000:.1f} ms; "
        f"ratio zsec/pyzmq {zs / py:.2f} (median of {runs})"
    )


def _op_expectation(
    kind: str, old: zsec.Cert | None, new: zsec.Cert | None
) -> Callable[[zsec.CertStore], bool]:
    def visible(store: zsec.CertStore) -> bool:
        gone = old is None or old.public_key not in store
        there = new is None or new.public_key in store
        return gone and there

    return visible


def bench_latency(count: int, ops: int, seed: int = 3) -> None:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="zsec-latency-"))
    try:
        directory = work / "curve"
        shutil.copytree(cert_dir(count), directory)
        directory.chmod(0o700)
        (directory / ".complete").unlink()
        files = {p.name: zsec.Cert.load(p) for p in directory.iterdir()}
        pyzmq_view = zmq.auth.load_certificates(str(directory))
        now = datetime.datetime(2026, 1, 1)
        latencies: dict[str, list[float]] = {}
        missed = 0
        pyzmq_missed = 0
        with zsec.CertStore(directory) as store:
            for i in range(ops):
                kind = rng.choice(["add", "delete", "same-size rewrite", "atomic replace"])
                name = rng.choice(sorted(files))
                old: zsec.Cert | None = files[name]
                new: zsec.Cert | None = None
                path = directory / name
                if kind == "add":
                    old, name = None, f"new-{i}.key"
                    path = directory / name
                    new = zsec.Cert.from_keys(rng.randbytes(32))
                    new.set_meta("name", f"new {i}")
                    path.write_bytes(new._render(False, now))
                elif kind == "delete":
                    path.unlink()
                elif kind == "same-size rewrite":
                    assert old is not None
                    new = zsec.Cert.from_keys(rng.randbytes(32))
                    for key in old.meta_keys():
                        new.set_meta(key, old.meta(key) or "")
                    data = new._render(False, now)
                    stat = path.stat()
                    assert len(data) == stat.st_size
                    with open(path, "r+b") as handle:
                        handle.write(data)
                    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
                else:
                    new = zsec.Cert.from_keys(rng.randbytes(32))
                    new.set_meta("name", f"replacement {i}")
                    tmp = directory / f".{name}.tmp"
                    tmp.write_bytes(new._render(False, now))
                    os.replace(tmp, path)
                start = time.perf_counter()
                visible = _op_expectation(kind, old, new)
                while not visible(store):
                    if time.perf_counter() - start > 2.0:
                        missed += 1
                        break
                    time.sleep(0.0002)
                else:
                    latencies.setdefault(kind, []).append(time.perf_counter() - start)
                if new is not None:
                    files[name] = new
                    pyzmq_missed += new.public_txt.encode() not in pyzmq_view
                else:
                    del files[name]
                    pyzmq_missed += old is not None and old.public_txt.encode() in pyzmq_view
            expected = {c.public_key for c in files.values()}
            final_ok = {c.public_key for c in store} == expected
        every = sorted(v for values in latencies.values() for v in values)
        p50 = every[len(every) // 2] * 1000
        p99 = every[min(len(every) - 1, int(len(every) * 0.99))] * 1000
        print(
            f"change-to-visible with {count} certs, {ops} random ops: p50 {p50:.2f} ms, "
            f"p99 {p99:.2f} ms, max {every[-1] * 1000:.2f} ms, missed {missed}, "
            f"final state exact: {final_ok}"
        )
        for kind, values in sorted(latencies.items()):
            values.sort()
            print(
                f"  {kind:18s} n={len(values):3d} p50 {values[len(values) // 2] * 1000:.2f} ms"
                f"  max {values[-1] * 1000:.2f} ms"
            )
        print(f"  pyzmq zmq.auth (loads once): changes not reflected {pyzmq_missed}/{ops}")
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
    parser.add_argument("--skip-100k", action="store_true")
    args = parser.parse_args()
    print(f"zsec {zsec.__version__}, pyzmq {zmq.pyzmq_version()}, python {sys.version.split()[0]}")
    bench_load(10_000, args.runs)
    bench_latency(10_000, args.ops)
    if not args.skip_100k:
        bench_scale(100_000, max(3, args.runs // 3))
        bench_lookup([100, 100_000])
    else:
        bench_lookup([100, 10_000])


if __name__ == "__main__":
    main()
