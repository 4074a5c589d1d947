"""The benchmark harness's pure parts: deterministic workloads, the Envoy configs of the baseline and
the upstream, the generated gateway policy, what is derived and judged from a results dict, the docs
rewrite, the case check (tests/e2e/test_bench_smoke.py runs the harness itself)."""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import cli, document, environment, procfs, report
from bench.baseline import (
    ANTHROPIC_DIRECT_ANSWER,
    DIRECT_ANSWER_TEXT,
    DIRECT_ANSWERS,
    OPENAI_DIRECT_ANSWER,
    UPSTREAM_HEADER,
    UPSTREAM_HEADER_DIRECT,
    baseline_config,
    upstream_config,
)
from bench.environment import (
    BENCH_KEY_LIMITS,
    GATEWAY_RUNS,
    REDIS_URL,
    Processes,
    auth_section,
    create_bench_key,
    gateway_policy,
)
from bench.runner import Bench, Settings, answer_text
from bench.targets import (
    GATEWAY,
    GATEWAY_AUTH,
    GATEWAY_AUTH_REDIS,
    GATEWAY_EXTPROC,
    GATEWAY_NO_LEDGER,
    MET,
    NOT_MEASURED,
    NOT_MET,
    PLAIN,
    TARGET_BY_DECISION_PATH,
)
from bench.workloads import (
    ANTHROPIC_DIRECT_CACHED_MODEL,
    ANTHROPIC_DIRECT_MODEL,
    CASES,
    CASES_BY_NAME,
    MAIN_CASE,
    MAX_OUTPUT_TOKENS,
    OPENAI_DIRECT_MODEL,
    PACED_STREAM_CASE,
    PASSTHROUGH_CASE,
    PASSTHROUGH_STREAM_CASE,
    SIZES,
    STREAM_CASE,
    claude_code_body,
)
from control_plane.policy import load_policy
from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import parse_presented
from extproc.translate.base import Api, Target
from extproc.translate.client_request import parse_request
from extproc.translate.registry import translator_for


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


# --- workloads ---------------------------------------------------------------------------------


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
        assert "messages" in body and body["model"] == case.model == json.loads(case.client_body())["model"]
        assert body.get("stream", False) == case.stream
        # The translator's, not the client's (an OpenAI-format provider's field).
        assert ("max_completion_tokens" in body) == (case.translated and not case.from_other_client)


def test_the_client_api_cases_send_one_conversation_to_an_anthropic_provider() -> None:
    chat, responses = CASES_BY_NAME["chat-to-anthropic-40k"], CASES_BY_NAME["responses-to-anthropic-40k"]
    assert (chat.client_path(), responses.client_path()) == ("/v1/chat/completions", "/v1/responses")
    assert "messages" in json.loads(chat.client_body()) and "input" in json.loads(responses.client_body())
    upstream = [json.loads(case.baseline_body()) for case in (chat, responses)]
    assert all(body["model"] == ANTHROPIC_DIRECT_MODEL for body in upstream)
    assert len(upstream[0]["messages"]) == len(upstream[1]["messages"])  # the same turns either way
    assert all(abs(len(case.client_body()) - SIZES["40k"]) < 4096 for case in (chat, responses))


def test_non_streaming_cases_go_to_the_upstream_envoy_on_both_sides() -> None:
    for case in CASES:
        assert case.direct == (not case.stream)
        direct_models = (ANTHROPIC_DIRECT_MODEL, OPENAI_DIRECT_MODEL, ANTHROPIC_DIRECT_CACHED_MODEL)
        assert (case.model in direct_models) == case.direct, case.name
        # Only plain Envoy is told by a header; the gateway decides by the model name.
        assert (case.baseline_headers().get(UPSTREAM_HEADER) == UPSTREAM_HEADER_DIRECT) == case.direct
        assert UPSTREAM_HEADER not in case.client_headers()


# --- the Envoy configs -------------------------------------------------------------------------


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["route_config"]["virtual_hosts"][0]["routes"]


