"""Instructions per ZAP request with events consumed vs none, counted by callgrind: work, not time.

Run: .venv/bin/python bench/bench_events_work.py [--requests N] [--mechanisms NULL,CURVE]
     [--keys N] [--configs off,on]

Needs valgrind. The configurations are those of ``bench_events.py``: ``off``,
a default ``zsec.Auth``; ``on``, the same with a subscriber, the audit log
and metrics consuming every decision. Each runs in its own process under
callgrind, which counts only while one burst of ``--requests`` is answered
and its events are drained (audited, counted, delivered).

The machine this runs on is shared, and its speed drifts by tens of percent
from second to second; instruction counts do not (two runs agree within a
few hundred instructions per request). What they leave out is what the
instructions cost in time: cache misses, and the turns that threads take on
the GIL. ``bench_events.py`` measures that; this says how much of the
difference is work, and shows a change to it at once.

Prints, per request, the instructions of each thread of the server process
but its main thread (which only times the burst here): the ZAP thread, the
events thread, the subscriber's, libzmq's I/O threads and the proxy that
feeds the handler (the last two do the same work in both configurations).
Then the total, the extra with events on, and the ratio off/on.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


_SLOWDOWN = 100


def child(config: str, mechanism: str, keys: int, requests: int) -> None:
    """One server under callgrind: warm up, then count one burst (instructions on only then)."""
    import bench_events
    from _common import cert_dir

    import zsec
    import zsec._events

    # Callgrind runs the code about 100 times slower: the dispatcher's pause
    # between batches must be as much longer, or it builds the batches that
    # the ZAP thread builds at full speed (256 at a time), in pieces whose
    # fixed costs then look like work per request.
    zsec._events._BATCH_PAUSE *= _SLOWDOWN
    certs = cert_dir(max(1000, keys))
    with zsec.CertStore(certs) as store:
        chosen = random.Random(2).sample([c.public_key for c in store], keys)
    context = multiprocessing.get_context("spawn")
    parent, end = context.Pipe()
    # The generator is a new process: callgrind does not follow it.
    proc = context.Process(target=bench_events.generator, args=(mechanism, chosen, end))
    proc.start()
    work = Path(tempfile.mkdtemp(prefix="zsec-bench-work-"))
    server = bench_events.Server(config, mechanism, certs, work)
    try:
        # Warm up: imports, caches, one slot per shape (as bench_events does).
        server.burst(parent, max(2_000, 2 * keys))
        _collect("on")
        server.burst(parent, requests)
        _collect("off")
    finally:
        server.stop()
        parent.send(None)
        proc.join(10)
        shutil.rmtree(work, ignore_errors=True)


def _collect(state: str) -> None:
    """Turn callgrind's counting on or off for this process; returns once it is done."""
    subprocess.run(
        ["callgrind_control", "--instr=" + state, str(os.getpid())],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def count(config: str, mechanism: str, keys: int, requests: int) -> dict[int, float]:
    """Run ``config`` under callgrind; instructions per request of each thread but the main one."""
    with tempfile.TemporaryDirectory(prefix="zsec-callgrind-") as out:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}/cg.%p",
            sys.executable,
            __file__,
            "--child",
            config,
            "--mechanisms",
            mechanism,
            "--keys",
            str(keys),
            "--requests",
            str(requests),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{config} {mechanism} failed:\n{done.stderr[-3000:]}")
        threads = {}
        for path in Path(out).glob("cg.*-*"):
            number = int(path.name.rsplit("-", 1)[1])
            for line in path.read_text().splitlines():
                if line.startswith("totals:"):
                    threads[number] = int(line.split()[1]) / requests
        threads.pop(1, None)  # the main thread: timing only
        return threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--mechanisms", default="NULL,CURVE")
    parser.add_argument("--keys", type=int, default=500, help="distinct CURVE keys (default 500)")
    parser.add_argument("--configs", default="off,on")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mechanisms, args.keys, args.requests)
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench_events_work.py needs valgrind (callgrind)")
    configs = args.configs.split(",")
    print(f"{args.requests:,} requests per count, {args.keys} CURVE keys; instructions per request")
    for mechanism in args.mechanisms.split(","):
        totals = {}
        for config in configs:
            threads = count(config, mechanism, args.keys, args.requests)
            totals[config] = sum(threads.values())
            by_size = ", ".join(f"{v:,.0f}" for v in sorted(threads.values(), reverse=True))
            print(f"{mechanism:5s} {config}: {totals[config]:,.0f} (threads: {by_size})")
        base = totals[configs[0]]
        for config in configs[1:]:
            extra = totals[config] - base
            print(
                f"{'':6s}{config} - {configs[0]}: {extra:+,.0f}; "
                f"{configs[0]}/{config}: {base / totals[config]:.1%}"
            )


if __name__ == "__main__":
    main()
