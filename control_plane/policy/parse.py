"""The gateway policy: YAML text -> validated, immutable model, with line-precise errors.

Every problem is reported as ``file:line:col: field.path: message`` and all problems are collected
before giving up, so one edit-validate round fixes a whole file. Nothing half-valid is ever
returned: ``load_policy`` either returns a complete ``GatewayPolicy`` or raises ``PolicyError``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from ccr.v1.pricing import Prices
from control_plane.policy.auth import AuthSpec, parse_auth
from control_plane.policy.base_urls import check_base_url
from control_plane.policy.batches import parse_batches
from control_plane.policy.bedrock import parse_bedrock
from control_plane.policy.cache import CacheSpec, parse_cache
from control_plane.policy.cors import CorsSpec, parse_cors
from control_plane.policy.credentials import credentials_problem
from control_plane.policy.edge_limits import PerIpLimits, parse_per_ip_limits
from control_plane.policy.hardening import HardeningSpec, parse_hardening
from control_plane.policy.limit_sets import RateLimitSpec, parse_rate_limits
from control_plane.policy.mcp import parse_mcp
from control_plane.policy.model import (
    API_NAMES,
    DECISION_PATHS,
    DEFAULT_MAX_REQUEST_BYTES,
    GatewayPolicy,
    ModelSpec,
    ProviderSpec,
)
from control_plane.policy.pools import PoolEndpoint, parse_endpoints
from control_plane.policy.pricing import default_prices, parse_pricing, unpriced_warning
from control_plane.policy.resilience import DEFAULT as DEFAULT_RESILIENCE
from control_plane.policy.resilience import HealthCheck, Http2, OutlierDetection, Resilience, RetryBudget, TlsSettings
from control_plane.policy.responses import ResponsesSpec, parse_responses
from control_plane.policy.routes import parse_routing
from control_plane.policy.storage import StorageSpec, parse_storage
from control_plane.policy.tls import TlsSpec, parse_listener_tls
from control_plane.policy.tracing import parse_tracing
from control_plane.policy.vault import VaultSpec, check_vault_used, parse_key_reference, parse_vault
from control_plane.policy.vertex import VERTEX_FIELDS, parse_publisher, parse_vertex
from control_plane.policy.yaml_check import Checker, Located, PolicyError, Problem, compose, join, kind_of

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_RESERVED_HEADERS = ("x-ccr-", ":", "host", "content-length", "authorization", "x-api-key", "x-goog-api-key")
KNOWN_CAPABILITIES = frozenset({"tools", "vision", "thinking", "web_search", "max_tokens"})
# Capabilities that say how to speak one API, meaningless for the others.
API_CAPABILITIES = {"max_tokens": "openai"}  # send max_tokens, not max_completion_tokens (older servers)


def load_policy_file(path: str) -> GatewayPolicy:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise PolicyError([Problem(path, 0, 0, "", f"cannot read: {exc.strerror}")]) from None
    return load_policy(text, source=path)


_TOP_FIELDS = (
    "listener",
    "limits",
    "providers",
    "aliases",
    "router",
    "fallback",
    "tenants",
    "storage",
    "auth",
    "cache",
    "tracing",
    "vault",
    "batches",
    "mcp",
    "responses",
)


def load_policy(text: str, source: str = "<policy>") -> GatewayPolicy:
    check = Checker(source)
    root = compose(text, check)
    if root is None:
        raise PolicyError([Problem(source, 1, 1, "", "policy is empty; at least one provider is required")])
    top = check.mapping(root, "", _TOP_FIELDS, required=("providers",))
    listener_address, listener_port = "127.0.0.1", 8080
    cors: CorsSpec | None = None
    per_ip_limits: PerIpLimits | None = None
    tls: TlsSpec | None = None
    hardening = HardeningSpec()
    decision_path = DECISION_PATHS[0]
    if "listener" in top:
        listener = check.mapping(
            top["listener"], "listener", ("address", "port", "decision", "cors", "per_ip_limits", "tls", "hardening")
        )
        if "address" in listener:
            address = check.string(listener["address"], "listener.address")
            if address is not None:
                try:
                    ipaddress.ip_address(address)
                    listener_address = address
                except ValueError:
                    check.problem(listener["address"], "listener.address", f"{address!r} is not an IP address")
        if "port" in listener:
            listener_port = check.integer(listener["port"], "listener.port", 1, 65535) or listener_port
        if "decision" in listener:
            decision = check.string(listener["decision"], "listener.decision")
            if decision is not None and decision not in DECISION_PATHS:
                choices = " or ".join(repr(d) for d in DECISION_PATHS)
                check.problem(listener["decision"], "listener.decision", f"must be {choices}, got {decision!r}")
            elif decision is not None:
                decision_path = decision
        if "cors" in listener:
            cors = parse_cors(check, listener["cors"])
        if "per_ip_limits" in listener:
            per_ip_limits = parse_per_ip_limits(check, listener["per_ip_limits"])
        if "tls" in listener:
            tls = parse_listener_tls(check, listener["tls"])
        if "hardening" in listener:
            hardening = parse_hardening(check, listener["hardening"])
    max_request_bytes = DEFAULT_MAX_REQUEST_BYTES
    attempt_timeout_seconds = 0.0
    if "limits" in top:
        limits = check.mapping(top["limits"], "limits", ("max_request_bytes", "attempt_timeout_seconds"))
        if "max_request_bytes" in limits:
            value = check.integer(limits["max_request_bytes"], "limits.max_request_bytes", 1024, 1 << 30)
            max_request_bytes = value or max_request_bytes
        if "attempt_timeout_seconds" in limits:
            attempt_timeout = check.integer(
                limits["attempt_timeout_seconds"], "limits.attempt_timeout_seconds", 0, 3600
            )
            attempt_timeout_seconds = float(attempt_timeout or 0)
    providers: list[tuple[int, ProviderSpec]] = []
    if "providers" in top:
        items = check.sequence(top["providers"], "providers")
        if not items and isinstance(top["providers"].value, list):
            check.problem(top["providers"], "providers", "at least one provider is required")
        for index, item in enumerate(items):
            provider = _provider(check, item, join("providers", index))
            if provider is not None:
                providers.append((index, provider))
    _cross_checks(check, top.get("providers"), providers)
    specs = tuple(provider for _, provider in providers)
    catalog = {p.name: {**{m.id: m.name for m in p.models}, **{m.name: m.name for m in p.models}} for p in specs}
    model_names = {m.name for p in specs for m in p.models}
    routing = parse_routing(check, top, catalog, model_names, _written_names(top.get("providers")))
    storage: StorageSpec | None = parse_storage(check, top["storage"]) if "storage" in top else None
    auth = parse_auth(check, top["auth"]) if "auth" in top else AuthSpec()
    cache: CacheSpec | None = parse_cache(check, top["cache"], "cache", top_level=True) if "cache" in top else None
    tracing = parse_tracing(check, top["tracing"]) if "tracing" in top else None
    vault: VaultSpec | None = parse_vault(check, top["vault"]) if "vault" in top else None
    batches = parse_batches(check, top["batches"]) if "batches" in top else None
    responses = parse_responses(check, top["responses"]) if "responses" in top else ResponsesSpec()
    mcp = (
        parse_mcp(check, top["mcp"], vault_configured="vault" in top, listener=(listener_address, listener_port))
        if "mcp" in top
        else None
    )
    if "vault" not in top:
        check_vault_used(check, None, [*_key_references(top.get("providers")), *_connection_references(top)])
    if check.problems:
        raise PolicyError(check.problems, check.warnings)
    return GatewayPolicy(
        listener_address,
        listener_port,
        max_request_bytes,
        specs,
        source,
        routing,
        attempt_timeout_seconds,
        decision_path,
        warnings=tuple(check.warnings),
        cors=cors,
        per_ip_limits=per_ip_limits,
        storage=storage,
        auth=auth or AuthSpec(),
        cache=cache,
        tracing=tracing,
        vault=vault,
        tls=tls,
        hardening=hardening,
        batches=batches,
        mcp=mcp,
        responses=responses,
    )


def _written_names(providers_at: Located | None) -> set[str]:
    """Every provider name written in the file, valid entry or not: a reference to a provider whose
    entry has its own problem is not reported again as unknown."""
    items = providers_at.value if providers_at is not None and isinstance(providers_at.value, list) else []
    return {
        item.value["name"][1].value
        for item in items
        if isinstance(item.value, dict) and "name" in item.value and isinstance(item.value["name"][1].value, str)
    }


_PROVIDER_FIELDS = (
    "name",
    "api",
    "base_url",
    "api_key_env",
    "api_key",
    "headers",
    "models",
    "forward_count_tokens",
    "resilience",
    "consul_service",
    "endpoints",
    *VERTEX_FIELDS,
    "credentials",
)


def _provider(check: Checker, at: Located, path: str) -> ProviderSpec | None:
    before = len(check.problems)
    # A vertex provider's base_url may be left out: it follows from its region.
    url_required = ("base_url",) if not _is_vertex(at) else ()
    fields = check.mapping(at, path, _PROVIDER_FIELDS, required=("name", "api", *url_required, "models"))
    name = (
        check.string(fields["name"], join(path, "name"), _NAME, "provider name ([a-z0-9_-])")
        if "name" in fields
        else None
    )
    api = None
    if "api" in fields:
        api = check.string(fields["api"], join(path, "api"))
        if api is not None and api not in API_NAMES:
            check.problem(fields["api"], join(path, "api"), f"must be one of {', '.join(API_NAMES)} (got {api!r})")
    url = _base_url(check, fields["base_url"], join(path, "base_url")) if "base_url" in fields else None
    if url is not None and api in API_NAMES:
        advice = check_base_url(api, url[1], url[3], fields["base_url"].value)
        if advice is not None:
            report = check.problem if advice.is_error else check.warning
            report(fields["base_url"], join(path, "base_url"), advice.message)
    key_env = ""
    if "api_key_env" in fields:
        key_env = (
            check.string(fields["api_key_env"], join(path, "api_key_env"), _ENV_NAME, "environment variable name") or ""
        )
    key_ref = ""
    if "api_key" in fields:
        if "api_key_env" in fields:
            check.problem(fields["api_key"], join(path, "api_key"), "give api_key or api_key_env, not both")
        ref = parse_key_reference(check, fields["api_key"], join(path, "api_key"))
        key_ref = str(ref) if ref is not None else ""
    headers: list[tuple[str, str]] = []
    if "headers" in fields:
        headers_at = fields["headers"]
        if not isinstance(headers_at.value, dict):
            check.problem(headers_at, join(path, "headers"), f"must be a mapping, got {kind_of(headers_at.value)}")
        else:
            for key, (key_at, value_at) in headers_at.value.items():
                header_path = join(join(path, "headers"), key)
                lower = key.lower()
                if not _HEADER_NAME.match(lower) or lower.startswith(_RESERVED_HEADERS):
                    check.problem(key_at, header_path, "is not a header the policy may set")
                elif not isinstance(value_at.value, str):
                    check.problem(value_at, header_path, f"must be a string, got {kind_of(value_at.value)}")
                else:
                    headers.append((lower, value_at.value))
    consul_service = ""
    if "consul_service" in fields:
        consul_service = (
            check.string(fields["consul_service"], join(path, "consul_service"), _NAME, "Consul service name") or ""
        )
    endpoints: tuple[PoolEndpoint, ...] = ()
    if "endpoints" in fields:
        if consul_service:
            check.problem(fields["endpoints"], join(path, "endpoints"), "give endpoints or consul_service, not both")
        elif url is not None:
            endpoints = parse_endpoints(check, fields["endpoints"], join(path, "endpoints"), url[2])
    forward_count_tokens = False
    if "forward_count_tokens" in fields:
        flag_at = fields["forward_count_tokens"]
        if not isinstance(flag_at.value, bool):
            check.problem(
                flag_at, join(path, "forward_count_tokens"), f"must be true or false, got {kind_of(flag_at.value)}"
            )
        elif flag_at.value and api not in ("anthropic", "gemini", "vertex"):
            check.problem(
                flag_at,
                join(path, "forward_count_tokens"),
                "only Anthropic-, Gemini- and Vertex-format providers count tokens",
            )
        else:
            forward_count_tokens = flag_at.value
    models: list[ModelSpec] = []
    if "models" in fields:
        items = check.sequence(fields["models"], join(path, "models"))
        if not items and isinstance(fields["models"].value, list):
            check.problem(fields["models"], join(path, "models"), "at least one model is required")
        for index, item in enumerate(items):
            model = _model(check, item, join(join(path, "models"), index), api)
            if model is not None:
                models.append(model)
    resilience = DEFAULT_RESILIENCE
    if "resilience" in fields:
        scheme = url[0] if url is not None else None
        resilience = _resilience(check, fields["resilience"], join(path, "resilience"), scheme)
    credentials = ""
    if "credentials" in fields:
        credentials = check.string(fields["credentials"], join(path, "credentials")) or ""
        problem = credentials_problem(api or "", credentials) if credentials else None
        if problem is not None:
            check.problem(fields["credentials"], join(path, "credentials"), problem)
    region = ""
    if api == "bedrock":
        region = parse_bedrock(check, fields, path, url[1] if url is not None else None)
        # region: is the bedrock provider's own too (its SigV4 region), not only a vertex one's.
        fields = {key: value for key, value in fields.items() if key != "region"}
    publisher = parse_publisher(check, fields, path) if api == "vertex" else ""
    if publisher == "google" and forward_count_tokens:
        check.problem(
            fields["forward_count_tokens"],
            join(path, "forward_count_tokens"),
            "Gemini on Vertex counts no tokens for the gateway yet: leave it out (the gateway estimates)",
        )
    url = parse_vertex(check, at, fields, path, api, url, publisher or "anthropic")
    if len(check.problems) > before or name is None or api is None or url is None:
        return None
    scheme, host, port, base_path = url
    return ProviderSpec(
        name,
        api,
        scheme,
        host,
        port,
        base_path,
        key_env,
        tuple(headers),
        tuple(models),
        forward_count_tokens,
        resilience,
        consul_service,
        key_ref,
        endpoints,
        credentials=credentials,
        region=region,
        publisher=publisher,
    )


# The connection strings that may be kept in Vault (control_plane.policy.storage._connection).
_CONNECTION_FIELDS = (
    ("storage", "postgres", "dsn"),
    ("storage", "rabbitmq", "url"),
    ("auth", "keys", "postgres"),
    ("auth", "limits", "redis"),
    ("cache", "redis"),
)


def _connection_references(top: dict[str, Located]) -> list[tuple[Located, str]]:
    """Where a connection string is written as a vault: reference (they need the vault section)."""
    found = []
    for keys in _CONNECTION_FIELDS:
        at: Located | None = top.get(keys[0])
        for key in keys[1:]:
            at = at.value[key][1] if at is not None and isinstance(at.value, dict) and key in at.value else None
        if at is not None and isinstance(at.value, str) and at.value.startswith("vault:"):
            found.append((at, ".".join(keys)))
    return found


def _key_references(providers_at: Located | None) -> list[tuple[Located, str]]:
    """Where each provider's ``api_key:`` is written (vault: references need the vault section)."""
    items = providers_at.value if providers_at is not None and isinstance(providers_at.value, list) else []
    return [
        (item.value["api_key"][1], join(join("providers", index), "api_key"))
        for index, item in enumerate(items)
        if isinstance(item.value, dict) and "api_key" in item.value
    ]


