"""ZAP throughput with events consumed (subscriber + audit log + metrics) vs none, same run.

Run: .venv/bin/python bench/bench_events.py [--burst N] [--rounds N] [--mechanisms NULL,CURVE]
     [--configs off,on,no-hub,drain,subscriber,audit,metrics] [--keys N] [--audit-dir DIR]

One authenticator per configuration, each on its own context, made afresh
each round:

- ``off``: a default ``zsec.Auth`` (decisions still go to the event hub, which
  only logs refusals; none here);
- ``on``: the same plus a subscriber callback, the JSON-lines audit log on
  local disk and Prometheus metrics, all consuming every decision;
- ``no-hub``: the policy's emitter removed, for reference: what the hand-off
  itself costs the ZAP thread;
- ``drain``: every decision posted and its event built, then thrown away:
  the hand-off and the building alone;
- ``subscriber``, ``audit``, ``metrics``: one consumer each.

A separate generator process queues a whole burst of ZAP requests (NULL, or
CURVE with ``--keys`` distinct keys) on an ipc endpoint before the
authenticator's proxy (pyzmq's C proxy, no GIL) starts forwarding them, and
collects the replies only after the burst is timed, so no Python of its own
runs meanwhile. The burst is timed here, from the moment the proxy has passed
back half of the replies (its statistics, polled each millisecond once the
last burst's rate says the moment is near) to the moment it has passed
back all of them and their events are drained (audit, metrics, the
subscriber's callbacks): the events work is counted, and none is left for
the next burst.

The machine this runs on is shared: its speed drifts by tens of percent over
seconds. So the configurations take turns in short bursts, forward then
backward in each round (off, on, on, off), and each round gives a ratio of
bursts run side by side. Prints the median of the rounds' ratios on/off
(target >= 85%) with their spread, then the same for CPU time per request of
the threads that share the GIL (the ZAP thread, the events thread and the
subscriber's): the capacity ratio, which is what a server whose ZAP thread
has a core to itself would see.
"""

from __future__ import annotations

import argparse
import itertools
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

from bench_zap import ZapProxy, _requests

BURST = 20_000
_SERVERS = itertools.count()


def generator(mechanism: str, keys: list[bytes], conn: Any) -> None:
    """Serve bursts: for each (endpoint, count) received, queue them all, then collect the replies.

    Reports "sent" once every request is handed to libzmq (the parent then
    starts that endpoint's proxy and times the handler), waits for "collect"
    (the handler is done: this Python thread stays off the CPU meanwhile),
    then reports how many replies were not 200 (-1: some never came).
    """
    ctx = zmq.Context()
    requests = _requests(mechanism, keys)
    count = len(requests)
    while True:
        job = conn.recv()
        if job is None:
            break
        endpoint, burst = job
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvtimeo = 30_000
        sock.sndhwm = sock.rcvhwm = 0  # no limit: the whole burst waits in the queues
        sock.connect(endpoint)
        send, recv = sock.send_multipart, sock.recv_multipart
        for i in range(burst):
            send(requests[i % count])
        conn.send("sent")
        conn.recv()
        refused = 0
        try:
            for _ in range(burst):
                if recv()[3] != b"200":
                    refused += 1
        except zmq.Again:
            refused = -1
        sock.close()
        conn.send(refused)
    ctx.destroy(linger=0)


def _drain(events: list[Any], lines: Any, notable: list[Any]) -> None:
    """Deliver nothing (the ``drain`` configuration)."""


