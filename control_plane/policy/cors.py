"""The policy's optional CORS section (``listener.cors``), for browser clients of the gateway.

```yaml
listener:
  cors:
    allow_origins: ["https://app.example.com"]   # or ["*"]; required
    allow_headers: [content-type, x-api-key, anthropic-version, authorization]   # default: these
    max_age: 600                                  # seconds a browser may cache a preflight; default 600
    allow_credentials: false
```

Envoy answers the preflights (control_plane.resources.edge); without this section an ``OPTIONS``
request is answered 405 by the decision service. Problems are reported with their line, like the
rest of the policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from control_plane.policy.yaml_check import Checker, Located, join, kind_of

DEFAULT_ALLOW_HEADERS = (
    "content-type",
    "authorization",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "x-stainless-retry-count",
)
DEFAULT_MAX_AGE_SECONDS = 600
MAX_MAX_AGE_SECONDS = 86_400  # browsers cap it lower anyway (Chromium: 2 h)
_FIELDS = ("allow_origins", "allow_headers", "max_age", "allow_credentials")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True, slots=True)
class CorsSpec:
    allow_origins: tuple[str, ...]  # exact origins, or ("*",)
    allow_headers: tuple[str, ...] = DEFAULT_ALLOW_HEADERS
    max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS
    allow_credentials: bool = False


def parse_cors(check: Checker, at: Located, path: str = "listener.cors") -> CorsSpec | None:
    """``listener.cors`` checked; None when it has problems (recorded in ``check``)."""
    before = len(check.problems)
    fields = check.mapping(at, path, _FIELDS, required=("allow_origins",))
    origins: list[str] = []
    if "allow_origins" in fields:
        origins_path = join(path, "allow_origins")
        items = check.non_empty_sequence(fields["allow_origins"], origins_path, "origin")
        for index, item in enumerate(items):
            origin = check.string(item, join(origins_path, index))
            if origin is None:
                continue
            if origin != "*" and not _ORIGIN.match(origin):
                message = f"{origin!r} is not an origin like https://app.example.com (scheme and host, no path) or '*'"
                check.problem(item, join(origins_path, index), message)
                continue
            origins.append(origin)
        if "*" in origins and len(origins) > 1:
            check.problem(fields["allow_origins"], origins_path, "'*' allows every origin: list it alone")
    headers = DEFAULT_ALLOW_HEADERS
    if "allow_headers" in fields:
        headers_path = join(path, "allow_headers")
        names = []
        for index, item in enumerate(check.sequence(fields["allow_headers"], headers_path)):
            name = check.string(item, join(headers_path, index), _HEADER_NAME, "header name")
            if name is not None:
                names.append(name.lower())
        headers = tuple(names)
    max_age = DEFAULT_MAX_AGE_SECONDS
    if "max_age" in fields:
        value = check.integer(fields["max_age"], join(path, "max_age"), 0, MAX_MAX_AGE_SECONDS)
        max_age = max_age if value is None else value
    credentials = False
    if "allow_credentials" in fields:
        flag = fields["allow_credentials"]
        if isinstance(flag.value, bool):
            credentials = flag.value
        else:
            check.problem(flag, join(path, "allow_credentials"), f"must be true or false, got {kind_of(flag.value)}")
    if credentials and "*" in origins:
        check.problem(
            fields.get("allow_credentials"),
            join(path, "allow_credentials"),
            "browsers refuse credentials with allow_origins '*': list the origins",
        )
    if len(check.problems) > before:
        return None
    return CorsSpec(tuple(origins), headers, max_age, credentials)
