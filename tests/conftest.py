"""Shared test helpers: fixture locations, Hypothesis profiles, polling."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
# The golden files made by the real CZMQ live in the shared folder beside the
# project; tests/fixtures/czmq is a copy of them for machines without it.
_SHARED = ROOT.parent / "shared" / "fixtures" / "czmq"
CZMQ_FIXTURES = _SHARED if (_SHARED / "manifest.json").is_file() else ROOT / "tests/fixtures/czmq"

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

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.005, what: str = ""
) -> T:
    """Poll ``condition`` until it returns a truthy value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


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