def test_the_upstream_envoy_answers_each_api_with_a_canned_valid_answer() -> None:
    config = yaml.safe_load(
        yaml.safe_dump(upstream_config(listen_port=1001, admin_port=1002, max_request_bytes=1 << 20))
    )
    answered = {}
    for route in _routes(config):
        response = route["direct_response"]
        if response["status"] == 200:
            assert route["match"]["headers"] == [{"name": ":method", "string_match": {"exact": "POST"}}]
            answered[route["match"]["path"]] = response["body"]["inline_string"].encode()
        else:
            assert response["status"] == 404 and route["match"] == {"prefix": "/"}  # anything else, last
            json.loads(response["body"]["inline_string"])
    assert answered == DIRECT_ANSWERS
    vhost = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = [f["name"] for f in vhost["http_filters"]]
    assert filters == ["envoy.filters.http.buffer", "envoy.filters.http.router"]  # whole request, then answer
    content_type = vhost["route_config"]["virtual_hosts"][0]["response_headers_to_add"][0]["header"]
    assert content_type == {"key": "content-type", "value": "application/json"}

    openai = json.loads(DIRECT_ANSWERS["/v1/chat/completions"])
    assert openai == OPENAI_DIRECT_ANSWER and openai["object"] == "chat.completion"
    assert openai["choices"][0]["finish_reason"] == "stop" and openai["model"] == OPENAI_DIRECT_MODEL
    usage = openai["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    anthropic = json.loads(DIRECT_ANSWERS["/v1/messages"])
    assert anthropic == ANTHROPIC_DIRECT_ANSWER and anthropic["model"] == ANTHROPIC_DIRECT_MODEL
    assert (anthropic["type"], anthropic["role"], anthropic["stop_reason"]) == ("message", "assistant", "end_turn")
    assert set(anthropic["usage"]) == {"input_tokens", "output_tokens"}
    # The bench's own check reads both as the canned text.
    assert answer_text(DIRECT_ANSWERS["/v1/chat/completions"], openai=True) == DIRECT_ANSWER_TEXT
    assert answer_text(DIRECT_ANSWERS["/v1/messages"], openai=False) == DIRECT_ANSWER_TEXT
    assert answer_text(b'{"type": "error"}', openai=False) is None
    assert answer_text(b"not json", openai=True) is None


def test_the_translated_cases_direct_answer_is_a_completion_the_gateway_translates() -> None:
    case = CASES_BY_NAME[MAIN_CASE]
    translator = translator_for(Api.ANTHROPIC, Api.OPENAI)
    assert translator is not None
    target = Target(model=case.model, base_path="/v1", max_output_tokens=MAX_OUTPUT_TOKENS)
    upstream = translator.request(parse_request(Api.ANTHROPIC, json.loads(case.client_body())), target)
    assert upstream.path == case.baseline_path() and upstream.body == case.baseline_body()
    translator.response_headers(200, {"content-type": "application/json"})
    message = json.loads(translator.response_body(DIRECT_ANSWERS[upstream.path], True).body)
    assert message["type"] == "message" and message["stop_reason"] == "end_turn"
    assert message["content"] == [{"type": "text", "text": DIRECT_ANSWER_TEXT}]
    assert answer_text(json.dumps(message).encode(), openai=False) == DIRECT_ANSWER_TEXT


def test_plain_envoy_routes_by_the_bench_header_to_the_upstream_envoy() -> None:
    config = baseline_config(
        listen_port=1001, admin_port=1002, upstream_port=1003, direct_upstream_port=1004, max_request_bytes=1 << 20
    )
    direct, default = _routes(config)
    assert direct["match"]["headers"] == [{"name": UPSTREAM_HEADER, "string_match": {"exact": UPSTREAM_HEADER_DIRECT}}]
    assert (direct["route"]["cluster"], default["route"]["cluster"]) == ("upstream_envoy", "fake_provider")
    ports = {
        cluster["name"]: cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"
        ]["port_value"]
        for cluster in config["static_resources"]["clusters"]
    }
    assert ports == {"fake_provider": 1003, "upstream_envoy": 1004}


@pytest.mark.parametrize("decision", ["hop", "ext_proc"])
def test_the_generated_policy_is_valid_and_serves_every_cases_model(decision: str) -> None:
    policy = load_policy(yaml.safe_dump(gateway_policy(8080, 9001, 9002, decision)))
    assert policy.decision_path == decision
    port_by_model = {model.name: provider.port for provider in policy.providers for model in provider.models}
    for case in CASES:
        assert port_by_model[case.model] == (9002 if case.direct else 9001), case.name


def test_the_auth_variants_policy_requires_keys_from_the_work_dirs_store(tmp_path: Path) -> None:
    keys_db = tmp_path / "gateway-auth-keys.db"
    in_process = load_policy(yaml.safe_dump(gateway_policy(8080, 9001, 9002, "hop", auth_section(keys_db, False))))
    assert in_process.decision_path == "hop"
    assert (in_process.auth.required, in_process.auth.keys_sqlite) == (True, str(keys_db))
    assert in_process.auth.limits.redis is None  # counted in each worker
    in_redis = load_policy(yaml.safe_dump(gateway_policy(8080, 9001, 9002, "hop", auth_section(keys_db, True))))
    assert in_redis.auth.limits.redis == REDIS_URL == "redis://127.0.0.1:6379/0"
    # The gateway it is compared with has no auth section at all.
    assert load_policy(yaml.safe_dump(gateway_policy(8080, 9001, 9002, "hop"))).auth.required is False


