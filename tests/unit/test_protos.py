"""The generated policy contract must match its .proto (regenerate with the command in it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_policy_code_is_up_to_date(tmp_path):
    proto = "ccr/v1/policy.proto"
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
    for generated in ("policy_pb2.py", "policy_pb2.pyi"):
        fresh = (tmp_path / "ccr/v1" / generated).read_text()
        committed = (ROOT / "protos/ccr/v1" / generated).read_text()
        assert fresh == committed, (
            f"protos/ccr/v1/{generated} is stale; run: python -m grpc_tools.protoc -Iprotos "
            "--python_out=protos --pyi_out=protos protos/ccr/v1/policy.proto"
        )