def _is_vertex(at: Located) -> bool:
    """Whether a provider's mapping says ``api: vertex`` (read before its fields are checked)."""
    api = at.value.get("api") if isinstance(at.value, dict) else None
    return isinstance(api, tuple) and getattr(api[1], "value", None) == "vertex"


def _base_url(check: Checker, at: Located, path: str) -> tuple[str, str, int, str] | None:
    text = check.string(at, path)
    if text is None:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        check.problem(at, path, f"{text!r} must be an http:// or https:// URL with a host")
        return None
    if parts.query or parts.fragment or parts.username:
        check.problem(at, path, f"{text!r} must not carry a query, fragment or credentials")
        return None
    try:
        port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
        if port == 0:
            raise ValueError("port 0")
    except ValueError:
        check.problem(at, path, f"{text!r} has an invalid port")
        return None
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


# --- resilience (Envoy-only settings; control_plane/resources/resilience.py says where each goes) --

_MAX_LIMIT = 1 << 24  # far above any real pool, well inside Envoy's uint32
_HOUR_MS = 3_600_000
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": _HOUR_MS}
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
# Number fields: YAML key -> (attribute, lowest, highest). An attribute ending in _ms is a duration
# written as "500ms", "10s", "2m", "1h" and kept in milliseconds.
_Table = dict[str, tuple[str, int, int]]
_RESILIENCE_NUMBERS: _Table = {
    "max_connections": ("max_connections", 1, _MAX_LIMIT),
    # At least 1: a request waits "pending" while its connection is set up, so with 0 every request
    # that finds no idle connection (the first one of each Envoy worker, too) would be refused.
    "max_pending_requests": ("max_pending_requests", 1, _MAX_LIMIT),
    "max_requests": ("max_requests", 1, _MAX_LIMIT),
    "max_retries": ("max_retries", 0, _MAX_LIMIT),
    "connect_timeout": ("connect_timeout_ms", 1, 10 * 60_000),
    "idle_timeout": ("idle_timeout_ms", 0, 24 * _HOUR_MS),  # 0s: never closed for being idle
    "request_timeout": ("request_timeout_ms", 0, 24 * _HOUR_MS),  # 0s: no limit
    "stream_idle_timeout": ("stream_idle_timeout_ms", 0, 24 * _HOUR_MS),  # 0s: no limit
}
_OUTLIER_NUMBERS: _Table = {
    "consecutive_5xx": ("consecutive_5xx", 1, 1000),
    "consecutive_gateway_failure": ("consecutive_gateway_failure", 1, 1000),
    "interval": ("interval_ms", 1, _HOUR_MS),
    "base_ejection_time": ("base_ejection_time_ms", 1, _HOUR_MS),
    "max_ejection_percent": ("max_ejection_percent", 0, 100),
}
_HEALTH_CHECK_NUMBERS: _Table = {
    "interval": ("interval_ms", 1, _HOUR_MS),
    "timeout": ("timeout_ms", 1, _HOUR_MS),
    "unhealthy_threshold": ("unhealthy_threshold", 1, 100),
    "healthy_threshold": ("healthy_threshold", 1, 100),
}