def test_every_paths_name_has_a_target_and_says_what_it_runs() -> None:
    assert set(GATEWAY_RUNS) == set(TARGET_BY_DECISION_PATH)
    assert {path: run.decision for path, run in GATEWAY_RUNS.items()} == {
        "hop": "hop",
        "ext_proc": "ext_proc",
        "hop-no-ledger": "hop",
        "hop-auth": "hop",
        "hop-auth-redis": "hop",
    }
    assert [path for path, run in GATEWAY_RUNS.items() if run.auth] == ["hop-auth", "hop-auth-redis"]
    assert [path for path, run in GATEWAY_RUNS.items() if run.redis_limits] == ["hop-auth-redis"]
    assert [path for path, run in GATEWAY_RUNS.items() if not run.ledger] == ["hop-no-ledger"]


def test_the_bench_key_is_stored_before_the_gateway_starts_with_limits_it_never_reaches(tmp_path: Path) -> None:
    keys_db = tmp_path / "keys.db"
    presented = create_bench_key(keys_db)
    parsed = parse_presented(presented)
    assert parsed is not None

    async def stored() -> Any:
        store = SqliteKeyStore(keys_db)
        try:
            return await store.get(parsed[0])
        finally:
            await store.close()

    record = asyncio.run(stored())
    assert record is not None and record.verify(parsed[1], 0.0)
    assert (record.key.rpm, record.key.tpm) == (BENCH_KEY_LIMITS["rpm"], BENCH_KEY_LIMITS["tpm"])
    assert record.key.budget_usd is None and record.key.max_parallel is None and not record.key.models


def test_a_keyed_gateway_gets_its_key_where_the_others_get_the_clients_provider_key(tmp_path: Path) -> None:
    bench = Bench(Settings(cases=(MAIN_CASE,)), lambda message: None, Processes(tmp_path))
    case = CASES_BY_NAME[MAIN_CASE]
    bodies = bench.write_bodies(case)
    components = procfs.Components(dict)
    hop = environment.Target(GATEWAY, "http://127.0.0.1:1", "", components, "hop")
    keyed = environment.Target(GATEWAY_AUTH, "http://127.0.0.1:2", "", components, "hop-auth", api_key="sk-ccr-bench")
    hop_headers, keyed_headers = bench.spec(hop, case, bodies).headers, bench.spec(keyed, case, bodies).headers
    assert hop_headers == case.client_headers()  # no virtual key: the run without auth
    assert keyed_headers == hop_headers | {"x-api-key": "sk-ccr-bench"}  # the same header, its value differs
    assert bench.spec(keyed, case, bodies).body_path == bench.spec(hop, case, bodies).body_path


def test_listening_pids_finds_the_process_behind_a_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert os.getpid() in procfs.listening_pids(port)
    with socket.socket() as bound:  # bound, not listening
        bound.bind(("127.0.0.1", 0))
        assert procfs.listening_pids(bound.getsockname()[1]) == []


# --- the command line --------------------------------------------------------------------------


def test_unknown_case_is_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(_args("--cases", "no-such-case")) == 2
    assert "unknown case" in capsys.readouterr().err


def test_paths_choose_the_gateways_and_hop_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.settings_from_args(_args()).paths == ("hop", "ext_proc")
    assert cli.settings_from_args(_args("--paths", "hop")).paths == ("hop",)
    assert cli.settings_from_args(_args("--paths", "ext_proc, hop")).paths == ("hop", "ext_proc")
    # The ledger's cost, on request: the hop gateway again, with `up --no-ledger`.
    assert cli.settings_from_args(_args("--paths", "hop-no-ledger,hop")).paths == ("hop", "hop-no-ledger")
    # What keys and limits cost, on request: the hop gateway again, keys required.
    assert cli.settings_from_args(_args("--paths", "hop-auth-redis, hop-auth,hop")).paths == (
        "hop",
        "hop-auth",
        "hop-auth-redis",
    )
    assert "--paths hop" in cli.command_line(_args("--paths", "hop"))
    assert "--paths hop,hop-auth,hop-auth-redis" in cli.command_line(_args("--paths", "hop,hop-auth,hop-auth-redis"))
    assert "--paths" not in cli.command_line(_args())
    for paths in ("ext_proc", "hop,grpc", "hop-auth", "hop,hop-auth-memcached"):
        assert cli.run(_args("--paths", paths)) == 2
        err = capsys.readouterr().err
        assert "--paths" in err and "hop-auth, hop-auth-redis" in err


