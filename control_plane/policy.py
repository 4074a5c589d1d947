"""The gateway policy: YAML text -> validated, immutable model, with line-precise errors.

Every problem is reported as ``file:line:col: field.path: message`` and all problems are collected
before giving up, so one edit-validate round fixes a whole file. Nothing half-valid is ever
returned: ``load_policy`` either returns a complete ``GatewayPolicy`` or raises ``PolicyError``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from ccr.v1 import policy_pb2

API_NAMES = ("anthropic", "openai", "gemini")
_PROTO_API = {
    "anthropic": policy_pb2.API_ANTHROPIC,
    "openai": policy_pb2.API_OPENAI,
    "gemini": policy_pb2.API_GEMINI,
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_RESERVED_HEADERS = ("x-ccr-", ":", "host", "content-length", "authorization", "x-api-key", "x-goog-api-key")
KNOWN_CAPABILITIES = frozenset({"tools", "vision", "thinking", "web_search"})
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Problem:
    source: str
    line: int  # 1-based; 0 when unknown
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.column}" if self.line else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyError(ValueError):
    """The policy is invalid; ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line, p.column))
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(cls, source: str, message: str) -> PolicyError:
        return cls([Problem(source, 0, 0, "", message)])


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    id: str
    max_output_tokens: int = 0
    context_window: int = 0
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    api: str
    scheme: str  # "http" | "https"
    host: str
    port: int
    base_path: str
    api_key_env: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    models: tuple[ModelSpec, ...] = ()
    forward_count_tokens: bool = False

    @property
    def cluster(self) -> str:
        return f"provider_{self.name}"

    @property
    def host_is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class GatewayPolicy:
    listener_address: str = "127.0.0.1"
    listener_port: int = 8080
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    providers: tuple[ProviderSpec, ...] = ()
    source: str = "<policy>"

    def provider(self, name: str) -> ProviderSpec | None:
        return next((p for p in self.providers if p.name == name), None)

    def to_proto(self, version: str) -> policy_pb2.Policy:
        """The ext_proc-facing contract (no listener details, no secrets)."""
        return policy_pb2.Policy(
            version=version,
            limits=policy_pb2.Limits(max_request_bytes=self.max_request_bytes),
            providers=[
                policy_pb2.Provider(
                    name=p.name,
                    api=_PROTO_API[p.api],
                    cluster=p.cluster,
                    base_path=p.base_path,
                    api_key_env=p.api_key_env,
                    headers=dict(p.headers),
                    forward_count_tokens=p.forward_count_tokens,
                    models=[
                        policy_pb2.Model(
                            name=m.name,
                            id=m.id,
                            max_output_tokens=m.max_output_tokens,
                            context_window=m.context_window,
                            capabilities=m.capabilities,
                        )
                        for m in p.models
                    ],
                )
                for p in self.providers
            ],
        )


# --- YAML with positions -------------------------------------------------------------------------


class _Located:
    """A YAML value together with where it was written."""

    __slots__ = ("column", "line", "value")

    def __init__(self, value: Any, line: int, column: int) -> None:
        self.value = value
        self.line = line
        self.column = column


def _compose(text: str, source: str) -> _Located | None:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise PolicyError([Problem(source, line, col, "", f"invalid YAML: {exc.problem}")]) from None
    if node is None:
        return None
    return _locate(node)


def _locate(node: yaml.Node) -> _Located:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.MappingNode):
        mapping: dict[str, tuple[_Located, _Located]] = {}
        for key_node, value_node in node.value:
            key = _locate(key_node)
            mapping[str(key.value)] = (key, _locate(value_node))
        return _Located(mapping, line, col)
    if isinstance(node, yaml.SequenceNode):
        return _Located([_locate(item) for item in node.value], line, col)
    # PyYAML's own tag resolution: 8080 is an int, true a bool, "8080" a string.
    return _Located(yaml.SafeLoader("").construct_object(node, deep=True), line, col)