def _resilience(check: Checker, at: Located, path: str, scheme: str | None) -> Resilience:
    """A provider's `resilience:` mapping; every field is optional. Where a field has a problem the
    default stands in (the provider is dropped anyway: a policy with problems is never returned)."""
    fields = check.mapping(at, path, (*_RESILIENCE_NUMBERS, *_SECTIONS, "tls"))
    values = _numbers(check, fields, path, _RESILIENCE_NUMBERS)
    for key, parse in _SECTIONS.items():
        if key in fields:
            values[key] = parse(check, fields[key], join(path, key))  # None: switched off
    if values.get("http2", Http2.AUTO) is None:  # invalid, already reported
        del values["http2"]
    if "tls" in fields and (tls := _tls(check, fields["tls"], join(path, "tls"), scheme)) is not None:
        values["tls"] = tls
    return replace(DEFAULT_RESILIENCE, **values)


def _numbers(check: Checker, fields: dict[str, Located], path: str, table: _Table) -> dict[str, Any]:
    """The table's fields that are present and valid, by attribute name."""
    values: dict[str, Any] = {}
    for key, (attribute, low, high) in table.items():
        if key in fields:
            parse = _duration if attribute.endswith("_ms") else Checker.integer
            value = parse(check, fields[key], join(path, key), low, high)
            if value is not None:
                values[attribute] = value
    return values


