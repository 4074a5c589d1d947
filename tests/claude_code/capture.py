"""Capture what the real Claude Code CLI sends, as the corpus the translator tests replay.

    python -m tests.claude_code.capture            # writes tests/fixtures/claude_code/<version>/

Runs every corpus scenario (tests.claude_code.scenarios) with the CLI pointed straight at the fake
provider (Anthropic format, so nothing is translated), takes the requests the fake recorded, scrubs
them (tests.claude_code.scrub) and writes one JSON file per request, named after the scenario and
the request's place in it, each holding the CLI version. A new CLI version is one run of this
(after bumping package.json and `npm install --prefix tests/claude_code`), then
`pytest tests/unit/test_claude_code_corpus.py --update-golden` and a review of the diff.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

from tests.claude_code.cli import CLIENT_KEY, ClaudeCode, find_binary
from tests.claude_code.scenarios import corpus
from tests.claude_code.scrub import scrub
from tests.e2e.gateway import FakeProvider

CORPUS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "claude_code"
# Request headers worth keeping: they say what the CLI claims to speak. Never credentials.
KEPT_HEADERS = ("anthropic-beta", "anthropic-version", "user-agent", "x-app")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder to write (default: tests/fixtures/claude_code/<version>)")
    args = parser.parse_args(argv)
    binary = find_binary()
    if binary is None:
        print("Claude Code is not installed: npm install --prefix tests/claude_code", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ccr-capture-") as tmp:
        workdir = Path(tmp)
        cli = ClaudeCode(binary, workdir)
        version = cli.version()
        out = args.out or CORPUS_DIR / version
        out.mkdir(parents=True, exist_ok=True)
        fake = FakeProvider.start(workdir)
        try:
            for scenario in corpus():
                fake.clear()
                run = cli.run(
                    scenario.prompt, fake.url, args=scenario.args, agents=scenario.agents, settings=scenario.settings
                )
                requests = [r for r in fake.requests() if r["path"].startswith("/v1/messages")]
                print(f"{scenario.name}: exit {run.returncode}, {len(requests)} request(s)", file=sys.stderr)
                for number, request in enumerate(requests, 1):
                    fixture = {
                        "cli_version": version,
                        "captured": datetime.date.today().isoformat(),
                        "scenario": scenario.name,
                        "request": number,
                        "path": request["path"],
                        "headers": {k: v for k, v in request["headers"].items() if k in KEPT_HEADERS},
                        "body": scrub(
                            request["body"],
                            project=str(workdir / "project"),
                            home=str(workdir / "home"),
                            secrets=(CLIENT_KEY,),
                        ),
                    }
                    path = out / f"{scenario.name}-{number}.json"
                    path.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
        finally:
            fake.stop()
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
