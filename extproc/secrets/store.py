"""ext_proc's store of the ``vault:`` keys it still injects itself (providers in fallback chains:
a chain's attempts are rewritten by ext_proc, docs/security-vault.md); the keys Envoy injects are
read by the control plane instead and never reach this process.

The engine (reading, re-reading each rotation interval, token renewal, keeping the last good
value) is shared with the control plane: ccr.v1.vault_keys. This module names it for ext_proc and
holds the process-wide store.
"""

from __future__ import annotations

from ccr.v1.vault_keys import RENEW_AT, REREAD_MIN_S, RETRY_S, Change, KeyHandle, SecretStore

__all__ = ["RENEW_AT", "REREAD_MIN_S", "RETRY_S", "Change", "KeyHandle", "SecretStore", "default_store"]

_DEFAULT: SecretStore | None = None


def default_store() -> SecretStore:
    """This process's store (one per ext_proc worker), made on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = SecretStore(logger="ccr.extproc.secrets")
    return _DEFAULT