def test_limits_in_redis_are_skipped_with_a_message_when_nothing_listens_on_6379(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = cli.settings_from_args(_args("--paths", "hop,hop-auth,hop-auth-redis"))
    assert cli.without_unreachable_redis(settings, listening=lambda: False).paths == ("hop", "hop-auth")
    err = capsys.readouterr().err
    assert "skipping hop-auth-redis" in err and "127.0.0.1:6379" in err
    assert cli.without_unreachable_redis(settings, listening=lambda: True) == settings
    plain = cli.settings_from_args(_args("--paths", "hop,hop-auth"))
    assert cli.without_unreachable_redis(plain, listening=lambda: False) == plain
    assert capsys.readouterr().err == ""


# --- derived numbers and the budget ------------------------------------------------------------


def _window(
    target: str,
    rps: float,
    p99: float,
    cpu: dict[str, float],
    per_request: dict[str, float] | None = None,
) -> dict[str, Any]:
    window: dict[str, Any] = {
        "target": target,
        "load": {
            "rps": rps,
            "requests": int(rps * 10),
            "errors": {},
            "latency_ms": {"p50": p99 / 3, "p90": p99 / 2, "p99": p99},
        },
        "cpu_ms_per_request": {"fake_provider": 0.0, "upstream": 0.1, "loadgen": 0.2, **cpu},
        "rss_mb": {"envoy": 60.0, **({"ext_proc": 90.0} if per_request is not None else {})},
        "warnings": [],
    }
    if per_request is not None:
        window["ext_proc_per_request"] = per_request
    return window


def _hop(hops: float, streams: float = 0.0, msgs: float = 0.0) -> dict[str, float]:
    return {"hop_calls": hops, "streams_started": streams, "stream_msgs_sent": msgs, "stream_msgs_received": msgs}


def _case(name: str, gateway: dict[str, Any], extproc: dict[str, Any], events: int = 0) -> dict[str, Any]:
    case = CASES_BY_NAME[name]
    return {
        "name": name,
        "description": case.description,
        "translated": case.translated,
        "stream": case.stream,
        "chunks": case.chunks,
        "upstream_sse_events": events,
        PLAIN: _window(PLAIN, 10_000, 2.0, {"envoy": 0.1}),
        GATEWAY: gateway,
        GATEWAY_EXTPROC: extproc,
    }


def _results() -> dict[str, Any]:
    """A run on which the hop gateway meets every budget line (figures made up, shapes real)."""
    cases = [
        _case(
            MAIN_CASE,
            _window(GATEWAY, 2_500, 6.0, {"envoy": 0.5, "ext_proc": 0.3, "control_plane": 0.0}, _hop(2)),
            _window(GATEWAY_EXTPROC, 1_000, 9.0, {"envoy": 0.8, "ext_proc": 0.9}, _hop(0, 1, 3)),
        ),
        _case(
            PASSTHROUGH_CASE,
            _window(GATEWAY, 4_000, 5.0, {"envoy": 0.3, "ext_proc": 0.15}, _hop(1)),
            _window(GATEWAY_EXTPROC, 1_500, 8.0, {"envoy": 0.6, "ext_proc": 0.5}, _hop(0, 1, 2)),
        ),
        _case(
            STREAM_CASE,
            _window(GATEWAY, 1_500, 9.0, {"envoy": 0.9, "ext_proc": 0.3 + 64 * 0.05}, _hop(1, 1, 4)),
            _window(GATEWAY_EXTPROC, 800, 12.0, {"envoy": 1.0, "ext_proc": 0.9 + 64 * 0.06}, _hop(0, 1, 6)),
            events=64,
        ),
        _case(
            PACED_STREAM_CASE,
            _window(GATEWAY, 15, 1100.0, {"envoy": 2.0, "ext_proc": 0.3 + 204 * 0.1}, _hop(1, 1, 4)),
            _window(GATEWAY_EXTPROC, 15, 1100.0, {"envoy": 2.0, "ext_proc": 0.9 + 204 * 0.1}, _hop(0, 1, 6)),
            events=204,
        ),
        _case(
            PASSTHROUGH_STREAM_CASE,
            _window(GATEWAY, 3_000, 6.0, {"envoy": 0.4, "ext_proc": 0.15}, _hop(1)),
            _window(GATEWAY_EXTPROC, 1_200, 8.0, {"envoy": 0.7, "ext_proc": 0.5}, _hop(0, 1, 2)),
            events=64,
        ),
    ]
    half = {
        "case": MAIN_CASE,
        "rate": 1250.0,
        PLAIN: _window(PLAIN, 1250, 3.0, {"envoy": 0.1}),
        GATEWAY: _window(GATEWAY, 1250, 9.5, {"envoy": 0.5, "ext_proc": 0.3}, _hop(2)),
        GATEWAY_EXTPROC: _window(GATEWAY_EXTPROC, 1250, 30.0, {"envoy": 0.8, "ext_proc": 0.9}, _hop(0, 1, 3)),
    }
    at_rest = {
        PLAIN: {"rss_mb": {"envoy": 40.0}, "processes": {"envoy": 1}, "rss_mb_per_process": {"envoy": [40.0]}},
        GATEWAY: {
            "rss_mb": {"envoy": 60.0, "ext_proc": 110.0, "control_plane": 70.0},
            "processes": {"envoy": 1, "ext_proc": 2, "control_plane": 2},
            "rss_mb_per_process": {"envoy": [60.0], "ext_proc": [55.0, 55.0], "control_plane": [45.0, 25.0]},
            "footprint_mb": 183.0,
        },
    }
    soak = {
        "case": MAIN_CASE,
        "requests": 200_000,
        "errors": 0,
        "growth_pct": {"envoy": 1.0, "ext_proc": 2.0},
        "rss_mb_start": {"envoy": 60.0, "ext_proc": 110.0},
        "rss_mb_end": {"envoy": 60.6, "ext_proc": 112.2},
        "trajectory": [{"requests": 0, "rss_mb": {"envoy": 60.0, "ext_proc": 110.0}}],
    }
    return {"cases": cases, "half_load": half, "at_rest": at_rest, "soak": soak}


def _verdicts(results: dict[str, Any]) -> dict[str, str]:
    summary = report.summarize(results)
    return {line["budget"]: line["verdict"] for line in summary["budget"]}


def _verdict(verdicts: dict[str, str], words: str) -> str:
    (verdict,) = [v for text, v in verdicts.items() if words in text]
    return verdict


def test_derive_compares_each_gateway_with_plain_envoy() -> None:
    derived = report.derive(_results())
    hop, extproc = derived[MAIN_CASE][GATEWAY], derived[MAIN_CASE][GATEWAY_EXTPROC]
    assert (hop["rps_ratio"], extproc["rps_ratio"]) == (0.25, 0.1)
    assert hop["gateway_cpu_ms_per_request"] == 0.8 and hop["plain_envoy_cpu_ms_per_request"] == 0.1
    assert hop["cpu_multiple"] == 8.0 and extproc["cpu_multiple"] == 17.0
    assert hop["python_cpu_ms_per_request"] == 0.3
    assert (hop["hop_calls_per_request"], hop["streams_per_request"]) == (2, 0)
    assert (extproc["hop_calls_per_request"], extproc["streams_per_request"], extproc["msgs_per_request"]) == (0, 1, 3)
    assert hop["added_p99_ms"] == 4.0
    # Per chunk: each target against its own non-streamed reference.
    stream = derived[STREAM_CASE]
    assert stream[GATEWAY]["ext_proc_cpu_ms_per_chunk"] == 0.05
    assert stream[GATEWAY_EXTPROC]["ext_proc_cpu_ms_per_chunk"] == 0.06
    assert stream[GATEWAY]["ext_proc_msgs_per_chunk"] == round(4 / 64, 4)
    assert derived[PASSTHROUGH_STREAM_CASE][GATEWAY]["ext_proc_msgs_per_chunk"] == 0.0
    assert derived["half_load"]["rate"] == 1250.0
    assert derived["half_load"][GATEWAY]["added_p99_ms"] == 6.5
    assert derived["half_load"][GATEWAY_EXTPROC]["added_p99_ms"] == 27.0


def test_every_budget_line_is_met_by_a_good_run_and_judges_only_the_hop_gateway() -> None:
    summary = report.summarize(_results())
    assert len(summary["budget"]) == 12
    assert {line["verdict"] for line in summary["budget"]} == {MET}, summary["budget"]
    # The ext_proc gateway's figures (10% of plain Envoy, 17x its CPU, +27 ms) are shown, not judged.
    out = report.stdout_report(summary)
    assert "gateway-ext_proc" in out and "NOT MET" not in out


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda r: r["cases"][0][GATEWAY]["load"].update(rps=1_900), "translated non-streaming 40 KB: gateway req/s"),
        (lambda r: r["cases"][1][GATEWAY]["load"].update(rps=2_900), "passthrough non-streaming 40 KB: gateway req/s"),
        (lambda r: r["cases"][0][GATEWAY]["cpu_ms_per_request"].update(envoy=0.75), "10x plain Envoy"),
        (lambda r: r["cases"][0][GATEWAY]["cpu_ms_per_request"].update(ext_proc=0.36), "0.35 ms/request"),
        (lambda r: r["cases"][1][GATEWAY]["cpu_ms_per_request"].update(ext_proc=0.21), "0.2 ms/request"),
        (lambda r: r["cases"][2][GATEWAY]["cpu_ms_per_request"].update(ext_proc=0.3 + 64 * 0.21), "at once"),
        (lambda r: r["cases"][3][GATEWAY]["cpu_ms_per_request"].update(ext_proc=0.3 + 204 * 0.21), "one by one"),
        (lambda r: r["cases"][4][GATEWAY]["ext_proc_per_request"].update(stream_msgs_sent=64), "no ext_proc message"),
        (lambda r: r["half_load"][GATEWAY]["load"]["latency_ms"].update(p99=13.5), "added p99"),
        (lambda r: r["soak"]["growth_pct"].update(ext_proc=10.0), "RSS growth"),
        (lambda r: r["at_rest"][GATEWAY]["rss_mb_per_process"].update(ext_proc=[55.0, 61.0]), "an ext_proc worker"),
        (lambda r: r["at_rest"][GATEWAY].update(footprint_mb=251.0), "whole gateway"),
    ],
)
def test_each_budget_line_is_not_met_past_its_limit(change: Any, words: str) -> None:
    results = _results()
    change(results)
    verdicts = _verdicts(results)
    assert _verdict(verdicts, words) == NOT_MET
    assert [text for text, v in verdicts.items() if v != MET] == [t for t in verdicts if words in t]


