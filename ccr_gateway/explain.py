"""`ccr-gateway route --explain request.json -c policy.yaml`: the routing decision and why, offline.

Runs the same code ext_proc runs (policy -> contract -> routing table -> router -> translator) on
a request file, and prints the result. Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import orjson

from control_plane.policy import PolicyError, load_policy_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--explain", required=True, metavar="REQUEST.json", help="request body to route ('-': stdin)")
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
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")


def run(args: argparse.Namespace) -> int:
    # ext_proc's own code, imported here so that the control plane process does not load it.
    from extproc.router import RoutingError, decide
    from extproc.routing import PolicyCompileError, compile_policy
    from extproc.translate.base import Api, ClientRequestError
    from extproc.translate.registry import translator_for

    try:
        policy = load_policy_file(args.config)
        table = compile_policy(policy.to_proto("explain"))
    except (PolicyError, PolicyCompileError) as exc:
        print(f"invalid policy:\n{exc}", file=sys.stderr)
        return 2
    try:
        raw = sys.stdin.buffer.read() if args.explain == "-" else open(args.explain, "rb").read()  # noqa: SIM115
        body = orjson.loads(raw)
    except (OSError, orjson.JSONDecodeError) as exc:
        print(f"cannot read the request: {exc}", file=sys.stderr)
        return 2
    if not isinstance(body, dict):
        print("the request must be a JSON object", file=sys.stderr)
        return 2
    headers = {}
    for item in args.header:
        name, _, value = item.partition(":")
        headers[name.strip().lower()] = value.strip()
    api = Api(args.api)
    try:
        decision = decide(table, body, headers, len(raw), None)
    except RoutingError as exc:
        print(f"no route: {exc.message} (the client would get HTTP {exc.status})")
        return 1
    route = decision.route
    translator = translator_for(api, route.provider.api)
    upstream = None
    problem = None
    if translator is None:
        problem = f"{api} requests cannot be translated to a {route.provider.api}-format provider"
    else:
        try:
            upstream = translator.request(decision.body, replace(route.target, stream=body.get("stream") is True))
        except ClientRequestError as exc:
            problem = f"the request would be refused with HTTP {exc.status}: {exc.message}"
    result = {
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
        "upstream_request": None if upstream is None else {"path": upstream.path, "bytes": len(upstream.body)},
        "problem": problem,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if problem is None else 1
    print(f"scenario:  {decision.scenario}")
    print(f"why:       {decision.reason}")
    print(f"provider:  {route.provider.name} ({route.provider.api} API, cluster {result['cluster']})")
    print(f"model:     {route.model} (upstream id {route.target.model})")
    print(f"fallback:  {' -> '.join(result['fallback']) or 'none'}")
    print(f"tokens:    {decision.tokens}")
    if decision.session:
        print(f"session:   {decision.session}")
    if decision.tenant:
        print(f"tenant:    {decision.tenant}")
    if upstream is not None:
        print(f"request:   POST {upstream.path} ({len(upstream.body)} bytes, {api} -> {route.provider.api})")
    if problem:
        print(f"problem:   {problem}")
        return 1
    return 0