def _switch(check: Checker, at: Located, path: str) -> bool | None:
    """A sub-section written as `true` (its defaults), `false` (off), or a mapping (None here)."""
    if isinstance(at.value, bool):
        return at.value
    if not isinstance(at.value, dict):
        check.problem(at, path, f"must be a mapping, true or false, got {kind_of(at.value)}")
        return False
    return None


def _retry_budget(check: Checker, at: Located, path: str) -> RetryBudget | None:
    switch = _switch(check, at, path)
    if switch is not None:
        return RetryBudget() if switch else None
    fields = check.mapping(at, path, ("budget_percent", "min_retry_concurrency"))
    values = _numbers(check, fields, path, {"min_retry_concurrency": ("min_retry_concurrency", 0, _MAX_LIMIT)})
    if "budget_percent" in fields:
        percent = fields["budget_percent"].value
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
            message = f"must be a number from 0 to 100, got {percent!r}"
            check.problem(fields["budget_percent"], join(path, "budget_percent"), message)
        else:
            values["budget_percent"] = float(percent)
    return RetryBudget(**values)


def _outlier_detection(check: Checker, at: Located, path: str) -> OutlierDetection | None:
    switch = _switch(check, at, path)
    if switch is not None:
        return OutlierDetection() if switch else None
    fields = check.mapping(at, path, tuple(_OUTLIER_NUMBERS))
    return OutlierDetection(**_numbers(check, fields, path, _OUTLIER_NUMBERS))


