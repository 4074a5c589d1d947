"""The generated policy contract must match its .proto (regenerate with the command in it), and the
gRPC runtime is the one pinned in pyproject.toml (its per-stream cost is part of the budget)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["policy", "otlp_trace"])
def test_generated_code_is_up_to_date(tmp_path, name: str):
    proto = f"ccr/v1/{name}.proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"protos/{proto}",
        ],
        cwd=ROOT,
        check=True,
    )
    for generated in (f"{name}_pb2.py", f"{name}_pb2.pyi"):
        fresh = (tmp_path / "ccr/v1" / generated).read_text()
        committed = (ROOT / "protos/ccr/v1" / generated).read_text()
        assert fresh == committed, (
            f"protos/ccr/v1/{generated} is stale; run: python -m grpc_tools.protoc -Iprotos "
            f"--python_out=protos --pyi_out=protos protos/{proto}"
        )


def test_grpcio_is_the_pinned_version():
    pinned = re.search(r'"grpcio==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned is not None, "pyproject.toml no longer pins grpcio: see the comment that was there"
    assert grpc.__version__ == pinned[1], (
        f"grpcio {grpc.__version__} is installed but {pinned[1]} is pinned: newer grpc.aio costs ~33% more "
        "CPU per ext_proc stream (docs/performance.md); re-measure with `ccr-gateway bench` before moving it"
    )
