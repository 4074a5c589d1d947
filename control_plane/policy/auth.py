"""The policy's optional ``auth:`` section: whether clients must present a virtual key, and where
the keys are kept.

```yaml
auth:
  required: true                                   # default false: no key -> anonymous, as before
  keys: {sqlite: ~/.local/share/ccr-gateway/keys.db}   # or {postgres: "postgresql://...${PGPASSWORD}@db/ccr"}
  limits: {redis: redis://127.0.0.1:6379/0}        # the keys' limits cluster-wide (control_plane.policy.auth_limits)
  jwt: {providers: [...]}                          # OIDC tokens verified by Envoy (control_plane.policy.jwt)
```

``required`` travels to the workers in the policy (ccr.v1.Policy.auth_required), so turning it on or
off takes effect at once; the key store's location is read when the workers start (changing it
needs a restart). A key that looks like the gateway's (``sk-ccr-...``) is always checked, required
or not. ``${VAR}`` references in the DSN are kept as written: the worker that connects expands them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The same checks as storage: connection strings are never echoed back in a message.
from control_plane.policy.auth_limits import LimitsSpec, parse_limits
from control_plane.policy.jwt import JwtSpec, parse_jwt
from control_plane.policy.storage import _connection, _literal
from control_plane.policy.yaml_check import Checker, Located, join, kind_of

_FIELDS = ("required", "keys", "limits", "jwt")
_KEY_STORES = ("sqlite", "postgres")


@dataclass(frozen=True, slots=True)
class AuthSpec:
    required: bool = False
    keys_sqlite: str | None = None  # None (and no postgres): the default $XDG_DATA_HOME/ccr-gateway/keys.db
    keys_postgres: str | None = None  # as written: ${VAR} references unexpanded
    limits: LimitsSpec = field(default_factory=LimitsSpec)  # where the keys' limits are counted
    jwt: JwtSpec = field(default_factory=JwtSpec)  # the token issuers Envoy verifies (control_plane.policy.jwt)


def parse_auth(check: Checker, at: Located, path: str = "auth") -> AuthSpec | None:
    """``auth:`` checked; None when it has problems (recorded in ``check``)."""
    before = len(check.problems)
    fields = check.mapping(at, path, _FIELDS)
    required = False
    if "required" in fields:
        flag = fields["required"]
        if isinstance(flag.value, bool):
            required = flag.value
        else:
            check.problem(flag, join(path, "required"), f"must be true or false, got {kind_of(flag.value)}")
    sqlite = postgres = None
    if "keys" in fields:
        keys_path = join(path, "keys")
        stores = check.mapping(fields["keys"], keys_path, _KEY_STORES)
        if len(stores) > 1:
            check.problem(fields["keys"], keys_path, "name one key store: sqlite or postgres")
        if "sqlite" in stores:
            sqlite = _literal(check, stores["sqlite"], join(keys_path, "sqlite"))
        if "postgres" in stores:
            postgres = _connection(check, stores["postgres"], join(keys_path, "postgres"), ("postgresql", "postgres"))
    limits = parse_limits(check, fields["limits"], join(path, "limits")) if "limits" in fields else LimitsSpec()
    jwt = parse_jwt(check, fields["jwt"], join(path, "jwt")) if "jwt" in fields else JwtSpec()
    if len(check.problems) > before:
        return None
    return AuthSpec(required, sqlite, postgres, limits, jwt=jwt or JwtSpec())
