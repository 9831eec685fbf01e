"""Fuzzing: hostile ZAP requests at a live authenticator, mutated files at every reader.

ZSEC_FUZZ_EXAMPLES=100000 .venv/bin/python -m pytest tests/test_fuzz.py runs it longer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zsec
from zsec import _zap
from zsec._passwords import parse_passwords
from zsec._zpl import loads

from .helpers import CZMQ_FIXTURES

KNOWN = zsec.Cert()


class Harness:
    """A live authenticator on its own context, and a DEALER talking ZAP to it."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.auth = zsec.Auth(self.ctx)
        passwords = Path(self.tmp.name) / "passwords"
        passwords.write_text("admin=secret\nuser=pw\n")
        self.auth.configure_plain("*", passwords)
        store = zsec.CertStore()
        cert = KNOWN.dup()
        cert.set_meta("name", "known")
        store.insert(cert)
        self.auth.configure_curve("*", store)
        self.auth.configure_curve("open", zsec.CURVE_ALLOW_ANY)
        self.auth.deny("203.0.113.0/24")
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.rcvtimeo = self.sock.sndtimeo = 5000
        self.sock.connect(zsec.ZAP_ENDPOINT)

    def ask(self, frames: list[bytes]) -> list[bytes]:
        self.sock.send_multipart([b"", *frames])
        return self.sock.recv_multipart()

    def close(self) -> None:
        self.auth.stop()
        self.ctx.destroy(linger=0)
        self.tmp.cleanup()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def _check_reply(reply: list[bytes]) -> None:
    assert len(reply) == 7, reply
    assert reply[0] == b"" and reply[1] == b"1.0"
    assert reply[3] in (b"200", b"300", b"400", b"500")
    if reply[3] == b"200":
        assert reply[5], "a 200 with an empty User-Id"
    else:
        assert reply[5] == b"" and reply[6] == b""


VALID = [
    [b"1.0", b"1", b"global", b"127.0.0.1", b"", b"NULL"],
    [b"1.0", b"2", b"global", b"127.0.0.1", b"", b"PLAIN", b"admin", b"secret"],
    [b"1.0", b"3", b"global", b"::ffff:127.0.0.1", b"", b"CURVE", KNOWN.public_key],
    [b"1.0", b"4", b"open", b"10.1.2.3", b"id", b"CURVE", bytes(32)],
]


@st.composite
def mutated_requests(draw: st.DrawFn) -> list[bytes]:
    frames = list(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "drop", "insert", "dup", "grow", "cut", "huge"]))
        at = draw(st.integers(0, max(0, len(frames) - 1)))
        if kind == "replace" and frames:
            frames[at] = draw(st.binary(max_size=300))
        elif kind == "drop" and frames:
            del frames[at]
        elif kind == "insert":
            frames.insert(at, draw(st.binary(max_size=40)))
        elif kind == "dup" and frames:
            frames.insert(at, frames[at])
        elif kind == "grow" and frames:
            frames[at] = frames[at] + draw(st.binary(min_size=1, max_size=300))
        elif kind == "cut" and frames:
            frames[at] = frames[at][: draw(st.integers(0, len(frames[at])))]
        elif kind == "huge" and frames:
            frames[at] = b"x" * draw(st.integers(256, 70_000))
    return frames


_fuzz_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@_fuzz_settings
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_arbitrary_frames_get_a_well_formed_reply(harness: Harness, frames: list[bytes]) -> None:
    _check_reply(harness.ask(frames))
    assert harness.auth.running


@_fuzz_settings
@given(mutated_requests())
def test_mutated_requests_get_a_well_formed_reply(harness: Harness, frames: list[bytes]) -> None:
    reply = harness.ask(frames)
    _check_reply(reply)
    assert harness.auth.running
    if frames in VALID:
        assert reply[3] == b"200"


def test_valid_requests_still_pass_after_the_storm(harness: Harness) -> None:
    for frames in VALID:
        assert harness.ask(frames)[3] == b"200"
    denied = [b"1.0", b"9", b"global", b"203.0.113.5", b"", b"NULL"]
    assert harness.ask(denied)[3] == b"400"


def test_memory_stays_flat_under_hostile_traffic(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small caches so that a short run crosses their limits many times.
    monkeypatch.setattr(_zap, "_CACHE_LIMIT", 300)
    # pytest keeps every log record it captures; that is not zsec's memory.
    monkeypatch.setattr(logging.getLogger("zsec.auth"), "disabled", True)
    rng = random.Random(11)

    def burst(count: int) -> None:
        for i in range(count):
            frames = list(rng.choice(VALID))
            frames[3] = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{i % 256}".encode()
            if frames[5] == b"CURVE":
                frames[6] = rng.randbytes(32)
            elif rng.random() < 0.3:
                frames[rng.randrange(len(frames))] = rng.randbytes(rng.randrange(300))
            harness.sock.send_multipart([b"", *frames])
            harness.sock.recv_multipart()

    burst(1_500)  # fill the bounded caches first
    tracemalloc.start()
    try:
        burst(1_500)
        first, _ = tracemalloc.get_traced_memory()
        burst(4_500)
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Three times the traffic, and no more than the caches' bounded size more memory.
    assert second - first < 256 * 1024, (first, second)
    assert harness.auth.running


# -- mutated files at every reader ------------------------------------------------------

FIXTURE_FILES = [
    *sorted(p.read_bytes() for p in (CZMQ_FIXTURES / "certs").iterdir() if p.is_file()),
    (CZMQ_FIXTURES / "passwords/passwords.txt").read_bytes(),
]


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(FIXTURE_FILES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "line", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(
                st.sampled_from(
                    [
                        b"\n",
                        b"\r",
                        b"    ",
                        b"\t",
                        b'"',
                        b"'",
                        b"#",
                        b"=",
                        b"\x00",
                        b"\xff",
                        b"curve\n",
                    ]
                )
            )
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 20))]
        elif kind == "line":
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
            data = bytearray(b"\n".join(lines))
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


@given(mutated_files())
def test_zpl_reader_on_mutated_files(data: bytes) -> None:
    with contextlib.suppress(zsec.ZplError):
        loads(data)


@given(mutated_files())
def test_password_reader_on_mutated_files(data: bytes) -> None:
    entries = parse_passwords(data)
    assert all(name and b"\n" not in name for name in entries)


@given(mutated_files())
def test_cert_load_on_mutated_files(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mutant.key")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            cert = zsec.Cert.load(path)
        except zsec.CertificateError:
            cert = None
        try:
            expected = zsec.Cert.from_bytes(data)
        except zsec.CertificateError:
            expected = None
        assert (cert is None) == (expected is None)
        # A store over the same file agrees, and never keeps a secret key.
        os.chmod(tmp, 0o700)
        with zsec.CertStore(tmp) as store:
            assert len(store) == (0 if cert is None else 1)
            if cert is not None:
                stored = store.lookup(cert.public_key)
                assert stored is not None and stored.secret_key is None
                assert stored.metadata == cert.metadata


@_fuzz_settings
@given(mutated_files())
def test_password_file_on_mutated_files(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "passwords"
    path.write_bytes(data)
    passwords = zsec.PasswordFile(path)
    for user, password in ((b"admin", b"Adm1n!pass"), (b"", b""), (b"\xff", b"\x00")):
        assert isinstance(passwords.check(user, password), bytes)
