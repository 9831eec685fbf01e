"""The README's quick start is what CI runs."""

from __future__ import annotations

import re

from .helpers import ROOT


def _quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- quick-start:.*?-->\s*```sh\n(.*?)```", text, re.S)
    assert match, "README has no quick-start block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_quick_start() -> None:
    lines = (ROOT / ".ci/run").read_text().splitlines()
    commands = [
        line for line in lines if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert commands == _quick_start()
    assert len(commands) == 2
