"""Connection strings that name their secrets (ccr.v1.env_refs, shared by every process)."""

from ccr.v1.env_refs import MASK, EnvError, expand_env, redact_url

__all__ = ["MASK", "EnvError", "expand_env", "redact_url"]
