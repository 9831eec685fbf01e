"""Fleet benchmarks on a real local etcd: load, revocation latency across processes, resume.

Run: .venv/bin/python bench/bench_fleet.py [--runs N] [--servers N] [--revocations N]
                                            [--changes N] [--skip-100k] [--parts load,revoke,resume]

1. load: a CertStore following an etcd prefix of 10,000 and 100,000 certificates
   (from start to ready) against the same certificates in a directory store,
   interleaved, medians and the ratio (etcd / directory).
2. revocation latency: N server processes follow etcd; one ``zsec trust remove``
   (in-process CLI call: connect, one transaction) is timed to the moment each
   server's store stops trusting the key (its listener runs right after the new
   set is in force). Clock: CLOCK_MONOTONIC, shared by all processes on Linux.
   Goal: p99 under 50 ms with 10 servers.
3. resume: a follower is cut off from etcd (a TCP forwarder drops the connection),
   1,000 changes are made, the cut is healed; time to the exact set, and whether
   a full reload happened (goal: none missed, no reload). Then the same after a
   compaction (a reload is expected).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import cert_dir

import zsec
from tests.etcd_server import EtcdServer
from tests.helpers import TcpCutter
from zsec._etcd import EtcdSettings
from zsec.cli import main as zsec_main

ROOT = Path(__file__).resolve().parent.parent


def fill(server: EtcdServer, prefix: str, directory: Path) -> int:
    """Put every certificate file of ``directory`` under ``prefix``, 128 per transaction."""
    files = sorted(p for p in directory.iterdir() if p.suffix == ".key")
    with EtcdSettings((server.endpoint,), timeout=60).connect() as conn:
        batch: dict[bytes, bytes] = {}
        for path in files:
            data = path.read_bytes()
            cert = zsec.Cert.from_bytes(data)
            batch[f"{prefix}{cert.public_txt}".encode()] = data
            if len(batch) == 128:
                conn.txn(batch)
                batch = {}
        if batch:
            conn.txn(batch)
    return len(files)


def bench_load(server: EtcdServer, count: int, runs: int) -> None:
    directory = cert_dir(count)
    prefix = f"/load{count}/"
    start = time.perf_counter()
    fill(server, prefix, directory)
    filled = time.perf_counter() - start
    ours, theirs = [], []
    for _ in range(runs):
        start = time.perf_counter()
        store = zsec.CertStore(zsec.EtcdSource(server.endpoint, prefix=prefix, timeout=60))
        assert store.wait_ready(120)
        ours.append(time.perf_counter() - start)
        assert len(store) == count, len(store)
        store.close()
        start = time.perf_counter()
        store = zsec.CertStore(directory)
        theirs.append(time.perf_counter() - start)
        assert len(store) == count
        store.close()
    e, d = statistics.median(ours), statistics.median(theirs)
    print(
        f"load {count} certs: etcd source {e * 1000:.0f} ms (start to ready), directory "
        f"store {d * 1000:.0f} ms; ratio etcd/directory {e / d:.2f} (median of {runs}; "
        f"filling etcd took {filled:.1f} s)"
    )


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def bench_revocation(server: EtcdServer, servers: int, revocations: int) -> None:
    prefix = "/revoke/"
    certs = [zsec.Cert() for _ in range(max(revocations, 100))]
    with EtcdSettings((server.endpoint,)).connect() as conn:
        for i in range(0, len(certs), 128):
            chunk = certs[i : i + 128]
            conn.txn({f"{prefix}{c.public_txt}".encode(): c.public_txt.encode() for c in chunk})
    server_cert = zsec.Cert()
    env = {
        **os.environ,
        "ZSEC_FLEET_SERVER_KEYS": f"{server_cert.public_txt} {server_cert.secret_txt}",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.etcd_server", "member", server.endpoint, prefix],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(servers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("READY"), line
        # Warm up the CLI path once (imports, first channel): not a revocation cost.
        zsec_main(["trust", "list", "--endpoints", server.endpoint, "--prefix", "/none/"],
                  stdout=io.StringIO())  # fmt: skip
        from_call, from_ack = [], []
        for cert in random.sample(certs, revocations):
            out = io.StringIO()
            t0 = time.monotonic_ns()
            code = zsec_main(
                ["trust", "remove", "--endpoints", server.endpoint, "--prefix", prefix,
                 "--", cert.public_txt],
                stdout=out,
            )  # fmt: skip
            t1 = time.monotonic_ns()
            assert code == 0, out.getvalue()
            for proc in procs:
                assert proc.stdout is not None
                word, key, stamp = proc.stdout.readline().split()
                assert word == "REMOVED" and key == cert.public_txt, (word, key)
                from_call.append((int(stamp) - t0) / 1e6)
                from_ack.append((int(stamp) - t1) / 1e6)
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs:
            proc.wait(30)

    def show(values: list[float]) -> str:
        return (
            f"p50 {percentile(values, 50):.1f} ms, p90 {percentile(values, 90):.1f}, "
            f"p99 {percentile(values, 99):.1f}, max {max(values):.1f}"
        )

    print(
        f"revocation to refusal on {servers} server processes, {revocations} revocations "
        f"({len(from_call)} samples): from the `zsec trust remove` call: {show(from_call)}; "
        f"from the call's return: {show(from_ack)} (negative: seen before the call returned)"
    )


def bench_resume(server: EtcdServer, changes: int, compact: bool) -> None:
    prefix = f"/resume{int(compact)}/"
    base = [zsec.Cert() for _ in range(1000)]
    with EtcdSettings((server.endpoint,)).connect() as conn:
        for i in range(0, len(base), 128):
            conn.txn({f"{prefix}{c.public_txt}".encode(): c.public_txt.encode()
                      for c in base[i : i + 128]})  # fmt: skip
    cutter = TcpCutter(server.client_port)
    source = zsec.EtcdSource(cutter.endpoint, prefix=prefix)
    store = zsec.CertStore(source)
    try:
        assert store.wait_ready(30)
        cutter.cut()
        while source._follower.reconnects < 1:
            time.sleep(0.001)
        expected = {c.public_key for c in base}
        rng = random.Random(7)
        with EtcdSettings((server.endpoint,)).connect() as conn:
            for i in range(changes):  # one revision each, as separate operator commands would
                if i % 2 and expected:
                    gone = rng.choice(sorted(expected))
                    expected.discard(gone)
                    conn.txn(deletes=[f"{prefix}{zsec.Cert.from_keys(gone).public_txt}".encode()])
                else:
                    cert = zsec.Cert()
                    expected.add(cert.public_key)
                    conn.txn({f"{prefix}{cert.public_txt}".encode(): cert.public_txt.encode()})
            if compact:
                conn.compact(conn.revision())
        start = time.perf_counter()
        cutter.restore()
        while {c.public_key for c in store} != expected:
            if time.perf_counter() - start > 60:
                raise SystemExit("resume: the store never matched etcd")
            time.sleep(0.001)
        took = time.perf_counter() - start
        what = "after compaction" if compact else "by watch replay"
        print(
            f"resume {what}: {changes} changes made during a cut, all applied "
            f"{took * 1000:.0f} ms after the cut healed (includes the reconnect backoff); "
            f"full reloads after the first: {source.reloads - 1}; missed: 0"
        )
    finally:
        store.close()
        cutter.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--servers", type=int, default=10)
    parser.add_argument("--revocations", type=int, default=50)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--skip-100k", action="store_true")
    parser.add_argument(
        "--parts", default="load,revoke,resume", help="comma-separated: load, revoke, resume"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    server = EtcdServer(fsync=True).start()  # as in production: the WAL is synced
    try:
        print(f"etcd {server.endpoint}; python {sys.version.split()[0]}; {os.cpu_count()} cores")
        if "load" in parts:
            bench_load(server, 10_000, args.runs)
            if not args.skip_100k:
                bench_load(server, 100_000, args.runs)
        if "revoke" in parts:
            for _ in range(args.runs):
                bench_revocation(server, args.servers, args.revocations)
        if "resume" in parts:
            bench_resume(server, args.changes, compact=False)
            bench_resume(server, args.changes, compact=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
