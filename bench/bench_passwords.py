"""PLAIN timing: a known user with a wrong password against an unknown user, real handshakes.

Run: .venv/bin/python bench/bench_passwords.py [--rounds N] [--cases a,b,...]

For each kind of password file (argon2id entries with libsodium's
interactive limits, which ``zsec passwd`` uses; argon2id with the moderate
limits; argon2i with its interactive limits; argon2id with 4 lanes, as
argon2-cffi writes; a mixed file), a zsec.Auth
serves PLAIN on tcp://127.0.0.1 and a client logs in as a known user with a
wrong password and as a never-seen user, alternately, ``--rounds`` times
each. Each sample is one whole handshake (connect to refusal), timed with
the client's socket monitor. Prints p10, median and p90 of both, and the
ratio of the medians (known / unknown; 1.0 means timing does not tell
which usernames exist).

The "fixed decoy" row of each case runs the same file with the decoy that
zsec used before (one argon2id hash at the interactive limits whatever the
file holds), to show what the decoy change buys, in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq
from nacl import pwhash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zsec

USERS = 4


def _entries(kind: str, password: bytes) -> list[bytes]:
    id_, i = pwhash.argon2id, pwhash.argon2i
    interactive = id_.str(password)
    if kind == "interactive":
        return [interactive] * USERS
    if kind == "moderate":
        moderate = id_.str(password, opslimit=id_.OPSLIMIT_MODERATE, memlimit=id_.MEMLIMIT_MODERATE)
        return [moderate] * USERS
    if kind == "argon2i":
        return [i.str(password)] * USERS
    if kind == "lanes4":  # argon2-cffi's default shape (p=4), which libsodium checks
        return [interactive.replace(b",p=1$", b",p=4$")] * USERS
    if kind == "mixed":  # one user in four with the argon2i entry
        return [interactive] * (USERS - 1) + [i.str(password)]
    raise SystemExit(f"unknown case {kind}")


CASES = ("interactive", "moderate", "argon2i", "lanes4", "mixed")
# Moderate hashes take about ten times as long: fewer rounds keep the run short.
ROUNDS = {"interactive": 40, "moderate": 12, "argon2i": 40, "lanes4": 40, "mixed": 40}


def _handshake_seconds(ctx: zmq.Context[Any], endpoint: str, user: str) -> float:
    with ctx.socket(zmq.PUSH) as client:
        client.linger = 0
        zsec.plain_client(client, user, "not-the-password")
        with zsec.HandshakeMonitor(client) as monitor:
            start = time.perf_counter()
            client.connect(endpoint)
            verdict = monitor.wait(30)
            elapsed = time.perf_counter() - start
    if verdict.ok or verdict.zap_status != 400:
        raise SystemExit(f"expected a refusal for {user}, got {verdict}")
    return elapsed


def _fixed_decoy(auth: zsec.Auth) -> None:
    """Give the running file the one decoy zsec had before (interactive argon2id)."""
    passwords = auth.policy.plain["*"]
    state = passwords._state
    passwords._state = state._replace(decoys=(pwhash.argon2id.str(os.urandom(16)),))


def _measure(kind: str, path: Path, rounds: int, fixed: bool) -> tuple[list[float], list[float]]:
    ctx: zmq.Context[Any] = zmq.Context()
    known: list[float] = []
    unknown: list[float] = []
    try:
        with zsec.Auth(ctx) as auth:
            auth.configure_plain("*", path)
            # The file does not change during the run: no re-stat between logins.
            auth.policy.plain["*"]._interval = 3600.0
            if fixed:
                _fixed_decoy(auth)
            server = ctx.socket(zmq.PULL)
            server.linger = 0
            zsec.plain_server(server)
            server.bind("tcp://127.0.0.1:*")
            endpoint = server.getsockopt_string(zmq.LAST_ENDPOINT)
            users = itertools.cycle(f"user{n}" for n in range(USERS))
            _handshake_seconds(ctx, endpoint, "warm-up")  # first-use costs out of the way
            for n in range(rounds):
                # Alternate which goes first, so drift in the machine's load
                # falls on both sides alike.
                pair = [(known, next(users)), (unknown, f"stranger{n}")]
                for samples, user in pair if n % 2 else pair[::-1]:
                    samples.append(_handshake_seconds(ctx, endpoint, user))
            server.close()
    finally:
        ctx.destroy(linger=0)
    return known, unknown


def _pcts(values: list[float]) -> tuple[float, float, float]:
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return deciles[0], statistics.median(values), deciles[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="handshakes of each kind per case")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--no-fixed", action="store_true", help="skip the fixed-decoy rows")
    args = parser.parse_args()
    print(f"PLAIN refusals over tcp://127.0.0.1, {USERS} users per file; times in ms")
    print(
        f"{'case':24} {'n':>3} {'known p10/med/p90':>22} {'unknown p10/med/p90':>22} {'ratio':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.cases.split(","):
            path = Path(tmp) / f"{kind}.txt"
            lines = [f"user{n}=".encode() + e for n, e in enumerate(_entries(kind, b"right"))]
            path.write_bytes(b"\n".join(lines) + b"\n")
            path.chmod(0o600)
            rounds = args.rounds or ROUNDS[kind]
            for fixed in (False,) if args.no_fixed else (False, True):
                known, unknown = _measure(kind, path, rounds, fixed)
                k, u = _pcts(known), _pcts(unknown)
                label = kind + (" (fixed decoy)" if fixed else "")
                print(
                    f"{label:24} {rounds:3d} "
                    f"{'/'.join(f'{v * 1e3:.0f}' for v in k):>22} "
                    f"{'/'.join(f'{v * 1e3:.0f}' for v in u):>22} {k[1] / u[1]:6.2f}"
                )


if __name__ == "__main__":
    main()
