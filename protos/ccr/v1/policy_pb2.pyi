from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Api(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    API_UNSPECIFIED: _ClassVar[Api]
    API_ANTHROPIC: _ClassVar[Api]
    API_OPENAI: _ClassVar[Api]
    API_GEMINI: _ClassVar[Api]
    API_RESPONSES: _ClassVar[Api]
    API_VERTEX: _ClassVar[Api]
    API_BEDROCK: _ClassVar[Api]
API_UNSPECIFIED: Api
API_ANTHROPIC: Api
API_OPENAI: Api
API_GEMINI: Api
API_RESPONSES: Api
API_VERTEX: Api
API_BEDROCK: Api

class Policy(_message.Message):
    __slots__ = ("version", "providers", "limits", "router", "aliases", "fallbacks", "tenants", "auth_required", "cache", "tracing", "vault", "cert_identities", "batch_api", "batch_workers", "mcp", "responses")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Choice
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Choice, _Mapping]] = ...) -> None: ...
    class CertIdentitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ROUTER_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    TRACING_FIELD_NUMBER: _ClassVar[int]
    VAULT_FIELD_NUMBER: _ClassVar[int]
    CERT_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    BATCH_API_FIELD_NUMBER: _ClassVar[int]
    BATCH_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MCP_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    version: str
    providers: _containers.RepeatedCompositeFieldContainer[Provider]
    limits: Limits
    router: Router
    aliases: _containers.MessageMap[str, Choice]
    fallbacks: _containers.RepeatedCompositeFieldContainer[FallbackChain]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    auth_required: bool
    cache: CacheRules
    tracing: Tracing
    vault: Vault
    cert_identities: _containers.ScalarMap[str, str]
    batch_api: bool
    batch_workers: _containers.RepeatedScalarFieldContainer[str]
    mcp: Mcp
    responses: Responses
    def __init__(self, version: _Optional[str] = ..., providers: _Optional[_Iterable[_Union[Provider, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., router: _Optional[_Union[Router, _Mapping]] = ..., aliases: _Optional[_Mapping[str, Choice]] = ..., fallbacks: _Optional[_Iterable[_Union[FallbackChain, _Mapping]]] = ..., tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ..., auth_required: bool = ..., cache: _Optional[_Union[CacheRules, _Mapping]] = ..., tracing: _Optional[_Union[Tracing, _Mapping]] = ..., vault: _Optional[_Union[Vault, _Mapping]] = ..., cert_identities: _Optional[_Mapping[str, str]] = ..., batch_api: bool = ..., batch_workers: _Optional[_Iterable[str]] = ..., mcp: _Optional[_Union[Mcp, _Mapping]] = ..., responses: _Optional[_Union[Responses, _Mapping]] = ...) -> None: ...

class Responses(_message.Message):
    __slots__ = ("store_disabled", "retention_s")
    STORE_DISABLED_FIELD_NUMBER: _ClassVar[int]
    RETENTION_S_FIELD_NUMBER: _ClassVar[int]
    store_disabled: bool
    retention_s: int
    def __init__(self, store_disabled: bool = ..., retention_s: _Optional[int] = ...) -> None: ...

class Mcp(_message.Message):
    __slots__ = ("path", "session_ttl_s", "servers", "grants", "api", "egress", "authorization_servers")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SESSION_TTL_S_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_SERVERS_FIELD_NUMBER: _ClassVar[int]
    path: str
    session_ttl_s: float
    servers: _containers.RepeatedCompositeFieldContainer[McpServer]
    grants: _containers.RepeatedCompositeFieldContainer[McpGrant]
    api: str
    egress: str
    authorization_servers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, path: _Optional[str] = ..., session_ttl_s: _Optional[float] = ..., servers: _Optional[_Iterable[_Union[McpServer, _Mapping]]] = ..., grants: _Optional[_Iterable[_Union[McpGrant, _Mapping]]] = ..., api: _Optional[str] = ..., egress: _Optional[str] = ..., authorization_servers: _Optional[_Iterable[str]] = ...) -> None: ...

class McpServer(_message.Message):
    __slots__ = ("name", "url", "command", "env", "headers", "timeout_s")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    headers: _containers.ScalarMap[str, str]
    timeout_s: float
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., headers: _Optional[_Mapping[str, str]] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class McpGrant(_message.Message):
    __slots__ = ("tenant", "key_id", "allow", "inherit_allow", "deny", "calls_per_minute")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    INHERIT_ALLOW_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    CALLS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    key_id: str
    allow: _containers.RepeatedScalarFieldContainer[str]
    inherit_allow: bool
    deny: _containers.RepeatedScalarFieldContainer[str]
    calls_per_minute: int
    def __init__(self, tenant: _Optional[str] = ..., key_id: _Optional[str] = ..., allow: _Optional[_Iterable[str]] = ..., inherit_allow: bool = ..., deny: _Optional[_Iterable[str]] = ..., calls_per_minute: _Optional[int] = ...) -> None: ...

class Vault(_message.Message):
    __slots__ = ("address", "auth_method", "auth_mount", "token_env", "role_id", "secret_id_env", "role", "jwt_path", "rotation_interval_s")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AUTH_METHOD_FIELD_NUMBER: _ClassVar[int]
    AUTH_MOUNT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ENV_FIELD_NUMBER: _ClassVar[int]
    ROLE_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_ID_ENV_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    JWT_PATH_FIELD_NUMBER: _ClassVar[int]
    ROTATION_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    address: str
    auth_method: str
    auth_mount: str
    token_env: str
    role_id: str
    secret_id_env: str
    role: str
    jwt_path: str
    rotation_interval_s: float
    def __init__(self, address: _Optional[str] = ..., auth_method: _Optional[str] = ..., auth_mount: _Optional[str] = ..., token_env: _Optional[str] = ..., role_id: _Optional[str] = ..., secret_id_env: _Optional[str] = ..., role: _Optional[str] = ..., jwt_path: _Optional[str] = ..., rotation_interval_s: _Optional[float] = ...) -> None: ...

class Tracing(_message.Message):
    __slots__ = ("otlp", "sample", "service_name")
    OTLP_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    otlp: str
    sample: float
    service_name: str
    def __init__(self, otlp: _Optional[str] = ..., sample: _Optional[float] = ..., service_name: _Optional[str] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("provider", "model")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class WeightedTarget(_message.Message):
    __slots__ = ("target", "weight")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    target: Target
    weight: int
    def __init__(self, target: _Optional[_Union[Target, _Mapping]] = ..., weight: _Optional[int] = ...) -> None: ...

class Choice(_message.Message):
    __slots__ = ("options",)
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    options: _containers.RepeatedCompositeFieldContainer[WeightedTarget]
    def __init__(self, options: _Optional[_Iterable[_Union[WeightedTarget, _Mapping]]] = ...) -> None: ...

class Router(_message.Message):
    __slots__ = ("default", "background", "think", "long_context", "web_search", "image", "long_context_threshold", "custom_hook")
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    THINK_FIELD_NUMBER: _ClassVar[int]
    LONG_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    WEB_SEARCH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LONG_CONTEXT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_HOOK_FIELD_NUMBER: _ClassVar[int]
    default: Choice
    background: Choice
    think: Choice
    long_context: Choice
    web_search: Choice
    image: Choice
    long_context_threshold: int
    custom_hook: str
    def __init__(self, default: _Optional[_Union[Choice, _Mapping]] = ..., background: _Optional[_Union[Choice, _Mapping]] = ..., think: _Optional[_Union[Choice, _Mapping]] = ..., long_context: _Optional[_Union[Choice, _Mapping]] = ..., web_search: _Optional[_Union[Choice, _Mapping]] = ..., image: _Optional[_Union[Choice, _Mapping]] = ..., long_context_threshold: _Optional[int] = ..., custom_hook: _Optional[str] = ...) -> None: ...

class FallbackChain(_message.Message):
    __slots__ = ("primary", "then", "cluster")
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    THEN_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    primary: Target
    then: _containers.RepeatedCompositeFieldContainer[Target]
    cluster: str
    def __init__(self, primary: _Optional[_Union[Target, _Mapping]] = ..., then: _Optional[_Iterable[_Union[Target, _Mapping]]] = ..., cluster: _Optional[str] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("name", "api_key_sha256", "router", "limits", "budget", "models", "key_model_limits", "cache")
    class KeyModelLimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: RateLimits
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[RateLimits, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    API_KEY_SHA256_FIELD_NUMBER: _ClassVar[int]
    ROUTER_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    KEY_MODEL_LIMITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    name: str
    api_key_sha256: _containers.RepeatedScalarFieldContainer[str]
    router: Router
    limits: RateLimits
    budget: Budget
    models: _containers.RepeatedScalarFieldContainer[str]
    key_model_limits: _containers.MessageMap[str, RateLimits]
    cache: CacheRules
    def __init__(self, name: _Optional[str] = ..., api_key_sha256: _Optional[_Iterable[str]] = ..., router: _Optional[_Union[Router, _Mapping]] = ..., limits: _Optional[_Union[RateLimits, _Mapping]] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., models: _Optional[_Iterable[str]] = ..., key_model_limits: _Optional[_Mapping[str, RateLimits]] = ..., cache: _Optional[_Union[CacheRules, _Mapping]] = ...) -> None: ...

class RateLimits(_message.Message):
    __slots__ = ("rpm", "rph", "rpd", "tpm", "tpd", "max_parallel")
    RPM_FIELD_NUMBER: _ClassVar[int]
    RPH_FIELD_NUMBER: _ClassVar[int]
    RPD_FIELD_NUMBER: _ClassVar[int]
    TPM_FIELD_NUMBER: _ClassVar[int]
    TPD_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    rpm: int
    rph: int
    rpd: int
    tpm: int
    tpd: int
    max_parallel: int
    def __init__(self, rpm: _Optional[int] = ..., rph: _Optional[int] = ..., rpd: _Optional[int] = ..., tpm: _Optional[int] = ..., tpd: _Optional[int] = ..., max_parallel: _Optional[int] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("usd", "period")
    USD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    usd: float
    period: str
    def __init__(self, usd: _Optional[float] = ..., period: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_request_bytes",)
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_request_bytes: int
    def __init__(self, max_request_bytes: _Optional[int] = ...) -> None: ...

class Provider(_message.Message):
    __slots__ = ("name", "api", "cluster", "base_path", "api_key_env", "models", "headers", "forward_count_tokens", "api_key_ref", "key_injected_by_envoy", "key_unavailable")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    BASE_PATH_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ENV_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_COUNT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    API_KEY_REF_FIELD_NUMBER: _ClassVar[int]
    KEY_INJECTED_BY_ENVOY_FIELD_NUMBER: _ClassVar[int]
    KEY_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    api: Api
    cluster: str
    base_path: str
    api_key_env: str
    models: _containers.RepeatedCompositeFieldContainer[Model]
    headers: _containers.ScalarMap[str, str]
    forward_count_tokens: bool
    api_key_ref: str
    key_injected_by_envoy: bool
    key_unavailable: str
    def __init__(self, name: _Optional[str] = ..., api: _Optional[_Union[Api, str]] = ..., cluster: _Optional[str] = ..., base_path: _Optional[str] = ..., api_key_env: _Optional[str] = ..., models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., headers: _Optional[_Mapping[str, str]] = ..., forward_count_tokens: bool = ..., api_key_ref: _Optional[str] = ..., key_injected_by_envoy: bool = ..., key_unavailable: _Optional[str] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "id", "max_output_tokens", "context_window", "capabilities", "pricing", "limits", "cache")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    PRICING_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    max_output_tokens: int
    context_window: int
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    pricing: Pricing
    limits: RateLimits
    cache: CacheRules
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., max_output_tokens: _Optional[int] = ..., context_window: _Optional[int] = ..., capabilities: _Optional[_Iterable[str]] = ..., pricing: _Optional[_Union[Pricing, _Mapping]] = ..., limits: _Optional[_Union[RateLimits, _Mapping]] = ..., cache: _Optional[_Union[CacheRules, _Mapping]] = ...) -> None: ...

class CacheRules(_message.Message):
    __slots__ = ("ttl_s", "max_entry_bytes", "when", "off", "dedup_wait_s")
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRY_BYTES_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    OFF_FIELD_NUMBER: _ClassVar[int]
    DEDUP_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    ttl_s: float
    max_entry_bytes: int
    when: str
    off: bool
    dedup_wait_s: float
    def __init__(self, ttl_s: _Optional[float] = ..., max_entry_bytes: _Optional[int] = ..., when: _Optional[str] = ..., off: bool = ..., dedup_wait_s: _Optional[float] = ...) -> None: ...

class Pricing(_message.Message):
    __slots__ = ("input", "output", "cache_read", "cache_write")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_FIELD_NUMBER: _ClassVar[int]
    input: float
    output: float
    cache_read: float
    cache_write: float
    def __init__(self, input: _Optional[float] = ..., output: _Optional[float] = ..., cache_read: _Optional[float] = ..., cache_write: _Optional[float] = ...) -> None: ...