def _health_check(check: Checker, at: Located, path: str) -> HealthCheck | None:
    switch = _switch(check, at, path)
    if switch is not None:
        return HealthCheck() if switch else None
    fields = check.mapping(at, path, ("path", *_HEALTH_CHECK_NUMBERS, "expected_statuses"))
    values = _numbers(check, fields, path, _HEALTH_CHECK_NUMBERS)
    if "path" in fields:
        url_path = check.string(fields["path"], join(path, "path"))
        if url_path is not None and (not url_path.startswith("/") or any(c.isspace() for c in url_path)):
            check.problem(fields["path"], join(path, "path"), f"{url_path!r} must be a URL path starting with /")
        elif url_path is not None:
            values["path"] = url_path
    if "expected_statuses" in fields:
        statuses_path = join(path, "expected_statuses")
        items = check.sequence(fields["expected_statuses"], statuses_path)
        if not items and isinstance(fields["expected_statuses"].value, list):
            check.problem(fields["expected_statuses"], statuses_path, "at least one status is required")
        statuses = [check.integer(item, join(statuses_path, index), 100, 599) for index, item in enumerate(items)]
        if items and None not in statuses:
            values["expected_statuses"] = tuple(sorted(set(statuses)))
    return HealthCheck(**values)


def _http2(check: Checker, at: Located, path: str) -> Http2 | None:
    if at.value == "auto":
        return Http2.AUTO
    if isinstance(at.value, bool):
        return Http2.ALWAYS if at.value else Http2.NEVER
    check.problem(at, path, f"must be auto, true or false, got {at.value!r}")
    return None


