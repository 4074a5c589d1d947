"""The walls between the rooms, as a process sees them: importing every module of one service
loads no module of the other (the import-linter contracts in pyproject.toml say the same of the
source; CI runs `lint-imports` too)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def modules_of(package: str) -> list[str]:
    path = ROOT / package.replace(".", "/")
    found = pkgutil.walk_packages([str(path)], prefix=f"{package}.")
    return [m.name for m in found if not m.name.rsplit(".", 1)[-1].startswith("_")]


@pytest.mark.parametrize(
    ("package", "foreign"),
    [
        ("extproc", ("control_plane", "ccr_gateway", "fake_provider", "bench")),
        ("control_plane", ("extproc", "ccr_gateway", "fake_provider", "bench")),
    ],
)
def test_a_service_loads_nothing_of_the_other(package: str, foreign: tuple[str, ...]) -> None:
    imports = "; ".join(f"import {name}" for name in [package, *modules_of(package)])
    check = f"import sys; {imports}; print(sorted(m for m in sys.modules if m.split('.')[0] in {foreign!r}))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]", f"{package} loads {done.stdout.strip()}"