class Server:
    """A zsec.Auth on its own context, fed a burst at a time by the generator."""

    def __init__(self, config: str, mechanism: str, certs: Path, work: Path) -> None:
        import zsec

        self.config = config
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.auth = zsec.Auth(self.ctx)
        if mechanism == "CURVE":
            self.auth.configure_curve("global", certs)
        self.seen = 0
        self.sent = 0
        self.rate = 0.0  # the last burst's, to know when to start looking
        self.late = 0  # times a look came after the moment to time
        self.audit = work / f"audit-{config}-{next(_SERVERS)}.jsonl"
        if config in ("on", "subscriber"):
            self.auth.subscribe(self._count)
        if config in ("on", "audit"):
            self.auth.audit_log(self.audit)
        if config in ("on", "metrics"):
            self.auth.enable_metrics()
        if config == "drain":  # events built, then thrown away: hand-off and building alone
            self.auth._events.want_allowed = True
            self.auth._events.refresh = lambda: None  # type: ignore[method-assign]
            self.auth._events._deliver = _drain  # type: ignore[method-assign]
        if config == "no-hub":
            self.auth._policy = self.auth._policy.replace(emit=None)

    def thread_cpu(self) -> list[float]:
        """CPU seconds used so far by the ZAP thread, the events thread and subscribers."""
        hub = self.auth._events
        groups = [[self.auth._thread], [hub._thread], [s.thread for s in hub._subscriptions]]
        totals = [0.0, 0.0, 0.0]
        for i, threads in enumerate(groups):
            for thread in threads:
                if thread.ident is not None and thread.is_alive():
                    totals[i] += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        return totals

    def _count(self, event: object) -> None:
        self.seen += 1

    def burst(self, conn: Any, burst: int) -> tuple[float, list[float]]:
        """One burst: (requests/s, CPU microseconds per request of the three thread groups).

        Timed in this process, from the moment half the replies have left
        the handler to the moment all have and their events are drained
        (audit, metrics, subscriber), so the events work is counted.
        """
        proxy = ZapProxy(self.ctx, self.config, start=False)
        try:
            conn.send((proxy.endpoint, burst))
            _expect(conn, "sent")
            before = self.thread_cpu()
            begun = time.perf_counter()
            proxy.start()
            half = burst // 2
            start, passed = self._when(proxy, half * REPLY_PARTS, begun, half)
            self._when(proxy, burst * REPLY_PARTS, start, burst - half)
            self.drain(burst)
            end = time.perf_counter()
            after = self.thread_cpu()
            conn.send("collect")
            refused = _expect(conn, "refusals")
        finally:
            proxy.close()
        if refused:
            raise RuntimeError(f"{self.config}: {refused} replies refused or lost (-1: lost)")
        cpu = [(b - a) / burst * 1e6 for a, b in zip(before, after, strict=True)]
        # From the replies seen at the start, which may be more than half.
        self.rate = (burst - passed) / (end - start)
        return self.rate, cpu

    def _when(self, proxy: ZapProxy, parts: int, since: float, requests: int) -> tuple[float, int]:
        """The time at which ``proxy`` has passed back ``parts`` reply parts, and the replies then.

        Asking the proxy costs this process about 50 us of CPU, some of it
        under the GIL: sleep through half the time the last burst's rate
        predicts, then look each millisecond (1 ms is 0.2-0.4% of a half).
        A burst twice as fast as the last is seen late, and counted.
        """
        if self.rate:
            time.sleep(max(0.0, since + 0.5 * requests / self.rate - time.perf_counter()))
        deadline = time.monotonic() + 600
        first = True
        while (seen := proxy.replies()) < parts:
            first = False
            if time.monotonic() > deadline:
                raise RuntimeError("the handler stopped answering")
            time.sleep(0.001)
        if first and self.rate:
            self.late += 1  # already there: this time is late (the count read says how late)
        return time.perf_counter(), seen // REPLY_PARTS

    def drain(self, burst: int) -> None:
        """Wait until every event of this burst is audited, counted and delivered."""
        self.sent += burst
        if not self.auth.flush_events(60):
            raise RuntimeError(f"{self.config}: the events thread did not drain in 60 s")
        wait = time.monotonic() + 60
        while self.auth._events._subscriptions and self.seen < self.sent:
            if time.monotonic() > wait:
                raise RuntimeError("the subscriber did not catch up")
            time.sleep(0.0005)

    def stop(self) -> list[int]:
        """Stop; return [decisions, delivered to the subscriber, dropped, audit lines]."""
        self.auth.flush_events(30)
        dropped = self.auth.dropped_events
        lines = self.audit.read_bytes().count(b'{"event"') if self.audit.exists() else 0
        self.auth.stop()
        self.ctx.destroy(linger=0)
        return [self.sent, self.seen, dropped, lines]


# Parts of a ZAP reply as the proxy's backend receives it: the client's
# routing id, the delimiter, then version, request id, status code, status
# text, user id and metadata.
REPLY_PARTS = 8


def _expect(conn: Any, what: str) -> Any:
    if not conn.poll(600):
        raise RuntimeError(f"the generator did not report {what!r}")
    return conn.recv()