def test_the_whole_gateways_memory_is_judged_on_its_footprint_with_the_rss_sum_beside_it() -> None:
    results = _results()
    results["at_rest"][GATEWAY]["rss_mb"].update(control_plane=120.0)  # RSS sum 290: shared pages per process
    (line,) = [line for line in report.summarize(results)["budget"] if "whole gateway" in line["budget"]]
    assert line["verdict"] == MET and "footprint" in line["budget"] and line["value"] == "183.0 MB"
    assert "290.0 MB" in line["detail"]
    del results["at_rest"][GATEWAY]["footprint_mb"]  # results from before it was recorded: their RSS sum
    assert _verdict(_verdicts(results), "whole gateway") == NOT_MET


def test_budget_lines_without_their_measurement_say_not_measured() -> None:
    verdicts = _verdicts({"cases": []})
    assert len(verdicts) == 12 and set(verdicts.values()) == {NOT_MEASURED}
    results = _results()
    results["soak"]["requests"] = 1_000  # too short a soak is not a verdict
    results["at_rest"][GATEWAY]["rss_mb_per_process"]["ext_proc"] = [40.0, 40.0, 40.0]
    verdicts = _verdicts(results)
    assert _verdict(verdicts, "RSS growth") == NOT_MEASURED
    assert _verdict(verdicts, "whole gateway") == NOT_MEASURED  # the budget is for two workers
    assert _verdict(verdicts, "an ext_proc worker") == MET


