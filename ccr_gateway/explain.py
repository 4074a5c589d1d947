"""`ccr-gateway route --explain request.json -c policy.yaml`: the routing decision and why, offline.
(`route --mcp --key ID -c policy.yaml`: which MCP tools a caller can use, in ccr_gateway.explain_mcp.)

Runs the same code ext_proc runs (policy -> contract -> routing table -> extproc.plan) on a request
file, with provider keys from this shell's environment, and prints the outcome: the provider and
the translated request, the fallback chain, or the answer the gateway gives itself (a provider
without its key, a body a translator refuses, a locally counted count_tokens). Nothing is sent
anywhere. Exit status 1 when the gateway would answer with an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from control_plane.policy import PolicyError, load_policy_file

if TYPE_CHECKING:
    from extproc.plan import Outcome
    from extproc.translate.base import Api


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--explain", metavar="REQUEST.json", help="request body to route ('-': stdin)")
    what.add_argument(
        "--mcp",
        action="store_true",
        help="instead: which MCP tools --key or --tenant can use, on the policy's live servers (ccr_gateway.explain_mcp)",
    )
    parser.add_argument("-c", "--config", required=True, help="policy YAML file")
    parser.add_argument("--api", choices=["anthropic", "openai"], default="anthropic", help="the client's API")
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="NAME: VALUE",
        help="a request header (e.g. x-api-key for tenant routing); repeatable",
    )
    parser.add_argument(
        "--count-tokens", action="store_true", help="explain POST /v1/messages/count_tokens instead of a generation"
    )
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")
    from ccr_gateway import explain_mcp

    explain_mcp.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.mcp:
        from ccr_gateway import explain_mcp

        return explain_mcp.run(args)
    # ext_proc's own code, imported here so that the other commands do not load it.
    from extproc.plan import COUNT_TOKENS, GENERATE, Answer, plan
    from extproc.routing_table import PolicyCompileError, compile_policy
    from extproc.translate.base import Api

    try:
        policy = load_policy_file(args.config)
        # Provider keys come from this shell's environment, as ext_proc takes them from its own.
        table = compile_policy(policy.to_proto("explain"))
    except (PolicyError, PolicyCompileError) as exc:
        print(f"invalid policy:\n{exc}", file=sys.stderr)
        return 2
    try:
        raw = sys.stdin.buffer.read() if args.explain == "-" else open(args.explain, "rb").read()  # noqa: SIM115
    except OSError as exc:
        print(f"cannot read the request: {exc}", file=sys.stderr)
        return 2
    headers = {}
    for item in args.header:
        name, _, value = item.partition(":")
        headers[name.strip().lower()] = value.strip()
    api = Api(args.api)
    outcome = plan(table, api, COUNT_TOKENS if args.count_tokens else GENERATE, headers, raw)
    result = describe(outcome, api)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_text(result)
    return 1 if isinstance(outcome, Answer) and outcome.is_error else 0


def describe(outcome: Outcome, api: Api) -> dict[str, Any]:
    """The outcome as the JSON ``--json`` prints (and the agreement test compares with ext_proc)."""
    from extproc.hop import carriage_of
    from extproc.plan import Answer, Chain

    result: dict[str, Any] = {"outcome": type(outcome).__name__.lower(), "status": None, "problem": None}
    # With the default decision path (listener.decision: hop); "ext_proc": one gRPC stream.
    result["decision_path"] = carriage_of(outcome).value
    decision = outcome.decision
    if isinstance(outcome, Answer):
        result["status"] = outcome.status
        if outcome.is_error:
            result["problem"] = f"the gateway answers HTTP {outcome.status}: {outcome.message}"
        else:
            result["answer"] = json.loads(outcome.body)
    if decision is not None:
        route = decision.route
        result.update(
            {
                "scenario": decision.scenario,
                "why": decision.reason,
                "provider": route.provider.name,
                "provider_api": str(route.provider.api),
                "model": route.model,
                "upstream_model": route.target.model,
                "cluster": decision.chain_cluster or route.provider.cluster,
                "fallback": [f"{r.provider.name},{r.model}" for r in decision.chain[1:]],
                "tokens": decision.tokens,
                "session": decision.session,
                "tenant": decision.tenant,
            }
        )
    if isinstance(outcome, Chain):
        result["upstream_request"] = {"path": None, "note": "each attempt is translated for the provider Envoy picks"}
        # An attempt on a provider without its key is answered 503 by the per-attempt processor.
        result["unavailable"] = [r.provider.unavailable for r in outcome.decision.chain if r.provider.unavailable]
    elif not isinstance(outcome, Answer):
        upstream = outcome.upstream
        result["upstream_request"] = {
            "path": upstream.path,
            "bytes": len(upstream.body),
            "translation": f"{api} -> {outcome.route.provider.api}",
        }
    return result


def print_text(result: dict[str, Any]) -> None:
    if "scenario" in result:
        print(f"scenario:  {result['scenario']}")
        print(f"why:       {result['why']}")
        print(f"provider:  {result['provider']} ({result['provider_api']} API, cluster {result['cluster']})")
        print(f"model:     {result['model']} (upstream id {result['upstream_model']})")
        print(f"fallback:  {' -> '.join(result['fallback']) or 'none'}")
        print(f"tokens:    {result['tokens']}")
        if result["session"]:
            print(f"session:   {result['session']}")
        if result["tenant"]:
            print(f"tenant:    {result['tenant']}")
    upstream = result.get("upstream_request")
    if upstream and upstream["path"]:
        print(f"request:   POST {upstream['path']} ({upstream['bytes']} bytes, {upstream['translation']})")
    elif upstream:
        print(f"request:   {upstream['note']}")
    print(f"carried:   {result['decision_path']}")
    for problem in result.get("unavailable", ()):
        print(f"warning:   {problem}")
    if "answer" in result:
        print(
            f"answer:    HTTP {result['status']} {json.dumps(result['answer'])} (from the gateway, no provider asked)"
        )
    if result["problem"]:
        print(f"problem:   {result['problem']}")
