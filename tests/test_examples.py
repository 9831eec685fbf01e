"""The examples prove their patterns, fail loudly when the gate is broken, and leave nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT

EXAMPLES = ROOT / "examples" / "security"
PATTERNS = {
    "hello.py": ("Hello", False),
    "grasslands.py": ("Grasslands", False),
    "strawhouse.py": ("Strawhouse", True),
    "woodhouse.py": ("Woodhouse", True),
    "stonehouse.py": ("Stonehouse", True),
    "ironhouse.py": ("Ironhouse", True),
    "ironhouse2.py": ("Ironhouse2", True),
    "pubsub.py": ("PUB-SUB", True),
    "reqrep.py": ("DEALER-ROUTER", True),
    "ironhouse_revoke.py": ("Ironhouse revoke", True),
    "ironhouse_fleet.py": ("Ironhouse fleet", True),
    "asyncio_ironhouse.py": ("Asyncio Ironhouse", True),
}
# Passwords the examples use; none may appear in their output.
PASSWORDS = ["secret", "guess"]


def _run(
    argv: list[str], cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    tmp = cwd.parent / f"{cwd.name}-tmpdir"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), **(extra_env or {})}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    # Nothing left behind: not in the working directory, not in the temp dir.
    assert list(cwd.iterdir()) == [], list(cwd.iterdir())
    assert list(tmp.iterdir()) == [], list(tmp.iterdir())
    return done


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(PATTERNS)


@pytest.mark.parametrize("script", sorted(PATTERNS))
def test_example_proves_its_pattern(script: str, tmp_path: Path) -> None:
    name, gated = PATTERNS[script]
    cwd = tmp_path / "run"
    cwd.mkdir()
    done = _run([sys.executable, str(EXAMPLES / script)], cwd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"{name} test OK"
    output = done.stdout + done.stderr
    if gated:
        # Verbose tracing shows both decisions.
        assert "zsec.auth: ALLOWED" in done.stderr
        assert "DENIED" in done.stderr or script == "stonehouse.py"
    for password in PASSWORDS:
        assert f"={password}" not in output and f" {password}" not in output


SABOTAGE = """
import zsec._zap as zap
_decide = zap.Policy.decide
def decide(self, request, *args, **kwargs):
    reply = _decide(self, request, *args, **kwargs)
    if isinstance(reply, zap.ZapReply) and reply.status_code != b"200":
        return zap.ZapReply(request.request_id, b"200", b"OK", b"intruder")
    return reply
zap.Policy.decide = decide
"""


# Stonehouse is not here: it admits any client by design, and its intruder
# (a wrong server key) is stopped by CURVE itself, not by the authenticator.
AUTHENTICATOR_GATED = sorted(
    s for s, (_, gated) in PATTERNS.items() if gated and s != "stonehouse.py"
)


@pytest.mark.parametrize("script", AUTHENTICATOR_GATED)
def test_example_fails_with_one_line_when_the_gate_is_open(script: str, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SABOTAGE)
    cwd = tmp_path / "run"
    cwd.mkdir()
    done = _run([sys.executable, str(EXAMPLES / script)], cwd, {"PYTHONPATH": str(hooks)})
    name = PATTERNS[script][0]
    assert done.returncode == 1
    failures = [line for line in done.stderr.splitlines() if "test FAILED" in line]
    assert len(failures) == 1 and failures[0].startswith(f"{name} test FAILED: ")
    assert "Traceback" not in done.stderr
    assert "test OK" not in done.stdout


def test_zsec_demo(tmp_path: Path) -> None:
    cwd = tmp_path / "run"
    cwd.mkdir()
    done = _run([sys.executable, "-m", "zsec", "demo"], cwd)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[:5]] == [
        "Grasslands",
        "Strawhouse",
        "Woodhouse",
        "Stonehouse",
        "Ironhouse",
    ]
    assert [line.split()[1] for line in lines[:5]] == ["none", "NULL", "PLAIN", "CURVE", "CURVE"]
    assert all(line.endswith(" ms)") for line in lines[:5])
    assert "refused by the authenticator (ZAP 400)" in lines[4]
    assert lines[5] == "All 5 patterns proven."
    for password in PASSWORDS:
        assert f" {password}" not in done.stdout + done.stderr


def test_zsec_demo_fails_with_one_line_when_the_gate_is_open(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SABOTAGE)
    cwd = tmp_path / "run"
    cwd.mkdir()
    done = _run([sys.executable, "-m", "zsec", "demo"], cwd, {"PYTHONPATH": str(hooks)})
    assert done.returncode == 1
    assert done.stderr.startswith("zsec demo: error: Strawhouse: the intruder")
    assert done.stderr.count("\n") == 1
