"""What the Admin API is told at start: where it listens and where each store it reads is. The
control plane (and `up`) fill it from their own arguments; each routes module's ``setup`` opens
what it needs from it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AdminSettings:
    listen: str = "127.0.0.1:9190"  # host:port
    tls_cert: str = ""  # both or neither: HTTPS, and the session cookie Secure
    tls_key: str = ""
    # Admin keys: SQLite by default ($XDG_DATA_HOME/ccr-gateway/admin.db), PostgreSQL when set.
    admin_sqlite: str = ""
    admin_postgres: str = ""
    # JWT principals: a JWKS file or URL; issuer and audience checked when set; claims for role and tenant.
    jwks: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    role_claim: str = "ccr_role"
    tenant_claim: str = "ccr_tenant"
    # The virtual keys clients present (extproc.auth.key_store): SQLite path, or PostgreSQL.
    keys_sqlite: str = ""
    keys_postgres: str = ""
    # The usage ledger: the local SQLite file, or PostgreSQL (the policy's storage).
    ledger_sqlite: str = ""
    ledger_postgres: str = ""
    # The policy: a file, or Consul KV (address, prefix, token).
    policy_path: str = ""
    consul_address: str = ""
    consul_prefix: str = "ccr-gateway/"
    consul_token: str | None = None
    # Live status: the control plane's status file, and Envoy admin URLs to read clusters from.
    status_file: str = ""
    envoy_admins: tuple[str, ...] = field(default_factory=tuple)
    session_seconds: float = 8 * 3600
    sign_in_per_minute: int = 10  # failed sign-ins per client address a minute before 429
