"""Provider keys (and later other credentials) read from Vault: the client (vault_client), the
cache that keeps them fresh (store), and the process-wide store ext_proc's routing table uses."""

from __future__ import annotations
