"""The policy's ``auth.jwt`` section: the OIDC issuers whose tokens the gateway accepts, and which of
a token's claims name the caller.

```yaml
auth:
  jwt:
    providers:
      - name: corp
        issuer: https://login.example.com/
        audiences: [ccr-gateway]                     # the token's aud must hold one of these
        jwks: {uri: https://login.example.com/.well-known/jwks.json, cache_s: 300}   # or {file: jwks.json}
        from: [authorization, x-api-key]             # default: both (authorization as "Bearer <token>")
        claims: {tenant: org, key: ccr_key, subject: sub}   # tenant required; key optional; subject default sub
```

Envoy verifies the tokens (control_plane.resources.jwt): signature against the JWKS, ``exp`` and
``nbf``, the issuer and the audiences. A ``uri`` JWKS is fetched by Envoy itself (a cluster of its
own) and cached for ``cache_s``; a ``file`` is read here, with the policy, and sent to Envoy inline,
so a bad file is reported like any other mistake and an edit reaches Envoy with the next policy load.

Claims are named by their top-level name, or a dotted path into nested objects (``org.id``); the
``key`` claim, when the policy names one, holds the id of a virtual key whose models and limits apply
to the caller (it must belong to the same tenant).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from control_plane.policy.yaml_check import Checker, Located, join

_FIELDS = ("providers",)
_PROVIDER_FIELDS = ("name", "issuer", "audiences", "jwks", "from", "claims")
_JWKS_FIELDS = ("uri", "file", "cache_s")
_CLAIM_FIELDS = ("tenant", "key", "subject")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Envoy reads a claim with %DYNAMIC_METADATA(...:a:b)%, whose path is split on ':' and ends at ')':
# plain names joined by dots, nothing else.
_CLAIM = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
DEFAULT_FROM = ("authorization", "x-api-key")
DEFAULT_SUBJECT_CLAIM = "sub"
DEFAULT_CACHE_SECONDS = 300
MAX_CACHE_SECONDS = 86_400
MAX_JWKS_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class JwksSpec:
    """Where the signing keys are: a URL Envoy fetches, or the JSON text of a file read with the policy."""

    uri: str = ""
    cache_seconds: int = DEFAULT_CACHE_SECONDS
    file: str = ""  # as resolved (absolute)
    inline: str = ""  # the file's content

    @property
    def host(self) -> str:
        return urlsplit(self.uri).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.uri)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.uri).scheme == "https"


@dataclass(frozen=True, slots=True)
class JwtProviderSpec:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    jwks: JwksSpec
    from_headers: tuple[str, ...] = DEFAULT_FROM
    tenant_claim: str = "tenant"
    key_claim: str = ""  # "": tokens name no virtual key
    subject_claim: str = DEFAULT_SUBJECT_CLAIM

    @property
    def cluster(self) -> str:
        """The Envoy cluster a ``uri`` JWKS is fetched through."""
        return f"jwks_{self.name}"


@dataclass(frozen=True, slots=True)
class JwtSpec:
    providers: tuple[JwtProviderSpec, ...] = ()

    @property
    def from_headers(self) -> tuple[str, ...]:
        """Every header some provider reads a token from, in order of first mention."""
        return tuple(dict.fromkeys(name for p in self.providers for name in p.from_headers))


def parse_jwt(check: Checker, at: Located, path: str = "auth.jwt") -> JwtSpec | None:
    """``auth.jwt`` checked (a ``file`` JWKS read); None when it has problems (recorded in ``check``)."""
    before = len(check.problems)
    fields = check.mapping(at, path, _FIELDS, required=("providers",))
    providers: list[JwtProviderSpec] = []
    if "providers" in fields:
        providers_path = join(path, "providers")
        items = check.non_empty_sequence(fields["providers"], providers_path, "provider")
        names: dict[str, int] = {}
        issuers: dict[str, int] = {}
        for index, item in enumerate(items):
            item_path = join(providers_path, index)
            provider = _provider(check, item, item_path)
            if provider is None:
                continue
            for seen, value, what in ((names, provider.name, "name"), (issuers, provider.issuer, "issuer")):
                if value in seen:
                    message = f"{what} {value!r} is already used by {providers_path}[{seen[value]}]"
                    check.problem(item, join(item_path, what), message)
                seen.setdefault(value, index)
            providers.append(provider)
    if len(check.problems) > before:
        return None
    return JwtSpec(tuple(providers))


def _provider(check: Checker, at: Located, path: str) -> JwtProviderSpec | None:
    before = len(check.problems)
    fields = check.mapping(at, path, _PROVIDER_FIELDS, required=("name", "issuer", "audiences", "jwks", "claims"))
    name = (
        check.string(fields["name"], join(path, "name"), _NAME, "name (a-z, 0-9, _ and -)")
        if "name" in fields
        else None
    )
    issuer = check.string(fields["issuer"], join(path, "issuer")) if "issuer" in fields else None
    audiences: list[str] = []
    if "audiences" in fields:
        audiences_path = join(path, "audiences")
        # Without one, a token the issuer made for any other application would be let in.
        items = check.non_empty_sequence(fields["audiences"], audiences_path, "audience")
        for index, item in enumerate(items):
            audience = check.string(item, join(audiences_path, index))
            if audience is not None:
                audiences.append(audience)
    jwks = _jwks(check, fields["jwks"], join(path, "jwks")) if "jwks" in fields else None
    from_headers = DEFAULT_FROM
    if "from" in fields:
        from_headers = _from_headers(check, fields["from"], join(path, "from"))
    claims = _claims(check, fields["claims"], join(path, "claims")) if "claims" in fields else None
    if len(check.problems) > before or name is None or issuer is None or jwks is None or claims is None:
        return None
    tenant, key, subject = claims
    return JwtProviderSpec(name, issuer, tuple(audiences), jwks, from_headers, tenant, key, subject)


def _jwks(check: Checker, at: Located, path: str) -> JwksSpec | None:
    before = len(check.problems)
    fields = check.mapping(at, path, _JWKS_FIELDS)
    if isinstance(at.value, dict) and ("uri" in fields) == ("file" in fields):
        check.problem(at, path, "name one source of keys: uri or file")
        return None
    if "file" in fields and "cache_s" in fields:
        check.problem(fields["cache_s"], join(path, "cache_s"), "only a uri is cached (a file is read with the policy)")
    if "file" in fields:
        file = check.string(fields["file"], join(path, "file"))
        if file is None:
            return None
        return _jwks_file(check, fields["file"], join(path, "file"), file)
    if "uri" not in fields:
        return None
    uri = check.string(fields["uri"], join(path, "uri"))
    cache = DEFAULT_CACHE_SECONDS
    if "cache_s" in fields:
        value = check.integer(fields["cache_s"], join(path, "cache_s"), 1, MAX_CACHE_SECONDS)
        cache = cache if value is None else value
    if uri is None:
        return None
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        check.problem(fields["uri"], join(path, "uri"), f"{uri!r} is not an http(s) URL like https://idp/jwks.json")
        return None
    if len(check.problems) > before:
        return None
    return JwksSpec(uri=uri, cache_seconds=cache)


def _jwks_file(check: Checker, at: Located, path: str, written: str) -> JwksSpec | None:
    """The file, relative to the policy file's directory (else the working directory), read now:
    it must hold a JSON Web Key Set (``{"keys": [...]}``, at least one key)."""
    resolved = os.path.expanduser(written)
    if not os.path.isabs(resolved):
        base = os.path.dirname(os.path.abspath(check.source)) if os.path.isfile(check.source) else os.getcwd()
        resolved = os.path.join(base, resolved)
    try:
        with open(resolved, "rb") as handle:
            raw = handle.read(MAX_JWKS_BYTES + 1)
    except OSError as exc:
        check.problem(at, path, f"cannot read {resolved}: {exc.strerror}")
        return None
    if len(raw) > MAX_JWKS_BYTES:
        check.problem(at, path, f"{resolved} is larger than {MAX_JWKS_BYTES} bytes: not a key set")
        return None
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        check.problem(at, path, f"{resolved} is not JSON: {exc}")
        return None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(key, dict) for key in keys):
        check.problem(at, path, f'{resolved} is not a JSON Web Key Set: expected {{"keys": [{{...}}, ...]}}')
        return None
    return JwksSpec(file=resolved, inline=raw.decode("utf-8"))


def _from_headers(check: Checker, at: Located, path: str) -> tuple[str, ...]:
    names: list[str] = []
    items = check.sequence(at, path)
    if not items and isinstance(at.value, list):
        check.problem(at, path, "at least one header is required")
    for index, item in enumerate(items):
        name = check.string(item, join(path, index), _HEADER_NAME, "header name (lowercase)")
        if name is None:
            continue
        if name.startswith("x-ccr-") or name.startswith(":"):
            check.problem(item, join(path, index), f"{name!r} is the gateway's own header: clients cannot set it")
            continue
        if name not in names:
            names.append(name)
    return tuple(names)


def _claims(check: Checker, at: Located, path: str) -> tuple[str, str, str] | None:
    before = len(check.problems)
    fields = check.mapping(at, path, _CLAIM_FIELDS, required=("tenant",))
    found = {"key": "", "subject": DEFAULT_SUBJECT_CLAIM}
    for name, value in fields.items():
        claim = check.string(value, join(path, name))
        if claim is not None and not _CLAIM.match(claim):
            message = f"{claim!r} is not a claim name (a name, or a dotted path into nested claims like org.id)"
            check.problem(value, join(path, name), message)
        elif claim is not None:
            found[name] = claim
    if len(check.problems) > before:  # a missing tenant too (required by check.mapping)
        return None
    return found["tenant"], found["key"], found["subject"]