# --- validation ---------------------------------------------------------------------------------


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def problem(self, at: _Located | None, path: str, message: str) -> None:
        line, col = (at.line, at.column) if at else (0, 0)
        self.problems.append(Problem(self.source, line, col, path, message))

    def mapping(
        self, at: _Located, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, _Located]:
        if not isinstance(at.value, dict):
            self.problem(at, path, f"must be a mapping, got {_kind(at.value)}")
            return {}
        out: dict[str, _Located] = {}
        for key, (key_at, value_at) in at.value.items():
            if key not in allowed:
                hint = _closest(key, allowed)
                self.problem(key_at, _join(path, key), "unknown field" + (f" (did you mean '{hint}'?)" if hint else ""))
                continue
            out[key] = value_at
        for key in required:
            if key not in out and key in allowed and key not in at.value:
                self.problem(at, _join(path, key), "is required")
        return out

    def string(self, at: _Located, path: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str | None:
        if not isinstance(at.value, str) or not at.value:
            self.problem(at, path, f"must be a non-empty string, got {_kind(at.value)}")
            return None
        if pattern is not None and not pattern.match(at.value):
            self.problem(at, path, f"{at.value!r} is not a valid {what or 'value'}")
            return None
        return at.value

    def integer(self, at: _Located, path: str, low: int, high: int) -> int | None:
        if isinstance(at.value, bool) or not isinstance(at.value, int):
            self.problem(at, path, f"must be an integer, got {_kind(at.value)}")
            return None
        if not low <= at.value <= high:
            self.problem(at, path, f"must be between {low} and {high}, got {at.value}")
            return None
        return at.value

    def sequence(self, at: _Located, path: str) -> list[_Located]:
        if not isinstance(at.value, list):
            self.problem(at, path, f"must be a list, got {_kind(at.value)}")
            return []
        return at.value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}.get(
        type(value), type(value).__name__
    )


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _closest(word: str, options: tuple[str, ...]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return match[0] if match else None


def load_policy_file(path: str) -> GatewayPolicy:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise PolicyError([Problem(path, 0, 0, "", f"cannot read: {exc.strerror}")]) from None
    return load_policy(text, source=path)


def load_policy(text: str, source: str = "<policy>") -> GatewayPolicy:
    root = _compose(text, source)
    check = _Checker(source)
    if root is None:
        raise PolicyError([Problem(source, 1, 1, "", "policy is empty; at least one provider is required")])
    top = check.mapping(root, "", ("listener", "limits", "providers"), required=("providers",))
    listener_address, listener_port = "127.0.0.1", 8080
    if "listener" in top:
        listener = check.mapping(top["listener"], "listener", ("address", "port"))
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
    max_request_bytes = DEFAULT_MAX_REQUEST_BYTES
    if "limits" in top:
        limits = check.mapping(top["limits"], "limits", ("max_request_bytes",))
        if "max_request_bytes" in limits:
            value = check.integer(limits["max_request_bytes"], "limits.max_request_bytes", 1024, 1 << 30)
            max_request_bytes = value or max_request_bytes
    providers: list[tuple[int, ProviderSpec]] = []
    if "providers" in top:
        items = check.sequence(top["providers"], "providers")
        if not items and isinstance(top["providers"].value, list):
            check.problem(top["providers"], "providers", "at least one provider is required")
        for index, item in enumerate(items):
            provider = _provider(check, item, _join("providers", index))
            if provider is not None:
                providers.append((index, provider))
    _cross_checks(check, top.get("providers"), providers)
    if check.problems:
        raise PolicyError(check.problems)
    specs = tuple(provider for _, provider in providers)
    return GatewayPolicy(listener_address, listener_port, max_request_bytes, specs, source)


_PROVIDER_FIELDS = ("name", "api", "base_url", "api_key_env", "headers", "models", "forward_count_tokens")


def _provider(check: _Checker, at: _Located, path: str) -> ProviderSpec | None:
    before = len(check.problems)
    fields = check.mapping(at, path, _PROVIDER_FIELDS, required=("name", "api", "base_url", "models"))
    name = (
        check.string(fields["name"], _join(path, "name"), _NAME, "provider name ([a-z0-9_-])")
        if "name" in fields
        else None
    )
    api = None
    if "api" in fields:
        api = check.string(fields["api"], _join(path, "api"))
        if api is not None and api not in API_NAMES:
            check.problem(fields["api"], _join(path, "api"), f"must be one of {', '.join(API_NAMES)} (got {api!r})")
    url = _base_url(check, fields["base_url"], _join(path, "base_url")) if "base_url" in fields else None
    key_env = ""
    if "api_key_env" in fields:
        key_env = (
            check.string(fields["api_key_env"], _join(path, "api_key_env"), _ENV_NAME, "environment variable name")
            or ""
        )
    headers: list[tuple[str, str]] = []
    if "headers" in fields:
        headers_at = fields["headers"]
        if not isinstance(headers_at.value, dict):
            check.problem(headers_at, _join(path, "headers"), f"must be a mapping, got {_kind(headers_at.value)}")
        else:
            for key, (key_at, value_at) in headers_at.value.items():
                header_path = _join(_join(path, "headers"), key)
                lower = key.lower()
                if not _HEADER_NAME.match(lower) or lower.startswith(_RESERVED_HEADERS):
                    check.problem(key_at, header_path, "is not a header the policy may set")
                elif not isinstance(value_at.value, str):
                    check.problem(value_at, header_path, f"must be a string, got {_kind(value_at.value)}")
                else:
                    headers.append((lower, value_at.value))
    forward_count_tokens = False
    if "forward_count_tokens" in fields:
        flag_at = fields["forward_count_tokens"]
        if not isinstance(flag_at.value, bool):
            check.problem(
                flag_at, _join(path, "forward_count_tokens"), f"must be true or false, got {_kind(flag_at.value)}"
            )
        elif flag_at.value and api != "anthropic":
            check.problem(flag_at, _join(path, "forward_count_tokens"), "only Anthropic-format providers count tokens")
        else:
            forward_count_tokens = flag_at.value
    models: list[ModelSpec] = []
    if "models" in fields:
        items = check.sequence(fields["models"], _join(path, "models"))
        if not items and isinstance(fields["models"].value, list):
            check.problem(fields["models"], _join(path, "models"), "at least one model is required")
        for index, item in enumerate(items):
            model = _model(check, item, _join(_join(path, "models"), index))
            if model is not None:
                models.append(model)
    if len(check.problems) > before or name is None or api is None or url is None:
        return None
    scheme, host, port, base_path = url
    return ProviderSpec(
        name, api, scheme, host, port, base_path, key_env, tuple(headers), tuple(models), forward_count_tokens
    )


def _base_url(check: _Checker, at: _Located, path: str) -> tuple[str, str, int, str] | None:
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


def _model(check: _Checker, at: _Located, path: str) -> ModelSpec | None:
    if isinstance(at.value, str):
        if at.value:
            return ModelSpec(name=at.value, id=at.value)
        check.problem(at, path, "a model name must not be empty")
        return None
    before = len(check.problems)
    fields = check.mapping(
        at, path, ("name", "id", "max_output_tokens", "context_window", "capabilities"), required=("name",)
    )
    name = check.string(fields["name"], _join(path, "name")) if "name" in fields else None
    model_id = check.string(fields["id"], _join(path, "id")) if "id" in fields else name
    max_output = (
        check.integer(fields["max_output_tokens"], _join(path, "max_output_tokens"), 1, 10_000_000)
        if "max_output_tokens" in fields
        else 0
    )
    window = (
        check.integer(fields["context_window"], _join(path, "context_window"), 1, 100_000_000)
        if "context_window" in fields
        else 0
    )
    capabilities: list[str] = []
    if "capabilities" in fields:
        for index, item in enumerate(check.sequence(fields["capabilities"], _join(path, "capabilities"))):
            cap_path = _join(_join(path, "capabilities"), index)
            known = ", ".join(sorted(KNOWN_CAPABILITIES))
            if not isinstance(item.value, str):
                check.problem(item, cap_path, f"must be a capability name, got {_kind(item.value)} (known: {known})")
            elif item.value not in KNOWN_CAPABILITIES:
                check.problem(item, cap_path, f"unknown capability {item.value!r} (known: {known})")
            else:
                capabilities.append(item.value)
    if len(check.problems) > before or name is None or model_id is None:
        return None
    return ModelSpec(name, model_id, max_output or 0, window or 0, tuple(capabilities))


def _cross_checks(check: _Checker, providers_at: _Located | None, providers: list[tuple[int, ProviderSpec]]) -> None:
    """Problems across entries, reported where the offending name is written."""
    items: list[_Located] = providers_at.value if providers_at and isinstance(providers_at.value, list) else []
    seen_names: set[str] = set()
    model_owner: dict[str, str] = {}
    for index, provider in providers:
        path, entry = _join("providers", index), items[index].value
        if provider.name in seen_names:
            check.problem(entry["name"][1], _join(path, "name"), f"duplicate provider name {provider.name!r}")
        seen_names.add(provider.name)
        seen_models: set[str] = set()
        model_nodes = _model_name_nodes(entry["models"][1])
        for model in provider.models:
            occurrences = model_nodes.get(model.name, [])
            at = occurrences[-1] if occurrences else items[index]
            if model.name in seen_models:
                check.problem(at, _join(path, "models"), f"model {model.name!r} is listed twice")
            seen_models.add(model.name)
            owner = model_owner.setdefault(model.name, provider.name)
            if owner != provider.name:
                check.problem(
                    at,
                    _join(path, "models"),
                    f"model {model.name!r} is also served by provider {owner!r}; a model name must map to one provider",
                )


def _model_name_nodes(models_at: _Located) -> dict[str, list[_Located]]:
    """Where each model name is written in a provider's models list (shorthand or `name:`)."""
    found: dict[str, list[_Located]] = {}
    for item in models_at.value:
        node = item.value["name"][1] if isinstance(item.value, dict) and "name" in item.value else item
        if isinstance(node.value, str):
            found.setdefault(node.value, []).append(node)
    return found
