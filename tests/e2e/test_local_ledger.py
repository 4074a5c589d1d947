"""With no storage configured, `up` keeps every request's usage record in the local SQLite ledger, and
`usage report` / `usage export` read it: the laptop path of the ledger, through the real gateway."""

from __future__ import annotations

import json
import subprocess
import sys

import anthropic
import openai

from tests.e2e.gateway import Gateway, wait_until


def _usage(*args: str) -> str:
    # The gateway's workers and this command both find the ledger through $XDG_DATA_HOME
    # (tests/conftest.py points it at a temporary directory for the whole session).
    command = [sys.executable, "-m", "ccr_gateway.cli", "usage", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout


def _exported() -> dict[str, dict]:
    return {record["request_id"]: record for record in map(json.loads, _usage("export", "--since", "1h").splitlines())}


def test_answered_requests_land_in_the_local_ledger_and_its_reports(gateway: Gateway):
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="any", max_retries=0)
    answer = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
    )
    ok_id = answer.headers["request-id"]
    gpt = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="any", max_retries=0)
    try:
        gpt.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    except openai.NotFoundError as exc:
        refused_id = exc.response.headers["request-id"]

    wait_until(lambda: {ok_id, refused_id} <= set(_exported()), 15, "both records in the local ledger")
    records = _exported()
    ok, refused = records[ok_id], records[refused_id]
    assert (ok["status"], ok["usage_source"], ok["client_api"]) == (200, "provider", "anthropic")
    assert ok["input_tokens"] > 0 and ok["output_tokens"] > 0 and ok["provider"] == "fake-anthropic"
    assert (refused["status"], refused["provider"], refused["attempts"]) == (404, None, 0)
    assert refused["requested_model"] == "no-such-model"

    report = json.loads(_usage("report", "--since", "1h", "--by", "status", "--format", "json"))
    assert report["time_zone"] == "UTC"
    by_status = {row["status"]: row for row in report["rows"]}
    assert by_status[404]["requests"] >= 1 and by_status[404]["errors"] >= 1, report
    assert by_status[200]["input_tokens"] > 0, report
    assert report["total"]["requests"] == sum(row["requests"] for row in report["rows"])
