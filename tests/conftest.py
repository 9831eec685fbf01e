"""Fixtures and Hypothesis profiles; plain helpers live in helpers.py."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, settings

import zsec

from .helpers import CZMQ_FIXTURES

# Tests write files with the modes of a umask 022 system. Under the umask 002
# of many desktop accounts (user private groups) every file they write would
# be group-writable, which the strict owner/mode checks rightly refuse.
os.umask(0o022)

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# ZSEC_FUZZ_EXAMPLES=100000 pytest ... runs the property tests much longer.
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("ZSEC_FUZZ_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile("long" if os.environ.get("ZSEC_FUZZ_EXAMPLES") else "ci")


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    """A fresh zmq context, destroyed (linger 0) after the test."""
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def czmq_dir(tmp_path: Path) -> Path:
    """A writable copy of the CZMQ fixtures."""
    target = tmp_path / "czmq"
    shutil.copytree(CZMQ_FIXTURES, target)
    for path in target.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    return target


@pytest.fixture
def passwords(tmp_path: Path) -> zsec.PasswordFile:
    """A password file with admin/secret and guest/guest-pw, re-checked on every login."""
    path = tmp_path / "passwords.txt"
    path.write_bytes(b"admin=secret\nguest=guest-pw\n")
    return zsec.PasswordFile(path, check_interval=0)


@pytest.fixture
def auth(ctx: zmq.Context[Any]) -> Iterator[zsec.Auth]:
    """A running authenticator on the test's context, stopped afterwards."""
    with zsec.Auth(ctx) as authenticator:
        yield authenticator


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[Any]:
    """A real etcd on 127.0.0.1 in a temp dir, shared by one test module (use unique prefixes)."""
    from .etcd_server import EtcdServer

    server = EtcdServer().start()
    yield server
    server.stop()
