"""The benchmark harness's pure parts: deterministic workloads, baselines, the docs rewrite, the
case check (tests/e2e/test_bench_smoke.py runs the harness itself)."""

from __future__ import annotations

import argparse
import json

import pytest

from bench import cli, report
from bench.workloads import CASES, SIZES, claude_code_body


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bodies_have_the_exact_size_and_are_the_same_every_time() -> None:
    for size in SIZES.values():
        body = claude_code_body(size)
        assert len(body) == size
        assert body == claude_code_body(size)
    big = json.loads(claude_code_body(SIZES["40k"]))
    assert len(big["tools"]) == 16
    kinds = {block["type"] for message in big["messages"] for block in message["content"]}
    assert {"tool_use", "tool_result"} <= kinds


def test_every_case_has_a_baseline_body_for_plain_envoy() -> None:
    for case in CASES:
        body = json.loads(case.baseline_body())
        assert ("messages" in body) and (body["model"] == ("bench-openai" if case.translated else "bench-anthropic"))
        assert body.get("stream", False) == case.stream


def test_a_rewrite_keeps_the_hand_written_notes_and_only_them() -> None:
    old = f"# Performance\nold figures\n\n{report.NOTES_MARKER}\n## By hand\nworker scaling\n"
    new = report.with_kept_notes("# Performance\nnew figures\n", old)
    assert new == f"# Performance\nnew figures\n\n{report.NOTES_MARKER}\n## By hand\nworker scaling\n"
    assert report.with_kept_notes("# new\n", "# old, no notes\n") == "# new\n"
    assert report.with_kept_notes("# new\n", None) == "# new\n"


def test_unknown_case_is_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(_args("--cases", "no-such-case")) == 2
    assert "unknown case" in capsys.readouterr().err
