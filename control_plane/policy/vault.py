"""Vault in the policy: the top-level ``vault:`` section and providers' ``api_key: vault:...``.

    vault:
      address: http://127.0.0.1:8200        # default: the reader's VAULT_ADDR
      auth:
        method: approle                      # token (default) | approle | kubernetes
        role_id: 5b1e...                     # approle; not a secret
        secret_id_env: CCR_VAULT_SECRET_ID   # approle: the variable holding the secret id
      rotation:
        interval: 24h                        # every secret read again this often (default 24h)

A secret is never written here: the token comes from VAULT_TOKEN (``auth.token_env`` renames it),
the AppRole secret id from the variable ``secret_id_env`` names, the Kubernetes JWT from the
service account token file. What reaches ext_proc (Policy.vault, Provider.api_key_ref) is how to
log in and where the key is, never a key (docs/security-vault.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import urlsplit

from ccr.v1 import policy_pb2
from ccr.v1.secret_ref import ReferenceError, SecretRef, parse_reference
from ccr.v1.vault_client import DEFAULT_JWT_PATH, VaultSettings
from control_plane.policy.yaml_check import Checker, Located

METHODS = ("token", "approle", "kubernetes")
DEFAULT_INTERVAL_S = 24 * 3600.0
MIN_INTERVAL_S = 1.0  # tests rotate in seconds; production keeps hours
MAX_INTERVAL_S = 366 * 24 * 3600.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MOUNT = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_AUTH_FIELDS = {
    "token": ("method", "mount", "token_env"),
    "approle": ("method", "mount", "role_id", "secret_id_env"),
    "kubernetes": ("method", "mount", "role", "jwt_path"),
}


@dataclass(frozen=True, slots=True)
class VaultSpec:
    address: str = ""  # "": the reading process's VAULT_ADDR (control plane, ext_proc)
    method: str = "token"
    mount: str = ""
    token_env: str = "VAULT_TOKEN"
    role_id: str = ""
    secret_id_env: str = ""
    role: str = ""
    jwt_path: str = ""
    rotation_interval_s: float = DEFAULT_INTERVAL_S

    def settings(self, environ: Mapping[str, str]) -> VaultSettings:
        """How a process reaches Vault (the address defaulting to ``VAULT_ADDR``); no credential."""
        return VaultSettings(
            address=(self.address or environ.get("VAULT_ADDR", "")).rstrip("/"),
            method=self.method,
            mount=self.mount,
            token_env=self.token_env,
            role_id=self.role_id,
            secret_id_env=self.secret_id_env,
            role=self.role,
            jwt_path=self.jwt_path or DEFAULT_JWT_PATH,
            rotation_interval_s=self.rotation_interval_s,
        )

    def to_proto(self) -> policy_pb2.Vault:
        return policy_pb2.Vault(
            address=self.address,
            auth_method=self.method,
            auth_mount=self.mount,
            token_env=self.token_env,
            role_id=self.role_id,
            secret_id_env=self.secret_id_env,
            role=self.role,
            jwt_path=self.jwt_path,
            rotation_interval_s=self.rotation_interval_s,
        )


def parse_vault(check: Checker, at: Located) -> VaultSpec | None:
    fields = check.mapping(at, "vault", ("address", "auth", "rotation"))
    before = len(check.problems)
    values: dict[str, object] = {}
    if "address" in fields:
        address = check.string(fields["address"], "vault.address")
        parts = urlsplit(address or "")
        if address is not None and (parts.scheme not in ("http", "https") or not parts.hostname or parts.username):
            check.problem(fields["address"], "vault.address", f"{address!r} must be an http:// or https:// URL")
        elif address is not None:
            values["address"] = address.rstrip("/")
    if "auth" in fields:
        values.update(_auth(check, fields["auth"]))
    if "rotation" in fields:
        rotation = check.mapping(fields["rotation"], "vault.rotation", ("interval",))
        if "interval" in rotation:
            interval = _interval(check, rotation["interval"], "vault.rotation.interval")
            if interval is not None:
                values["rotation_interval_s"] = interval
    if len(check.problems) > before:
        return None
    return VaultSpec(**values)  # type: ignore[arg-type]


def _auth(check: Checker, at: Located) -> dict[str, object]:
    if not isinstance(at.value, dict):
        check.problem(at, "vault.auth", "must be a mapping")
        return {}
    method = "token"
    if "method" in at.value:
        method_at = at.value["method"][1]
        method = check.string(method_at, "vault.auth.method") or "token"
        if method not in METHODS:
            check.problem(method_at, "vault.auth.method", f"must be one of {', '.join(METHODS)} (got {method!r})")
            return {}
    fields = check.mapping(at, "vault.auth", _AUTH_FIELDS[method])
    values: dict[str, object] = {"method": method}
    for name in ("token_env", "secret_id_env"):
        if name in fields:
            values[name] = check.string(fields[name], f"vault.auth.{name}", _ENV_NAME, "environment variable name")
    if "mount" in fields:
        values["mount"] = check.string(fields["mount"], "vault.auth.mount", _MOUNT, "auth mount path")
    for name in ("role_id", "role"):
        if name in fields:
            values[name] = check.string(fields[name], f"vault.auth.{name}")
    if "jwt_path" in fields:
        jwt_path = check.string(fields["jwt_path"], "vault.auth.jwt_path")
        if jwt_path is not None and not jwt_path.startswith("/"):
            check.problem(fields["jwt_path"], "vault.auth.jwt_path", f"{jwt_path!r} must be an absolute path")
        values["jwt_path"] = jwt_path
    required = {"approle": ("role_id", "secret_id_env"), "kubernetes": ("role",)}.get(method, ())
    for name in required:
        if name not in fields:
            check.problem(at, "vault.auth", f"{method} auth needs {name}")
    return {k: v for k, v in values.items() if v is not None}


def _interval(check: Checker, at: Located, path: str) -> float | None:
    text = at.value
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        check.problem(at, path, f"{text!r} is not a duration (like 30s, 15m, 24h or 7d)")
        return None
    value = float(Decimal(match[1]) * _UNIT_S[match[2]])
    if not MIN_INTERVAL_S <= value <= MAX_INTERVAL_S:
        check.problem(at, path, f"must be between 1s and 366d, got {text}")
        return None
    return value


def parse_key_reference(check: Checker, at: Located, path: str) -> SecretRef | None:
    """A provider's ``api_key: vault:<mount>/data/<path>#<field>``."""
    text = check.string(at, path)
    if text is None:
        return None
    try:
        return parse_reference(text)
    except ReferenceError as exc:
        check.problem(at, path, f"{text!r} {exc}")
        return None


def check_vault_used(check: Checker, vault: VaultSpec | None, references: list[tuple[Located, str]]) -> None:
    """Every ``api_key: vault:`` needs the ``vault:`` section (where to read it, how to log in)."""
    if vault is None:
        for at, path in references:
            check.problem(at, path, "a vault: reference needs the policy's top-level vault: section")