def test_every_target_is_rendered_and_old_two_target_results_still_render() -> None:
    summary = report.summarize(_results())
    main_rows, ratio_rows = report.main_rows(summary), report.ratio_rows(summary, summary["derived"])
    assert [row[1] for row in main_rows[:3]] == [PLAIN, GATEWAY, GATEWAY_EXTPROC]
    assert len(main_rows) == 3 * 5 + 3 and len(ratio_rows) == 2 * 5 + 2
    assert all(len(row) == len(report.RATIO_HEADER) for row in ratio_rows)
    assert [row[0] for row in report.at_rest_rows(summary)] == [PLAIN, GATEWAY]
    # Half of the hop gateway's max (1,250 req/s) is past the ext_proc gateway's own (1,000 req/s).
    assert report.run_warnings(summary) == [
        "half load via gateway-ext_proc: 1250 req/s is 125% of its own max (1000 req/s), so its latency there is "
        "mostly queueing"
    ]
    doc = document.markdown(summary | _machine(), "ccr-gateway bench")
    assert "## Decision paths" in doc and "| translated-40k | gateway-ext_proc |" in doc
    assert "upstream Envoy" in doc

    old = copy.deepcopy(_results())
    for record in (*old["cases"], old["half_load"]):
        del record[GATEWAY_EXTPROC]
    del old["at_rest"]
    summary = report.summarize(old)
    assert all(set(d) == {GATEWAY} for name, d in summary["derived"].items() if name not in ("soak", "half_load"))
    assert GATEWAY_EXTPROC not in report.stdout_report(summary)
    assert "## Budget" in document.markdown(summary | _machine(), "ccr-gateway bench")


