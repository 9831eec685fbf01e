"""ZAP throughput of the drop-in: zsec.auth's authenticators vs pyzmq's zmq.auth, same harness.

Run: .venv/bin/python bench/bench_dropin.py [--burst N] [--runs N] [--mechanisms NULL,PLAIN,CURVE]

The harness is bench_zap.py's, reused as is: a separate process sends a
burst of ZAP requests over ipc into pyzmq's C proxy, which forwards them to
``inproc://zeromq.zap.01`` where the authenticator under test is bound; the
rate is timed over the second half of the replies. Four authenticators, each
configured through the same pyzmq-shaped calls (``configure_plain(domain,
{user: password})`` with 1,000 users, ``configure_curve(domain, directory)``
on a 10,000-certificate directory): pyzmq's ThreadAuthenticator and
AsyncioAuthenticator, and zsec.auth's. The asyncio ones are started on an
event loop running in a thread of the benchmark process. Prints requests/s
(median of N runs, authenticators interleaved), the requests per CPU-second
of the thread that answers (the loop thread for pyzmq's asyncio one, zsec's
ZAP thread for zsec's), and zsec/pyzmq ratios for each runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zmq.auth.asyncio
import zmq.auth.thread
from bench_zap import USERS, ZapProxy, _plain_dict, measure

import zsec.auth.asyncio
import zsec.auth.thread

_PYZMQ_AUTH: Any = zmq.auth
_ZSEC_AUTH: Any = zsec.auth
BURST = 40_000
KINDS = ("pyzmq-thread", "zsec-thread", "pyzmq-asyncio", "zsec-asyncio")


class Loop:
    """An asyncio event loop running in its own thread, as an asyncio program's would."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, fn: Any) -> Any:
        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Authenticator:
    """One authenticator on a fresh context, fed by the C proxy; stop() tears it all down."""

    def __init__(self, kind: str, mechanism: str, certs: Path) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.loop: Loop | None = None
        library, runtime = kind.split("-")
        module = _PYZMQ_AUTH if library == "pyzmq" else _ZSEC_AUTH
        if runtime == "thread":
            self.auth = module.thread.ThreadAuthenticator(self.ctx)
            self.auth.start()
        else:
            self.loop = Loop()
            self.auth = self.loop.run(lambda: module.asyncio.AsyncioAuthenticator(self.ctx))
            self.loop.run(self.auth.start)
        # pyzmq's "*" does not cover named domains, so both name the one in use.
        if mechanism == "PLAIN":
            self.auth.configure_plain("global", _plain_dict())
        elif mechanism == "CURVE":
            self.auth.configure_curve("global", str(certs))
        if library == "zsec" or runtime == "thread":
            self.thread_ident = self.auth.thread.ident
        else:
            assert self.loop is not None
            self.thread_ident = self.loop.thread.ident
        self.zap_proxy = ZapProxy(self.ctx, kind)
        self.endpoint = self.zap_proxy.endpoint

    def stop(self) -> None:
        self.zap_proxy.close()
        if self.loop is not None:
            self.loop.run(self.auth.stop)
            self.loop.close()
        else:
            self.auth.stop()
        self.ctx.term()


def run_once(
    kind: str, mechanism: str, burst: int, certs: Path, keys: list[bytes]
) -> tuple[float, float, int]:
    """Return (requests/s achieved, requests per CPU-second of the answering thread, refused)."""
    return measure(Authenticator(kind, mechanism, certs), kind, mechanism, burst, keys)


def main() -> None:
    from _common import cert_dir

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=BURST, help="requests per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mechanisms", default="NULL,PLAIN,CURVE")
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args()
    certs = cert_dir(10_000)
    with zsec.CertStore(certs) as store:
        all_keys = [c.public_key for c in store]
    keys = random.Random(2).sample(all_keys, 1000)
    kinds = args.kinds.split(",")
    print(
        f"pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}, {os.cpu_count()} cores; "
        f"{args.runs} runs x {args.burst:,} requests (rate timed over the second half); "
        f"PLAIN: {USERS} users in a dict; CURVE: 10,000-certificate directory"
    )
    for mechanism in args.mechanisms.split(","):
        rates: dict[str, list[float]] = {k: [] for k in kinds}
        capacity: dict[str, list[float]] = {k: [] for k in kinds}
        refusals: dict[str, int] = dict.fromkeys(kinds, 0)
        for _ in range(args.runs):
            for kind in kinds:
                rate, cap, refused = run_once(kind, mechanism, args.burst, certs, keys)
                rates[kind].append(rate)
                capacity[kind].append(cap)
                refusals[kind] += refused
        for label, table in (("achieved", rates), ("per answering-CPU-second", capacity)):
            med = {k: statistics.median(v) for k, v in table.items()}
            line = ", ".join(f"{k} {med[k]:,.0f}/s" for k in kinds)
            ratios = [
                f"{runtime} zsec/pyzmq {med[f'zsec-{runtime}'] / med[f'pyzmq-{runtime}']:.2f}x"
                for runtime in ("thread", "asyncio")
                if f"zsec-{runtime}" in med and f"pyzmq-{runtime}" in med
            ]
            print(f"{mechanism:5s} {label:24s}: {line}; {'; '.join(ratios)}")
            for kind in kinds:
                runs = ", ".join(f"{v:,.0f}" for v in table[kind])
                print(f"{'':31s}{kind} runs: {runs}")
        if any(refusals.values()):
            print(f"      refused (should be 0): {refusals}")


if __name__ == "__main__":
    main()