_SECTIONS = {
    "retry_budget": _retry_budget,
    "outlier_detection": _outlier_detection,
    "health_check": _health_check,
    "http2": _http2,
}


def _tls(check: Checker, at: Located, path: str, scheme: str | None) -> TlsSettings | None:
    fields = check.mapping(at, path, ("sni", "ca_file", "insecure_skip_verify", "client_cert", "client_key"))
    if scheme == "http":
        check.problem(at, path, "only an https:// base_url uses TLS")
        return None
    tls = TlsSettings()
    if "sni" in fields:
        sni = check.string(fields["sni"], join(path, "sni"), _HOSTNAME, "host name")
        tls = replace(tls, sni=sni or "")
    if "ca_file" in fields:
        ca_file = check.string(fields["ca_file"], join(path, "ca_file"))
        # Envoy reads it, from its own working directory: a relative path would be a guess.
        if ca_file is not None and not ca_file.startswith("/"):
            check.problem(fields["ca_file"], join(path, "ca_file"), f"{ca_file!r} must be an absolute path")
        tls = replace(tls, ca_file=ca_file or "")
    if "insecure_skip_verify" in fields:
        flag_at = fields["insecure_skip_verify"]
        if not isinstance(flag_at.value, bool):
            check.problem(
                flag_at, join(path, "insecure_skip_verify"), f"must be true or false, got {kind_of(flag_at.value)}"
            )
        elif flag_at.value and tls.ca_file:
            check.problem(
                flag_at, join(path, "insecure_skip_verify"), "contradicts ca_file (nothing would be verified)"
            )
        else:
            tls = replace(tls, insecure_skip_verify=flag_at.value)
    # A client certificate for a provider that asks for one (mTLS upstream): both files or neither.
    files = {name: _absolute_file(check, fields.get(name), join(path, name)) for name in ("client_cert", "client_key")}
    if ("client_cert" in fields) != ("client_key" in fields):
        missing = "client_key" if "client_cert" in fields else "client_cert"
        check.problem(
            at, path, f"{missing} is required with {'client_cert' if missing == 'client_key' else 'client_key'}"
        )
    elif all(files.values()):
        tls = replace(tls, client_cert=files["client_cert"] or "", client_key=files["client_key"] or "")
    return tls