def _machine() -> dict[str, Any]:
    return {
        "machine": {
            "nproc": 2,
            "cpu_model": "",
            "memory_gb": 1.0,
            "kernel": "6",
            "python": "3.12",
            "envoy": "1.40.0",
            "load_generator": "python",
            "loadavg_at_start": [0.0, 0.0, 0.0],
            "python_loop_s": 0.5,
        },
        "settings": {"connections": 4, "threads": 1, "duration_s": 1.0, "warmup_s": 1.0, "workers": 0},
        "started": "today",
        "elapsed_s": 1.0,
    }


def _with_hop_variants(results: dict[str, Any]) -> dict[str, Any]:
    """The hop variants beside the hop gateway (2,500 / 4,000 req/s, 0.3 / 0.15 ms of Python CPU) in
    the two non-streaming cases: keys with limits in process at exactly the goals on the translated
    case, limits in Redis past both on the passthrough one, the ledger off a little cheaper."""
    variants = {
        MAIN_CASE: {
            GATEWAY_AUTH: (2_250, {"envoy": 0.52, "ext_proc": 0.4}),
            GATEWAY_AUTH_REDIS: (2_300, {"envoy": 0.55, "ext_proc": 0.38, "redis": 0.05}),
            GATEWAY_NO_LEDGER: (2_600, {"envoy": 0.5, "ext_proc": 0.28}),
        },
        PASSTHROUGH_CASE: {
            GATEWAY_AUTH: (3_800, {"envoy": 0.3, "ext_proc": 0.2}),
            GATEWAY_AUTH_REDIS: (3_500, {"envoy": 0.35, "ext_proc": 0.26, "redis": 0.05}),
        },
    }
    for case in results["cases"]:
        hops = 2 if case["name"] == MAIN_CASE else 1
        for target, (rps, cpu) in variants.get(case["name"], {}).items():
            case[target] = _window(target, rps, 6.0, cpu, _hop(hops))
    return results


def test_each_hop_variant_is_compared_with_the_hop_gateway_and_auth_judged_against_its_goals() -> None:
    summary = report.summarize(_with_hop_variants(_results()))
    derived = summary["derived"]
    auth = derived[MAIN_CASE][GATEWAY_AUTH]
    assert (auth["rps_vs_hop"], auth["python_cpu_ms_vs_hop"], auth["envoy_cpu_ms_vs_hop"]) == (0.9, 0.1, 0.02)
    assert auth["redis_cpu_ms_per_request"] is None and auth["rps_ratio"] == 0.225  # and still vs plain Envoy
    redis = derived[PASSTHROUGH_CASE][GATEWAY_AUTH_REDIS]
    assert (redis["rps_vs_hop"], redis["python_cpu_ms_vs_hop"], redis["redis_cpu_ms_per_request"]) == (
        0.875,
        0.11,
        0.05,
    )
    assert derived[MAIN_CASE][GATEWAY_NO_LEDGER]["python_cpu_ms_vs_hop"] == -0.02
    assert "rps_vs_hop" not in derived[MAIN_CASE][GATEWAY_EXTPROC]  # another path, not a variant of hop
    # At the goals is within them; past them is not. The budget still judges the hop gateway alone.
    verdicts = {(r["target"], r["case"]): (r["rps_verdict"], r["python_verdict"]) for r in summary["auth_cost"]}
    assert verdicts == {
        (GATEWAY_AUTH, MAIN_CASE): (MET, MET),
        (GATEWAY_AUTH, PASSTHROUGH_CASE): (MET, MET),
        (GATEWAY_AUTH_REDIS, MAIN_CASE): (MET, MET),
        (GATEWAY_AUTH_REDIS, PASSTHROUGH_CASE): (NOT_MET, NOT_MET),
    }
    assert len(summary["budget"]) == 12 and {line["verdict"] for line in summary["budget"]} == {MET}

    out = report.stdout_report(summary)
    assert "each hop variant vs gateway (hop; same run):" in out
    assert (
        "  gateway-auth-redis, passthrough-40k: req/s 87.5% of gateway's (NOT MET), "
        "Python CPU +0.110 ms/request (NOT MET); the Redis server 0.050 ms/request"
    ) in out.splitlines()
    rows = report.variant_rows(summary, derived)
    assert [row[:2] for row in rows] == [
        [MAIN_CASE, GATEWAY_NO_LEDGER],
        [MAIN_CASE, GATEWAY_AUTH],
        [MAIN_CASE, GATEWAY_AUTH_REDIS],
        [PASSTHROUGH_CASE, GATEWAY_AUTH],
        [PASSTHROUGH_CASE, GATEWAY_AUTH_REDIS],
    ]
    assert rows[1][2:] == ["2250", "90.0%", "0.400", "+0.100", "+0.020", "-"]
    assert all(len(row) == len(report.VARIANT_HEADER) for row in rows)

    doc = document.markdown(summary | _machine(), "ccr-gateway bench --paths hop,hop-auth,hop-auth-redis")
    assert "### What auth costs" in doc and "1 of the 4 lines below miss a goal" in doc
    assert (
        "- gateway-auth, translated-40k: req/s 90.0% of gateway's (**met**), Python CPU +0.100 ms/request (**met**)"
        in doc
    )
    assert "| passthrough-40k | gateway-auth-redis | 3500 | 87.5% | 0.260 | +0.110 | +0.050 | 0.050 |" in doc


