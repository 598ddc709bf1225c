"""Shared helpers of the deployment tests: repo paths and required binaries.

A binary these tests need (promtool, docker-compose, prometheus) must be installed: a
missing one fails the test with the install line, it never skips (CI installs them).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

INSTALL_HINT = {
    "promtool": "apt-get install -y --no-install-recommends prometheus",
    "prometheus": "apt-get install -y --no-install-recommends prometheus",
    "docker-compose": "apt-get install -y --no-install-recommends docker-compose",
}


def require_binary(name: str) -> str:
    """The binary's path, or fail the test saying how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT.get(name, name)}")
    return path


def run_tool(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run a CLI tool, capturing its output as text."""
    binary = require_binary(argv[0])
    return subprocess.run(
        [binary, *argv[1:]], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )
