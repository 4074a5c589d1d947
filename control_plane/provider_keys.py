"""The provider keys Envoy injects, read from Vault by the control plane and kept fresh.

For every provider of the policy whose key Envoy injects (GatewayPolicy.envoy_injected_keys: an
``api_key: vault:`` reference outside fallback chains) the control plane reads the reference with
the same engine ext_proc uses for the keys it still injects (ccr.v1.vault_keys): read when a policy
first names it, re-read every ``vault.rotation.interval``, the token renewed at 2/3 of its TTL (or a
new AppRole/Kubernetes login), the last good value kept when a re-read fails. What it read goes to
the rollout (Rollout.set_provider_keys): each key becomes an SDS generic secret for Envoy, and a
rotation is a new version of that secret, pushed without a restart.

A rotation seen here is an audited change (``secret.rotated``: the reference, the providers and the
Vault versions, never a value).

The first read of a new policy's references runs on the event loop, bounded by the Vault client's
timeout (5 s; a refused connection is immediate), so the policy's first snapshot already holds the
keys; the re-reads run in a thread (SecretStore.run).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

from ccr.v1.secret_ref import SecretRef, parse_reference
from ccr.v1.vault_client import VaultClient, VaultSettings
from ccr.v1.vault_keys import Change, SecretStore, policy_settings
from control_plane.policy import GatewayPolicy

log = logging.getLogger("ccr.control_plane.provider_keys")


class ProviderKeys:
    """``on_change(keys, problems)`` is called with every change of what the control plane holds:
    ``keys`` reference text -> key, ``problems`` reference text -> why it has none.
    ``on_rotation(change, providers)`` with each rotation (for the audit log)."""

    def __init__(
        self,
        store: SecretStore | None = None,
        environ: Mapping[str, str] | None = None,
        client_factory: Callable[[VaultSettings, Mapping[str, str]], VaultClient] | None = None,
    ) -> None:
        self.store = store or SecretStore(
            client_factory=client_factory or VaultClient, logger="ccr.control_plane.secrets"
        )
        self.environ = os.environ if environ is None else environ
        self.refs: dict[str, SecretRef] = {}  # the references of the policy followed, by text
        # Every reference followed since the start: a policy ext_proc still holds (or a retained
        # cluster) may name one the newest policy dropped, and its secret must keep its value.
        self.known: dict[str, SecretRef] = {}
        self.providers: dict[str, tuple[str, ...]] = {}  # reference text -> providers using it
        self.settings_problem: str | None = None  # the vault section cannot be followed here
        self.on_change: Callable[[dict[str, str], dict[str, str]], None] | None = None
        self.on_rotation: Callable[[Change, tuple[str, ...]], None] | None = None
        self.store.on_change = self._changed

    def follow(self, policy: GatewayPolicy) -> None:
        """The references of a newly accepted policy; new ones are read now."""
        injected = [p for p in policy.providers if p.name in policy.envoy_injected_keys and p.api_key_ref]
        by_ref: dict[str, list[str]] = {}
        for provider in injected:
            by_ref.setdefault(provider.api_key_ref, []).append(provider.name)
        self.providers = {ref: tuple(names) for ref, names in by_ref.items()}
        self.refs = {text: parse_reference(text) for text in by_ref}  # validated by the policy parser
        self.known.update(self.refs)
        if not self.refs:
            return
        self.settings_problem = None
        try:
            assert policy.vault is not None  # the parser refuses vault: references without the section
            settings = policy_settings(policy.vault.to_proto(), self.environ)
        except ValueError as exc:
            self.settings_problem = f"the control plane cannot reach Vault: {exc}"
            log.error("provider keys from Vault: %s", self.settings_problem)
            return
        self.store.configure(settings, self.environ)
        for ref in self.refs.values():
            self.store.handle(ref)
        self._audit(self.store.read_new())

    def keys(self) -> dict[str, str]:
        """Reference text -> key, for every reference followed that has a value."""
        values = {text: self.store.value(ref) for text, ref in self.known.items()}
        return {text: value for text, value in values.items() if value}

    def problems(self) -> dict[str, str]:
        """Reference text -> why the control plane has no key for it."""
        out = {}
        for text, ref in self.refs.items():
            problem = self.settings_problem or self.store.problem(ref)
            if problem is not None and not self.store.value(ref):
                out[text] = problem
        return out

    def _changed(self, changes: list[Change]) -> None:
        """Re-reads that changed a value (run() calls this on the event loop)."""
        self._audit(changes)
        if self.on_change is not None:
            self.on_change(self.keys(), self.problems())

    def _audit(self, changes: list[Change]) -> None:
        for change in changes:
            providers = self.providers.get(str(change.ref), ())
            if change.rotated and providers and self.on_rotation is not None:
                self.on_rotation(change, providers)
