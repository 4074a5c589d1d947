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
API_UNSPECIFIED: Api
API_ANTHROPIC: Api
API_OPENAI: Api
API_GEMINI: Api

class Policy(_message.Message):
    __slots__ = ("version", "providers", "limits")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    version: str
    providers: _containers.RepeatedCompositeFieldContainer[Provider]
    limits: Limits
    def __init__(self, version: _Optional[str] = ..., providers: _Optional[_Iterable[_Union[Provider, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_request_bytes",)
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_request_bytes: int
    def __init__(self, max_request_bytes: _Optional[int] = ...) -> None: ...

class Provider(_message.Message):
    __slots__ = ("name", "api", "cluster", "base_path", "api_key_env", "models", "headers", "forward_count_tokens")
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
    name: str
    api: Api
    cluster: str
    base_path: str
    api_key_env: str
    models: _containers.RepeatedCompositeFieldContainer[Model]
    headers: _containers.ScalarMap[str, str]
    forward_count_tokens: bool
    def __init__(self, name: _Optional[str] = ..., api: _Optional[_Union[Api, str]] = ..., cluster: _Optional[str] = ..., base_path: _Optional[str] = ..., api_key_env: _Optional[str] = ..., models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., headers: _Optional[_Mapping[str, str]] = ..., forward_count_tokens: _Optional[bool] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "id", "max_output_tokens", "context_window", "capabilities")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    max_output_tokens: int
    context_window: int
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., max_output_tokens: _Optional[int] = ..., context_window: _Optional[int] = ..., capabilities: _Optional[_Iterable[str]] = ...) -> None: ...
