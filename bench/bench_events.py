"""ZAP throughput with events consumed (subscriber + audit log + metrics) vs none, same run.

Run: .venv/bin/python bench/bench_events.py [--burst N] [--runs N] [--mechanisms NULL,CURVE]
     [--configs off,on,no-hub,subscriber,audit,metrics] [--audit-dir DIR]

The harness of bench_zap.py: a separate process sends a burst of ZAP requests
over ipc into pyzmq's C proxy, which forwards them to the authenticator; the
rate is timed over the second half of the replies. Configurations, interleaved
in each run:

- ``off``: a default ``zsec.Auth`` (decisions still go to the event hub, which
  only logs refusals; none here);
- ``on``: the same plus a subscriber callback, the JSON-lines audit log on
  local disk and Prometheus metrics, all consuming every decision;
- ``no-hub``: the policy's emitter removed, for reference: what the hand-off
  itself costs the ZAP thread;
- ``subscriber``, ``audit``, ``metrics``: one consumer each (``--configs``).

Prints requests/s (median of N runs) and the ratio on/off (target >= 85%),
then the CPU time per request of the threads that share the GIL (the ZAP
thread, the events thread and the subscriber's, the events drained): a view
of the same cost that other load on the machine disturbs less, in all and
per thread.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_zap import ZapProxy, generator

BURST = 80_000


class Server:
    """A zsec.Auth on a fresh context behind the ipc -> inproc proxy."""

    def __init__(self, config: str, mechanism: str, certs: Path, work: Path) -> None:
        import zsec

        self.ctx: zmq.Context[Any] = zmq.Context()
        self.auth = zsec.Auth(self.ctx)
        if mechanism == "CURVE":
            self.auth.configure_curve("global", certs)
        self.seen = 0
        if config in ("on", "subscriber"):
            self.auth.subscribe(self._count)
        if config in ("on", "audit"):
            self.auth.audit_log(work / f"audit-{os.getpid()}.jsonl")
        if config in ("on", "metrics"):
            self.auth.enable_metrics()
        if config == "no-hub":
            self.auth._policy = self.auth._policy.replace(emit=None)
        self.zap_proxy = ZapProxy(self.ctx, "events")
        self.endpoint = self.zap_proxy.endpoint

    def thread_cpu(self) -> tuple[float, float, float]:
        """CPU seconds used so far by the ZAP thread, the events thread and subscribers."""
        hub = self.auth._events
        groups = [[self.auth._thread], [hub._thread], [s.thread for s in hub._subscriptions]]
        totals = [0.0, 0.0, 0.0]
        for i, threads in enumerate(groups):
            for thread in threads:
                if thread.ident is not None and thread.is_alive():
                    totals[i] += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        return totals[0], totals[1], totals[2]

    def _count(self, event: object) -> None:
        self.seen += 1

    def stop(self) -> tuple[int, int]:
        self.auth.flush_events(30)
        self.zap_proxy.close()
        dropped = self.auth.dropped_events
        self.auth.stop()
        self.ctx.term()
        return self.seen, dropped


def run_once(
    config: str, mechanism: str, burst: int, certs: Path, keys: list[bytes], where: str | None
) -> tuple[float, list[float]]:
    """(requests/s, CPU microseconds per request of the ZAP, events and subscriber threads)."""
    work = Path(tempfile.mkdtemp(prefix="zsec-bench-events-", dir=where))
    server = Server(config, mechanism, certs, work)
    cpu = server.thread_cpu()
    try:
        parent, child = multiprocessing.get_context("spawn").Pipe()
        proc = multiprocessing.get_context("spawn").Process(
            target=generator, args=(server.endpoint, mechanism, keys, burst, child)
        )
        proc.start()
        if not parent.poll(600):
            proc.kill()
            raise RuntimeError("generator gave no result")
        rate, refused, total = parent.recv()
        proc.join(10)
        server.auth.flush_events(60)  # the events work counts too
        wait = time.monotonic() + 60
        while server.seen < total and config in ("on", "subscriber") and time.monotonic() < wait:
            time.sleep(0.01)  # the subscriber's work too
        cpu = [b - a for a, b in zip(cpu, server.thread_cpu(), strict=True)]
    finally:
        seen, dropped = server.stop()
    if config == "on":
        lines = next(work.glob("audit-*.jsonl")).read_bytes().count(b"\n")
        # Every decision reached the subscriber and the audit log, or was counted as dropped.
        print(
            f"   on: {total:,} decisions, {seen:,} delivered, {dropped:,} dropped, "
            f"{lines:,} audit lines (with padding)"
        )
    if refused:
        print(f"   {config}: {refused} refused (should be 0)")
    return float(rate), [c / total * 1e6 for c in cpu]


def main() -> None:
    from _common import cert_dir

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=BURST)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mechanisms", default="NULL,CURVE")
    parser.add_argument("--configs", default="off,on,no-hub")
    # The kernel's writeback of the audit file is CPU that no thread of ours
    # is charged for: /dev/shm (tmpfs) shows the cost without it.
    parser.add_argument(
        "--audit-dir", default=None, help="where the audit log goes (default: /tmp)"
    )
    args = parser.parse_args()
    certs = cert_dir(1000)
    import zsec

    with zsec.CertStore(certs) as store:
        keys = random.Random(2).sample([c.public_key for c in store], 500)
    configs = args.configs.split(",")
    print(f"{os.cpu_count()} cores; {args.runs} runs x {args.burst:,} requests")
    for mechanism in args.mechanisms.split(","):
        rates: dict[str, list[float]] = {c: [] for c in configs}
        cpus: dict[str, list[list[float]]] = {c: [] for c in configs}
        for _ in range(args.runs):
            for config in configs:
                rate, cpu = run_once(config, mechanism, args.burst, certs, keys, args.audit_dir)
                rates[config].append(rate)
                cpus[config].append(cpu)
        med = {c: statistics.median(v) for c, v in rates.items()}
        line = ", ".join(f"{c} {med[c]:,.0f}/s" for c in configs)
        ratio = f"; on/off {med['on'] / med['off']:.0%}" if "on" in med and "off" in med else ""
        print(f"{mechanism:5s} achieved: {line}{ratio}")
        for config in configs:
            print(f"{'':7s}{config} runs: {', '.join(f'{v:,.0f}' for v in rates[config])}")
        # The same work seen as CPU: less sensitive to other load on the machine.
        cpu = {c: statistics.median(sum(r) for r in v) for c, v in cpus.items()}
        line = ", ".join(f"{c} {cpu[c]:.1f} us" for c in configs)
        ratio = f"; capacity on/off {cpu['off'] / cpu['on']:.0%}" if "on" in cpu else ""
        print(f"{mechanism:5s} CPU per request (ZAP + events threads): {line}{ratio}")
        for config in configs:
            zap, events, subscriber = (
                statistics.median(r[i] for r in cpus[config]) for i in range(3)
            )
            print(
                f"{'':7s}{config}: ZAP thread {zap:.1f} us, events thread {events:.1f} us, "
                f"subscriber thread {subscriber:.1f} us"
            )


if __name__ == "__main__":
    main()