def _absolute_file(check: Checker, at: Located | None, path: str) -> str | None:
    """A file Envoy reads, from its own working directory: an absolute path (a relative one would
    be a guess)."""
    if at is None:
        return None
    text = check.string(at, path)
    if text is not None and not text.startswith("/"):
        check.problem(at, path, f"{text!r} must be an absolute path")
        return None
    return text


def _duration(check: Checker, at: Located, path: str, low_ms: int, high_ms: int) -> int | None:
    """A duration as written ("500ms", "10s", "1.5s", "2m", "1h"), in milliseconds."""
    text = at.value
    if not isinstance(text, str):
        check.problem(at, path, f"must be a duration like 500ms, 10s or 2m, got {kind_of(text)}")
        return None
    match = _DURATION.match(text)
    if match is None:
        check.problem(at, path, f"{text!r} is not a duration (like 500ms, 10s or 2m)")
        return None
    amount = Decimal(match[1]) * _UNIT_MS[match[2]]
    if amount != amount.to_integral_value():
        check.problem(at, path, f"{text!r} is finer than a millisecond")
        return None
    if not low_ms <= amount <= high_ms:
        check.problem(at, path, f"must be between {_human(low_ms)} and {_human(high_ms)}, got {text}")
        return None
    return int(amount)


def _human(ms: int) -> str:
    for unit, size in (("h", _HOUR_MS), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _model(check: Checker, at: Located, path: str, api: str | None) -> ModelSpec | None:
    if isinstance(at.value, str):
        if at.value:
            return ModelSpec(name=at.value, id=at.value, pricing=_priced(check, at, path, at.value, None))
        check.problem(at, path, "a model name must not be empty")
        return None
    before = len(check.problems)
    fields = check.mapping(
        at,
        path,
        ("name", "id", "max_output_tokens", "context_window", "capabilities", "pricing", "limits", "cache"),
        required=("name",),
    )
    name = check.string(fields["name"], join(path, "name")) if "name" in fields else None
    model_id = check.string(fields["id"], join(path, "id")) if "id" in fields else name
    max_output = (
        check.integer(fields["max_output_tokens"], join(path, "max_output_tokens"), 1, 10_000_000)
        if "max_output_tokens" in fields
        else 0
    )
    window = (
        check.integer(fields["context_window"], join(path, "context_window"), 1, 100_000_000)
        if "context_window" in fields
        else 0
    )
    capabilities: list[str] = []
    if "capabilities" in fields:
        for index, item in enumerate(check.sequence(fields["capabilities"], join(path, "capabilities"))):
            cap_path = join(join(path, "capabilities"), index)
            known = ", ".join(sorted(KNOWN_CAPABILITIES))
            if not isinstance(item.value, str):
                check.problem(item, cap_path, f"must be a capability name, got {kind_of(item.value)} (known: {known})")
            elif item.value not in KNOWN_CAPABILITIES:
                check.problem(item, cap_path, f"unknown capability {item.value!r} (known: {known})")
            elif api is not None and API_CAPABILITIES.get(item.value, api) != api:
                only = API_CAPABILITIES[item.value]
                check.problem(item, cap_path, f"capability {item.value!r} only applies to {only}-format providers")
            else:
                capabilities.append(item.value)
    written = parse_pricing(check, fields["pricing"], join(path, "pricing")) if "pricing" in fields else None
    limits = parse_rate_limits(check, fields["limits"], join(path, "limits")) if "limits" in fields else RateLimitSpec()
    cache = parse_cache(check, fields["cache"], join(path, "cache")) if "cache" in fields else None
    if len(check.problems) > before or name is None or model_id is None:
        return None
    pricing = _priced(check, at, path, model_id, written)
    return ModelSpec(name, model_id, max_output or 0, window or 0, tuple(capabilities), pricing, limits, cache)


def _priced(check: Checker, at: Located, path: str, model_id: str, written: Prices | None) -> Prices | None:
    """The model's own prices, else the bundled table's for its id; a warning when neither has one."""
    pricing = written if written is not None else default_prices(model_id)
    if pricing is None:
        unpriced_warning(check, at, path, model_id)
    return pricing


def _cross_checks(check: Checker, providers_at: Located | None, providers: list[tuple[int, ProviderSpec]]) -> None:
    """Problems across entries, reported where the offending name is written."""
    items: list[Located] = providers_at.value if providers_at and isinstance(providers_at.value, list) else []
    seen_names: set[str] = set()
    model_owner: dict[str, str] = {}
    for index, provider in providers:
        path, entry = join("providers", index), items[index].value
        if provider.name in seen_names:
            check.problem(entry["name"][1], join(path, "name"), f"duplicate provider name {provider.name!r}")
        seen_names.add(provider.name)
        seen_models: set[str] = set()
        model_nodes = _model_name_nodes(entry["models"][1])
        for model in provider.models:
            occurrences = model_nodes.get(model.name, [])
            at = occurrences[-1] if occurrences else items[index]
            if model.name in seen_models:
                check.problem(at, join(path, "models"), f"model {model.name!r} is listed twice")
            seen_models.add(model.name)
            owner = model_owner.setdefault(model.name, provider.name)
            if owner != provider.name:
                check.problem(
                    at,
                    join(path, "models"),
                    f"model {model.name!r} is also served by provider {owner!r}; a model name must map to one provider",
                )


def _model_name_nodes(models_at: Located) -> dict[str, list[Located]]:
    """Where each model name is written in a provider's models list (shorthand or `name:`)."""
    found: dict[str, list[Located]] = {}
    for item in models_at.value:
        node = item.value["name"][1] if isinstance(item.value, dict) and "name" in item.value else item
        if isinstance(node.value, str):
            found.setdefault(node.value, []).append(node)
    return found