def test_auth_costs_are_written_only_when_an_auth_target_ran() -> None:
    met = _with_hop_variants(_results())
    met["cases"][1][GATEWAY_AUTH_REDIS]["cpu_ms_per_request"]["ext_proc"] = 0.2
    met["cases"][1][GATEWAY_AUTH_REDIS]["load"]["rps"] = 3_700
    doc = document.markdown(report.summarize(met) | _machine(), "ccr-gateway bench")
    assert "Both goals are met in every case measured." in doc

    ledger_only = _with_hop_variants(_results())
    for case in ledger_only["cases"]:
        for target in (GATEWAY_AUTH, GATEWAY_AUTH_REDIS):
            case.pop(target, None)
    summary = report.summarize(ledger_only)
    assert summary["auth_cost"] == []
    assert "what auth costs" not in report.stdout_report(summary)
    doc = document.markdown(summary | _machine(), "ccr-gateway bench")
    assert "What auth costs" not in doc and "| translated-40k | gateway-no-ledger | 2600 |" in doc
    plain = report.summarize(_results())  # no variant at all: no variant table either
    assert "each hop variant" not in report.stdout_report(plain)


def test_a_rewrite_keeps_the_hand_written_notes_and_only_them() -> None:
    old = f"# Performance\nold figures\n\n{document.NOTES_MARKER}\n## By hand\nworker scaling\n"
    new = document.with_kept_notes("# Performance\nnew figures\n", old)
    assert new == f"# Performance\nnew figures\n\n{document.NOTES_MARKER}\n## By hand\nworker scaling\n"
    assert document.with_kept_notes("# new\n", "# old, no notes\n") == "# new\n"
    assert document.with_kept_notes("# new\n", None) == "# new\n"


def test_a_responses_request_is_judged_against_the_same_conversation_from_a_chat_client() -> None:
    def verdicts_with(responses_ext_proc: float) -> dict[str, str]:
        results = _results()
        for name, ext_proc in (("chat-to-anthropic-40k", 0.30), ("responses-to-anthropic-40k", responses_ext_proc)):
            gateway = _window(GATEWAY, 2_500, 6.0, {"envoy": 0.5, "ext_proc": ext_proc}, _hop(2))
            results["cases"].append(_case(name, gateway, _window(GATEWAY_EXTPROC, 1_000, 9.0, {"envoy": 0.8}, _hop(0))))
        return _verdicts(results)

    assert _verdict(verdicts_with(0.35), "over the Chat path") == MET  # 0.85 vs 0.80 ms: +6.3%
    assert _verdict(verdicts_with(0.40), "over the Chat path") == NOT_MET  # 0.90 vs 0.80 ms: +12.5%
    assert not any("over the Chat path" in text for text in _verdicts(_results()))  # not run: no line


def test_a_groups_footprint_counts_the_code_its_processes_share_once() -> None:
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(2)]
    try:
        time.sleep(0.5)
        one = procfs.footprint_kb([children[0].pid])
        both = procfs.footprint_kb([child.pid for child in children])
        rss = sum(procfs.read_rss_kb(child.pid) for child in children)
        assert one > 0 and both < rss  # the interpreter's pages once, not twice
        assert one < both < 2 * one
    finally:
        for child in children:
            child.kill()
            child.wait()