def spread(values: list[float]) -> str:
    """The lowest, median and highest of ``values`` as percentages."""
    return f"{statistics.median(values):.0%} (rounds {min(values):.0%}-{max(values):.0%})"


def main() -> None:
    from _common import cert_dir

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=BURST)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--mechanisms", default="NULL,CURVE")
    parser.add_argument("--configs", default="off,on,no-hub")
    # More distinct allowed shapes than the hub keeps slots for (512) shows
    # the slower build of an event without one.
    parser.add_argument("--keys", type=int, default=500, help="distinct CURVE keys (default 500)")
    # The kernel's writeback of the audit file is CPU that no thread of ours
    # is charged for: /dev/shm (tmpfs) shows the cost without it.
    parser.add_argument(
        "--audit-dir", default=None, help="where the audit log goes (default: /tmp)"
    )
    args = parser.parse_args()
    certs = cert_dir(max(1000, args.keys))
    import zsec

    with zsec.CertStore(certs) as store:
        keys = random.Random(2).sample([c.public_key for c in store], args.keys)
    configs = args.configs.split(",")
    print(
        f"{os.cpu_count()} cores; {args.rounds} rounds of {', '.join(configs)} and back, "
        f"{args.burst:,} requests per burst, {args.keys} CURVE keys"
    )
    for mechanism in args.mechanisms.split(","):
        work = Path(tempfile.mkdtemp(prefix="zsec-bench-events-", dir=args.audit_dir))
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        proc = context.Process(target=generator, args=(mechanism, keys, child))
        proc.start()
        rates: dict[str, list[float]] = {c: [] for c in configs}
        cpus: dict[str, list[list[float]]] = {c: [] for c in configs}
        totals = [0, 0, 0, 0]  # the on servers' decisions, delivered, dropped, audit lines
        late = 0
        try:
            for _ in range(args.rounds):
                # Fresh servers each round: whatever luck a server has (where
                # its threads run, its memory) is not kept for the whole run.
                servers = {c: Server(c, mechanism, certs, work) for c in configs}
                try:
                    for server in servers.values():
                        # Warm up: imports, caches, one slot per shape.
                        server.burst(parent, max(2_000, 2 * args.keys))
                    round_rates: dict[str, list[float]] = {c: [] for c in configs}
                    round_cpus: dict[str, list[list[float]]] = {c: [] for c in configs}
                    for config in [*configs, *reversed(configs)]:
                        rate, cpu = servers[config].burst(parent, args.burst)
                        round_rates[config].append(rate)
                        round_cpus[config].append(cpu)
                finally:
                    for server in servers.values():
                        late += server.late
                        counts = server.stop()
                        if server.config == "on":
                            totals = [a + b for a, b in zip(totals, counts, strict=True)]
                for config in configs:
                    rates[config].append(statistics.fmean(round_rates[config]))
                    cpus[config].append(
                        [statistics.fmean(c[i] for c in round_cpus[config]) for i in range(3)]
                    )
        finally:
            parent.send(None)
            proc.join(10)
        if late:
            print(f"   {late} timed moments were seen late (a burst faster than the last)")
        if "on" in configs:
            # Every decision reached the subscriber and the audit log, or was counted as dropped.
            print(
                "   on: {:,} decisions, {:,} delivered, {:,} dropped, {:,} audit lines".format(
                    *totals
                )
            )
        med = {c: statistics.median(v) for c, v in rates.items()}
        print(f"{mechanism:5s} achieved: " + ", ".join(f"{c} {med[c]:,.0f}/s" for c in configs))
        for config in configs:
            print(f"{'':7s}{config} rounds: {', '.join(f'{v:,.0f}' for v in rates[config])}")
        for config in configs[1:]:
            ratios = [a / b for a, b in zip(rates[config], rates[configs[0]], strict=True)]
            print(f"{'':7s}{config}/{configs[0]}: {spread(ratios)}")
        # The same work seen as CPU: less sensitive to other load on the machine.
        totals = {c: [sum(r) for r in v] for c, v in cpus.items()}
        line = ", ".join(f"{c} {statistics.median(totals[c]):.1f} us" for c in configs)
        print(f"{mechanism:5s} CPU per request (ZAP + events + subscriber threads): {line}")
        for config in configs[1:]:
            ratios = [b / a for a, b in zip(totals[config], totals[configs[0]], strict=True)]
            print(f"{'':7s}capacity {config}/{configs[0]}: {spread(ratios)}")
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
