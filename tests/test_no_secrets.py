"""No password or secret key in any log record, exception message, repr or CLI output.

One test drives every flow that handles a secret (certificates, stores, the
CLI, password files, the authenticator with verbose tracing, malformed
requests, failures) with logging captured at DEBUG on every logger, collects
all the text zsec produced, and looks for each secret in it.
"""

from __future__ import annotations

import io
import logging
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

import zsec
from zsec._passwords import PasswordFile
from zsec._zap import Policy, ZapRequest
from zsec.cli import main

from .helpers import attempt, bind_loopback

PASSWORDS = ["Pl41n-Secret-Value", "Wr0ng-Guess-Value", "Hashed-Pass-Value", "Cli-Stdin-Value"]


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))
        # Structured fields (extra=) too: JSON log formatters print them.
        self.texts.append(repr({k: v for k, v in vars(record).items() if k.startswith("zsec_")}))
        if record.exc_info:
            self.texts.append(logging.Formatter().formatException(record.exc_info))


def _secret_forms(cert: zsec.Cert) -> list[str]:
    assert cert.secret_key is not None and cert.secret_txt is not None
    return [cert.secret_txt, cert.secret_key.hex(), repr(cert.secret_key)[2:-1]]


def test_no_secret_appears_anywhere(tmp_path: Path) -> None:
    collector = _Collector()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    texts = collector.texts
    certs: list[zsec.Cert] = []

    def expect_error(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - collecting every message
            texts.append(f"{type(exc).__name__}: {exc}")
        else:
            pytest.fail(f"{fn} did not raise")

    ctx: zmq.Context[Any] = zmq.Context()
    try:
        # Certificates: reprs, saves, loads, refusals.
        server_cert, client_cert = zsec.Cert(), zsec.Cert()
        certs += [server_cert, client_cert]
        texts += [repr(server_cert), str(client_cert), f"{client_cert!r}"]
        server_cert.save(tmp_path / "server.key")
        texts.append(repr(zsec.Cert.load(tmp_path / "server.key")))
        expect_error(lambda: zsec.Cert.from_keys(client_cert.public_key, server_cert.secret_key))
        expect_error(lambda: zsec.Cert.from_keys(server_cert.secret_txt[:39]))  # type: ignore[index]
        bad = tmp_path / "mismatch.key"
        bad.write_text(
            f'curve\n    public-key = "{client_cert.public_txt}"\n'
            f'    secret-key = "{server_cert.secret_txt}"\n'
        )
        expect_error(lambda: zsec.Cert.load(bad))

        # The command line.
        out, err = io.StringIO(), io.StringIO()
        main(["makecert", str(tmp_path / "made.key"), "--batch"], stdout=out, stderr=err)
        made = zsec.Cert.load(tmp_path / "made.key")
        certs.append(made)
        main(["makecert", str(tmp_path / "made.key"), "--batch"], stdout=out, stderr=err)
        pw_file = tmp_path / "passwords.txt"
        pw_file.write_text(f"admin={PASSWORDS[0]}\n")
        main(
            ["passwd", str(pw_file), "carol", "--stdin"],
            stdin=io.StringIO(PASSWORDS[3] + "\n"),
            stdout=out,
            stderr=err,
        )
        main(
            ["passwd", str(pw_file), "bad=name", "--stdin"],
            stdin=io.StringIO(PASSWORDS[3] + "\n"),
            stdout=out,
            stderr=err,
        )
        texts += [out.getvalue(), err.getvalue()]

        # A store with a leaked secret file and a broken file.
        trust = tmp_path / "trust"
        trust.mkdir(mode=0o700)
        client_cert.save_secret(trust / "leaked.key")
        (trust / "broken.key").write_text(f'curve\n    secret-key = "{client_cert.secret_txt}"\n')
        with zsec.CertStore(trust) as store:
            texts += [repr(store), *(repr(c) for c in store)]

        # Password files and the pure policy, verbose.
        passwords = PasswordFile(pw_file)
        texts.append(repr(passwords))
        policy = Policy(plain={"*": passwords}, verbose=True)
        for user, password in (
            ("admin", PASSWORDS[0]),
            ("admin", PASSWORDS[1]),
            ("carol", PASSWORDS[3]),
            ("nobody", PASSWORDS[1]),
        ):
            frames = [
                b"1.0",
                b"1",
                b"d",
                b"127.0.0.1",
                b"",
                b"PLAIN",
                user.encode(),
                password.encode(),
            ]
            texts.append(repr(ZapRequest.from_frames(frames)))
            texts.append(repr(policy.handle([b"r", b"", *frames])))
        # Malformed requests that carry a password.
        texts.append(
            repr(
                policy.handle(
                    [
                        b"r",
                        b"",
                        b"9.9",
                        b"1",
                        b"d",
                        b"a",
                        b"",
                        b"PLAIN",
                        b"admin",
                        PASSWORDS[0].encode(),
                    ]
                )
            )
        )
        texts.append(
            repr(
                policy.handle(
                    [
                        b"r",
                        b"",
                        b"1.0",
                        b"1",
                        b"d",
                        b"a",
                        b"",
                        b"PLAIN",
                        b"admin",
                        PASSWORDS[0].encode(),
                        b"extra",
                    ]
                )
            )
        )

        # The authenticator over real sockets, verbose, every mechanism.
        auth = zsec.Auth(ctx, verbose=True)
        auth.configure_plain("*", pw_file)
        store = zsec.CertStore()
        store.insert(client_cert)
        auth.configure_curve("curve", store)
        auth.configure_curve("*", zsec.CURVE_ALLOW_ANY)
        texts.append(repr(auth))
        # Operations: events to a subscriber, the audit log, metrics over HTTP.
        auth.subscribe(lambda event: texts.extend([repr(event), str(event.to_dict())]))
        audit_path = tmp_path / "audit.jsonl"
        auth.audit_log(audit_path)
        metrics_port = auth.serve_metrics(0)
        auth.configure_curve("trust", trust)
        plain_server = ctx.socket(zmq.PULL)
        plain_server.linger = 0
        zsec.plain_server(plain_server)
        plain_ep = bind_loopback(plain_server)
        for password in PASSWORDS[:2]:
            attempt(ctx, plain_ep, lambda s, p=password: zsec.plain_client(s, "admin", p))
        curve_server = ctx.socket(zmq.PULL)
        curve_server.linger = 0
        zsec.curve_server(curve_server, server_cert, "curve")
        curve_ep = bind_loopback(curve_server)
        for cert in (client_cert, made):
            attempt(ctx, curve_ep, lambda s, c=cert: zsec.curve_client(s, c, server_cert))
        client_cert.save_secret(trust / "leaked-again.key")  # a trust event for a secret file
        assert auth.flush_events()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            texts.append(response.read().decode())
        auth.stop()
        texts.append(repr(auth))
        texts.append(audit_path.read_text())

        # The operations commands, on secret files, leaked secrets and password files.
        out, err = io.StringIO(), io.StringIO()
        for argv in (
            ["cert", "show", str(tmp_path / "made.key")],
            ["cert", "show", str(tmp_path / "made.key_secret")],
            ["cert", "show", str(trust / "leaked.key")],
            ["cert", "show", str(bad)],
            ["check", str(trust)],
            ["check", str(trust), "--json"],
            ["check", str(pw_file)],
            ["check", str(pw_file), "--json"],
            ["audit", "tail", str(audit_path), "--once", "--lines", "1000"],
        ):
            main(argv, stdout=out, stderr=err)
        texts += [out.getvalue(), err.getvalue()]
        expect_error(lambda: zsec.curve_server(ctx.socket(zmq.PULL), zsec.Cert.load(bad)))
    finally:
        ctx.destroy(linger=0)
        root.removeHandler(collector)
        root.setLevel(old_level)

    everything = "\n".join(texts)
    assert "ALLOWED (PLAIN)" in everything and "DENIED (CURVE)" in everything  # flows ran
    assert "zsec_decisions_total" in everything and '"event":"decision"' in everything
    assert "secret-in-public-file" in everything and "public key:" in everything
    assert "holds a secret key" in everything
    for password in PASSWORDS:
        assert password not in everything, password
    for cert in certs:
        for form in _secret_forms(cert):
            assert form not in everything


def test_no_secret_appears_in_the_etcd_flows(etcd_server: Any, tmp_path: Path) -> None:
    """zsec trust, the etcd source and its errors: no secret key, no etcd password."""
    from zsec._etcd import EtcdSettings, EtcdSource

    collector = _Collector()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    texts = collector.texts
    etcd_password = "Etcd-Pass-Value-77"
    leaked = zsec.Cert()
    try:
        endpoint = etcd_server.endpoint
        # A certificate file with its secret key given to zsec trust add.
        leaked.save_secret(tmp_path / "leaked.key")
        out, err = io.StringIO(), io.StringIO()
        prefix = "/nosecrets/"
        conn = ["--endpoints", endpoint, "--prefix", prefix]
        main(["trust", "add", *conn, str(tmp_path / "leaked.key")], stdout=out, stderr=err)
        main(["trust", "list", *conn], stdout=out, stderr=err)
        # A password for an etcd without auth, and for an unreachable one.
        for where in (endpoint, "127.0.0.1:9"):
            main(
                ["trust", "list", "--endpoints", where, "--user", "u", "--password-stdin"],
                stdin=io.StringIO(etcd_password + "\n"),
                stdout=out,
                stderr=err,
            )
        texts += [out.getvalue(), err.getvalue()]
        settings = EtcdSettings((endpoint,), user="u", password=etcd_password)
        texts += [repr(settings), str(settings)]
        # A value holding a secret key, followed by a source.
        with settings.__class__((endpoint,)).connect() as c:
            secret_text = (tmp_path / "leaked.key").read_bytes()
            c.txn({f"{prefix}{leaked.public_txt}".encode(): secret_text})
            values = c.get_prefix(prefix.encode())[1]
        assert secret_text in values.values()  # the flow really stored one
        source = EtcdSource(endpoint, prefix=prefix)
        with zsec.CertStore(source) as store:
            assert store.wait_ready(10)
            texts += [repr(source), repr(store), *(repr(c) for c in store)]
        bad = EtcdSource(endpoint, prefix=prefix, user="u", password=etcd_password)
        texts.append(repr(bad))
    finally:
        root.removeHandler(collector)
        root.setLevel(old_level)
    everything = "\n".join(texts)
    assert "Trusted" in everything and "only its public key goes to etcd" in everything
    assert "etcd should hold public certificates only" in everything  # the flows ran
    assert etcd_password not in everything
    for form in _secret_forms(leaked):
        assert form not in everything
