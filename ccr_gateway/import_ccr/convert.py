"""A parsed CCR config -> the policy as plain data, plus a finding for everything worth telling."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ccr.v1.contract import SCENARIOS
from ccr_gateway.import_ccr.model import ConfigError, Conversion, Finding, Kind, Target

CCR_DEFAULT_PORT = 3456
DEFAULT_LISTEN_PORT = 8080
SCENARIO_KEYS = tuple(SCENARIOS)

_NAME_INVALID = re.compile(r"[^a-z0-9_-]+")
_ENV_REF = re.compile(r"^\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))$")
_MAX_OUTPUT_TOKENS = 10_000_000

# Transformers the gateway's translators make unnecessary (lower-cased CCR name -> why).
_HANDLED = {
    "anthropic": "the provider gets api: anthropic (Anthropic-format requests pass through)",
    "openai": "the provider gets api: openai",
    "gemini": "the provider gets api: gemini (the Gemini translators convert requests and responses)",
    "deepseek": "handled by the OpenAI translator (reasoning_content becomes thinking blocks)",
    "openrouter": "handled by the OpenAI translator",
    "groq": "handled by the OpenAI translator",
    "reasoning": (
        "handled by the OpenAI translator (reasoning_content becomes thinking blocks); to also forward a "
        "client's thinking request as reasoning_effort, add capabilities: [thinking] to the model"
    ),
    "enhancetool": (
        "not needed: the OpenAI translator hands unparseable tool arguments to the client as "
        "_raw_arguments instead of failing the response"
    ),
    "cleancache": (
        "handled by the OpenAI and Gemini translators (they drop cache_control); requests to an "
        "api: anthropic provider keep it"
    ),
    "maxcompletiontokens": "handled by the OpenAI translator (it sends max_completion_tokens)",
    "streamoptions": "handled by the OpenAI translator (it asks for usage in streams)",
    "sampling": "handled by the translators (they map temperature and top_p themselves)",
    "maxtoken": "mapped to max_output_tokens (the gateway clamps max_tokens to it)",
}
_UNSUPPORTED = {
    "tooluse": (
        "has no equivalent (it forces tool_choice and adds an ExitTool); the client's tool_choice is sent unchanged"
    ),
    "customparams": "extra request parameters cannot be set by the policy",
}
_VERTEX = ("vertex-gemini", "vertex-claude")


@dataclass(slots=True)
class _Provider:
    """A provider being imported (mutable while the Router may still add models to it)."""

    name: str  # normalised
    original: str
    api: str
    base_url: str
    api_key_env: str = ""
    models: list[str] = field(default_factory=list)  # CCR's model strings = the provider's ids
    max_tokens: int = 0  # provider-wide maxtoken transformer
    model_max_tokens: dict[str, int] = field(default_factory=dict)  # model id -> per-model maxtoken
    policy_names: dict[str, str] = field(default_factory=dict)  # model id -> policy model name


def convert(config: dict[str, Any], listen_port: int | None = None) -> Conversion:
    """CCR config (parsed) -> policy data and findings. Raises ``ConfigError`` when no provider can
    be imported. ``listen_port`` (the command line's) wins over CCR's PORT."""
    return _Converter(config).convert(listen_port)


class _Converter:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.findings: list[Finding] = []
        self.providers: list[_Provider] = []
        self.by_original: dict[str, _Provider] = {}
        self.skipped: set[str] = set()  # original names of providers that could not be imported
        self.transformer_uses: dict[str, list[str]] = {}  # transformer -> where it was used
        self.transformer_options: dict[str, list[str]] = {}  # transformer -> where it had options
        self.key_env_values: dict[str, str] = {}  # env var -> the literal key it stands for (never output)

    def add(self, kind: Kind, text: str) -> None:
        finding = Finding(kind, " ".join(text.split()))
        if finding not in self.findings:
            self.findings.append(finding)

    def convert(self, listen_port: int | None) -> Conversion:
        raw_providers = self._raw_providers()
        for index, entry in enumerate(raw_providers):
            self._provider(index, entry)
        self._transformer_findings()
        router = self._router()
        self._drop_modelless_providers()
        if not self.providers:
            raise ConfigError("no provider could be imported", self._sorted_findings())
        self._name_models()
        policy: dict[str, Any] = {"listener": self._listener(listen_port)}
        policy["providers"] = [self._provider_data(p) for p in self.providers]
        if router:
            policy["router"] = {
                key: Target(self._target_text(value)) if isinstance(value, tuple) else value
                for key, value in router.items()
            }
        if self._apikey():
            policy["auth"] = {"required": True}
        self._other_keys()
        return Conversion(policy, self._sorted_findings())

    def _sorted_findings(self) -> tuple[Finding, ...]:
        order = list(Kind)
        return tuple(sorted(self.findings, key=lambda f: order.index(f.kind)))

    # --- providers ---

    def _raw_providers(self) -> list[Any]:
        key = "Providers" if "Providers" in self.config else "providers"
        if "Providers" in self.config and "providers" in self.config:
            self.add(Kind.NOTE, "both Providers and providers are set; only Providers was imported")
        value = self.config.get(key)
        if not isinstance(value, list) or not value:
            raise ConfigError("the config has no Providers (a non-empty list of providers is required)")
        return value

    def _provider(self, index: int, entry: Any) -> None:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            self.add(Kind.CANNOT, f"Providers[{index}] has no name; skipped")
            return
        original = entry["name"]
        label = f"provider {original!r}"
        if original in self.by_original:
            self.add(Kind.CANNOT, f"{label} is listed twice; the second entry was skipped")
            return
        uses, per_model = self._transformers(entry.get("transformer"), original)
        url = entry.get("api_base_url")
        if not isinstance(url, str) or not url.strip():
            self.skipped.add(original)
            self.add(Kind.CANNOT, f"{label} has no api_base_url; skipped")
            return
        located = self._api_and_base_url(label, url.strip(), {name for name, _ in uses})
        if located is None:
            self.skipped.add(original)
            return
        api, base_url = located
        name = self._unique_name(original)
        if name != original:
            self.add(
                Kind.NOTE,
                f"{label} is named {name!r} (provider names are [a-z0-9_-]); Router targets were rewritten",
            )
        provider = _Provider(name, original, api, base_url)
        provider.api_key_env = self._api_key_env(provider, entry.get("api_key"))
        models = entry.get("models")
        if models is not None and not isinstance(models, list):
            self.add(Kind.CANNOT, f"{label}: models is not a list; ignored")
        for model in models if isinstance(models, list) else []:
            if not isinstance(model, str) or not model.strip():
                self.add(Kind.CANNOT, f"{label}: model {model!r} is not a model name; skipped")
            elif model.strip() not in provider.models:
                provider.models.append(model.strip())
        provider.max_tokens = self._max_tokens(uses, label)
        for model, model_uses in per_model.items():
            if model not in provider.models:
                self.add(Kind.NOTE, f"{label}: transformer settings for unlisted model {model!r} ignored")
                continue
            limit = self._max_tokens(model_uses, f"{label}, model {model!r}")
            if limit:
                provider.model_max_tokens[model] = limit
        self.providers.append(provider)
        self.by_original[original] = provider

    def _unique_name(self, original: str) -> str:
        base = _NAME_INVALID.sub("-", original.strip().lower()).lstrip("-_")[:63].rstrip("-") or "provider"
        taken = {p.name for p in self.providers}
        name, suffix = base, 2
        while name in taken:
            name = f"{base[: 63 - len(str(suffix)) - 1]}-{suffix}"
            suffix += 1
        return name

    def _api_and_base_url(self, label: str, url: str, uses: set[str]) -> tuple[str, str] | None:
        """(api, base_url) as the policy wants them; None (with a finding) when not expressible."""
        if url.startswith("$"):
            self.add(Kind.CANNOT, f"{label}: api_base_url from an environment variable; skipped")
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.add(Kind.CANNOT, f"{label}: api_base_url is not an http(s) URL with a host; skipped")
            return None
        host = parts.netloc.rpartition("@")[2]
        if parts.username or parts.password:
            self.add(Kind.CANNOT, f"{label}: credentials in api_base_url were dropped (not copied)")
        if parts.query or parts.fragment:
            self.add(
                Kind.CANNOT,
                f"{label}: the query string of api_base_url was dropped (base_url carries none; not copied "
                "since it may hold a key)",
            )
        if uses & set(_VERTEX) or parts.hostname.endswith("aiplatform.googleapis.com"):
            self.add(
                Kind.CANNOT,
                f"{label}: Vertex AI authenticates with Google OAuth tokens, not an API key; skipped",
            )
            return None
        path = parts.path.rstrip("/")
        root = f"{parts.scheme}://{host}"
        if "anthropic" in uses or path.endswith("/messages"):
            path = _strip_suffix(_strip_suffix(path, "/messages"), "/v1")
            return "anthropic", root + path
        google = parts.hostname == "generativelanguage.googleapis.com" and not path.endswith("/chat/completions")
        if "gemini" in uses or google:
            cut = path.find("/models")
            path = path[:cut] if cut >= 0 else path
            if not path:
                path = "/v1beta"
                self.add(Kind.NOTE, f"{label}: Gemini base_url set to {root + path}")
            return "gemini", root + path
        if path.endswith("/chat/completions"):
            return "openai", root + _strip_suffix(path, "/chat/completions")
        for suffix in ("/responses", "/completions"):
            if path.endswith(suffix):
                path = _strip_suffix(path, suffix)
                self.add(
                    Kind.NOTE,
                    f"{label}: api_base_url ends in {suffix}; the gateway calls {root + path}/chat/completions",
                )
                return "openai", root + path
        self.add(
            Kind.NOTE,
            f"{label}: api_base_url does not end in /chat/completions; taken as an OpenAI-compatible base "
            f"URL ({root + path}/chat/completions is called)",
        )
        return "openai", root + path

    def _api_key_env(self, provider: _Provider, key: Any) -> str:
        label = f"provider {provider.original!r}"
        if key is None or key == "":
            return ""
        if not isinstance(key, str):
            self.add(Kind.CANNOT, f"{label}: api_key is not a string; no key is sent")
            return ""
        ref = _ENV_REF.match(key.strip())
        if ref:
            variable = ref.group(1) or ref.group(2)
            self.add(Kind.NOTE, f"{label} reads its key from ${variable} (api_key_env: {variable})")
            self.key_env_values.setdefault(variable, key.strip())  # a literal key must not reuse this name
            return variable
        base = re.sub(r"[^A-Z0-9]+", "_", provider.name.upper()).strip("_")
        base = f"_{base}" if base[:1].isdigit() else base
        variable, suffix = f"{base}_API_KEY", 2
        while self.key_env_values.get(variable, key) != key:
            variable = f"{base}_{suffix}_API_KEY"
            suffix += 1
        self.key_env_values[variable] = key
        self.add(
            Kind.ACTION,
            f"export {variable}=... for the gateway ({label}: the key from config.json; not written to the policy)",
        )
        return variable

    def _transformers(self, value: Any, original: str) -> tuple[list[tuple[str, Any]], dict[str, list]]:
        """A provider's ``transformer`` -> (provider-wide uses, {model: uses}); records findings."""
        if value is None:
            return [], {}
        if not isinstance(value, dict):
            self.add(Kind.CANNOT, f"provider {original!r}: transformer is not an object; ignored")
            return [], {}
        provider_uses = self._uses(value.get("use"), original)
        per_model = {}
        for model, spec in value.items():
            if model != "use":
                uses = spec.get("use") if isinstance(spec, dict) else None
                per_model[model] = self._uses(uses, f"{original}[{model}]")
        return provider_uses, per_model

    def _uses(self, value: Any, where: str) -> list[tuple[str, Any]]:
        uses = []
        for item in value if isinstance(value, list) else []:
            name, options = (
                (item[0], item[1] if len(item) > 1 else None) if isinstance(item, list) and item else (item, None)
            )
            if not isinstance(name, str):
                continue
            key = name.lower()
            uses.append((key, options))
            self.transformer_uses.setdefault(key, []).append(where)
            if options and key != "maxtoken":
                self.transformer_options.setdefault(key, []).append(where)
        return uses

    def _max_tokens(self, uses: list[tuple[str, Any]], label: str) -> int:
        """The limit a ``maxtoken`` transformer sets (0: none)."""
        for name, options in uses:
            if name == "maxtoken":
                value = _int(options.get("max_tokens")) if isinstance(options, dict) else None
                if value is not None and 1 <= value <= _MAX_OUTPUT_TOKENS:
                    return value
                self.add(Kind.CANNOT, f"{label}: maxtoken without a valid max_tokens; no limit set")
        return 0

    def _transformer_findings(self) -> None:
        for key, places in self.transformer_uses.items():
            where = f"transformer {key!r} (used by {', '.join(dict.fromkeys(places))})"
            if key in _HANDLED:
                self.add(Kind.NOTE, f"{where}: {_HANDLED[key]}")
            elif key in _UNSUPPORTED:
                self.add(Kind.CANNOT, f"{where} {_UNSUPPORTED[key]}")
            elif key in _VERTEX:
                continue  # reported with its provider
            else:
                self.add(
                    Kind.CANNOT,
                    f"{where} is unknown to the gateway (a custom plugin?); not applied, so requests to "
                    "these providers may fail",
                )
            if key in self.transformer_options and key in _HANDLED:
                self.add(Kind.CANNOT, f"{where}: its options were not applied")
        for index, plugin in enumerate(self.config.get("transformers") or []):
            path = plugin.get("path") if isinstance(plugin, dict) else None
            what = repr(path) if isinstance(path, str) else f"transformers[{index}]"
            self.add(Kind.CANNOT, f"custom transformer plugin {what}: JavaScript plugins cannot run in the gateway")

    # --- router ---

    def _router(self) -> dict[str, Any]:
        """Router -> {key: (provider, model id) | threshold}; adds Router models to their providers."""
        router = self.config.get("Router")
        out: dict[str, Any] = {}
        if isinstance(router, dict):
            for key, value in router.items():
                if key in SCENARIO_KEYS:
                    target = self._resolve(key, value)
                    if target:
                        out[key] = target
                elif key == "longContextThreshold":
                    threshold = _int(value)
                    if threshold is not None and 1 <= threshold <= 100_000_000:
                        out[key] = threshold
                    else:
                        self.add(Kind.CANNOT, f"Router.longContextThreshold {value!r} is not a token count; dropped")
                else:
                    self.add(Kind.CANNOT, f"Router.{key} has no equivalent in the policy router; dropped")
        elif router is not None:
            self.add(Kind.CANNOT, "Router is not an object; ignored")
        if "default" not in out:
            self.add(Kind.NOTE, "no Router.default was imported; only requests naming a policy model are routed")
        custom = self.config.get("CUSTOM_ROUTER_PATH")
        if custom:
            self.add(
                Kind.CANNOT,
                f"CUSTOM_ROUTER_PATH {custom!r}: a JavaScript router cannot run in the gateway; port it to a "
                "Python hook and set router.custom: package.module:function",
            )
        return out

    def _resolve(self, key: str, value: Any) -> tuple[_Provider, str] | None:
        if value in (None, ""):
            return None
        if not isinstance(value, str) or "," not in value:
            self.add(Kind.CANNOT, f"Router.{key} {value!r} is not 'provider,model'; dropped")
            return None
        name, _, model = (part.strip() for part in value.partition(","))
        provider = self.by_original.get(name) or next(
            (p for p in self.providers if name.lower() in (p.original.lower(), p.name)), None
        )
        if provider is None:
            why = "could not be imported" if name in self.skipped else "is not in Providers"
            self.add(Kind.CANNOT, f"Router.{key} {value!r}: provider {name!r} {why}; dropped")
            return None
        if not model:
            self.add(Kind.CANNOT, f"Router.{key} {value!r} names no model; dropped")
            return None
        if model not in provider.models:
            provider.models.append(model)
            self.add(Kind.NOTE, f"Router.{key}: model {model!r} was not in provider {provider.name!r}'s models; added")
        return provider, model

    def _target_text(self, target: tuple[_Provider, str]) -> str:
        provider, model = target
        return f"{provider.name},{provider.policy_names[model]}"

    def _drop_modelless_providers(self) -> None:
        for provider in [p for p in self.providers if not p.models]:
            self.add(Kind.CANNOT, f"provider {provider.original!r} has no models; skipped")
            self.providers.remove(provider)

    def _name_models(self) -> None:
        """A policy model name maps to one provider; CCR lets several serve the same model."""
        owner: dict[str, str] = {}
        for provider in self.providers:
            for model in provider.models:
                name, suffix = model, 2
                if name in owner:
                    name = f"{provider.name}/{model}"
                while name in owner:
                    name = f"{provider.name}/{model}-{suffix}"
                    suffix += 1
                if name != model:
                    self.add(
                        Kind.NOTE,
                        f"model {model!r} is also served by provider {owner[model]!r}; in provider "
                        f"{provider.name!r} it is named {name!r} (id: {model})",
                    )
                owner[name] = provider.name
                provider.policy_names[model] = name

    def _provider_data(self, provider: _Provider) -> dict[str, Any]:
        data: dict[str, Any] = {"name": provider.name, "api": provider.api, "base_url": provider.base_url}
        if provider.api_key_env:
            data["api_key_env"] = provider.api_key_env
        models: list[Any] = []
        for model in provider.models:
            name = provider.policy_names[model]
            limit = provider.model_max_tokens.get(model, provider.max_tokens)
            if name == model and not limit:
                models.append(model)
                continue
            entry: dict[str, Any] = {"name": name}
            if name != model:
                entry["id"] = model
            if limit:
                entry["max_output_tokens"] = limit
            models.append(entry)
        data["models"] = models
        return data

    # --- everything else ---

    def _listener(self, listen_port: int | None) -> dict[str, Any]:
        address = "127.0.0.1"
        host = self.config.get("HOST")
        if isinstance(host, str) and host.strip():
            host = host.strip()
            if host == "localhost":
                host = "127.0.0.1"
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                self.add(Kind.CANNOT, f"HOST {host!r} is not an IP address; the gateway listens on {address}")
            else:
                address = str(ip)
                if not ip.is_loopback:
                    self.add(
                        Kind.ACTION,
                        f"listener.address {address} accepts connections from other hosts, and the gateway does "
                        "not check client keys yet: anyone who reaches it spends your provider keys; use "
                        "127.0.0.1 unless that is intended",
                    )
        port = _int(self.config.get("PORT"))
        if "PORT" in self.config and not (port and 1 <= port <= 65535):
            self.add(Kind.CANNOT, f"PORT {self.config['PORT']!r} is not a port number; ignored")
            port = None
        if listen_port is not None:
            if port and port != listen_port:
                self.add(Kind.NOTE, f"PORT {port} replaced by --listen-port {listen_port}")
            port = listen_port
        elif port is None:
            port = DEFAULT_LISTEN_PORT
            self.add(
                Kind.NOTE,
                f"no PORT in the config (CCR's default is {CCR_DEFAULT_PORT}); the gateway listens on {port}: "
                f"point ANTHROPIC_BASE_URL at http://127.0.0.1:{port}",
            )
        return {"address": address, "port": port}

    def _apikey(self) -> bool:
        """CCR's APIKEY (one shared client secret) becomes ``auth.required: true``: clients then need
        a virtual key, which the user creates (the APIKEY itself is not copied: it is a secret, and
        not in the gateway's key format)."""
        key = self.config.get("APIKEY")
        if key in (None, ""):
            return False
        self.add(
            Kind.ACTION,
            "CCR's APIKEY became auth.required: true; create a virtual key (`ccr-gateway keys create "
            "--tenant ccr --name claude-code`) and give it to clients as ANTHROPIC_API_KEY instead of APIKEY",
        )
        return True

    def _other_keys(self) -> None:
        known = {"Providers", "providers", "Router", "transformers", "CUSTOM_ROUTER_PATH", "HOST", "PORT", "APIKEY"}
        for key in self.config:
            if key in known:
                continue
            if key in _IGNORED:
                self.add(Kind.NOTE, f"{key} ignored: {_IGNORED[key]}")
            elif key == "PROXY_URL":
                self.add(Kind.CANNOT, "PROXY_URL: the gateway does not send provider traffic through a proxy")
            else:
                self.add(Kind.NOTE, f"{key} is not known to the importer; ignored")


_IGNORED = {
    "API_TIMEOUT_MS": "upstream timeouts are set by the gateway's Envoy routes",
    "LOG": "the gateway always logs (JSON lines on stderr; Envoy's access log on stdout)",
    "LOG_LEVEL": "use ccr-gateway --log-level",
    "StatusLine": "Claude Code's status line is not part of the gateway",
    "NON_INTERACTIVE_MODE": "not applicable to the gateway",
    "CLAUDE_PATH": "not applicable to the gateway",
    "forceUseImageAgent": "not applicable to the gateway",
}


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _strip_suffix(path: str, suffix: str) -> str:
    return path[: -len(suffix)] if path.endswith(suffix) else path
