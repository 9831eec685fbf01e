"""Shared benchmark helpers: certificate directories, medians, ratio lines."""

from __future__ import annotations

import datetime
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import zsec

CACHE = Path(os.environ.get("ZSEC_BENCH_DIR", "/tmp/zsec-bench"))


def cert_dir(count: int, *, seed: int = 1) -> Path:
    """Return a directory of ``count`` public certificates (made once, then reused).

    Files are what ``zsec makecert`` writes: five metadata entries and a
    public key, 0644 in a 0700 directory, named ``client-N.key``.
    """
    target = CACHE / f"certs-{count}-{seed}"
    done = target / ".complete"
    if done.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o700)
    rng = random.Random(seed)
    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    for i in range(count):
        cert = zsec.Cert.from_keys(rng.randbytes(32))
        cert.set_meta("name", f"Client {i}")
        cert.set_meta("email", f"client{i}@example.org")
        cert.set_meta("organization", "Example Org")
        cert.set_meta("created-by", "zsec makecert")
        cert.set_meta("date-created", "2026-01-01 12:00:00")
        path = target / f"client-{i}.key"
        path.write_bytes(cert._render(False, now))
        path.chmod(0o644)
    done.write_text("ok\n")
    return target


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    """Run ``fn`` ``runs`` times and return the wall times in seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)
