"""A batch item sent for its owner: the identity a trusted batch worker's request stands for.

A batch worker (``ccr-gateway batch-worker``) sends every item of a batch through the gateway's
own listener, so that routing, limits, budgets, the cache and the ledger apply as to any request.
Whose limits and budget? The batch's owner's: the key that created the batch (the batch API keeps
its id, from ``x-ccr-key``). The worker holds no client's secret (the key store keeps only hashes),
so it presents its own key and names the owner in two headers (ccr.v1.contract):
``x-batch-key`` (the owner's key id, ``-`` for an anonymous batch) and ``x-batch-tenant``.

The gateway believes those headers from a worker whose key id the policy lists
(``batches.workers``) only; from anyone else they are ignored (and removed before a provider, like
``x-batch-item``). The request then is the owner's:

- a virtual key of the store: that key, as it is now. Revoked or expired since the batch was
  created: a 401, the item ends errored (a revoked key's batches stop spending);
- an identity that is not a stored key (a client certificate's or a JWT's caller): its tenant's
  rules, as for that caller;
- ``-``: anonymous, where the policy lets anonymous requests in (a 401 otherwise).

``BatchCaller`` carries the owner's fields plus the batch (its usage record's ``batch_id``) and
the worker's key id (the log's). No I/O: the owner is looked up in the worker's key cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ccr.v1.contract import ANONYMOUS_TENANT_VALUE, BATCH_ITEM_HEADER, BATCH_KEY_HEADER, BATCH_TENANT_HEADER
from extproc.auth.keys import KeyFormatError, VirtualKey

NOT_A_BATCH = object()  # act_for's answer to a request that is not a batch item of a trusted worker


@dataclass(frozen=True, slots=True)
class BatchCaller(VirtualKey):
    """The owner of a batch, as the caller of one of its items. ``owner``: the stored key it copies
    (None for a certificate's or a JWT's caller, which has no limits of its own), so the limits made
    for that key are reused rather than made again per item."""

    batch: str = ""
    worker: str = ""
    owner: VirtualKey | None = None

    def __post_init__(self) -> None:
        if not self.batch:
            raise KeyFormatError("a batch caller needs its batch")
        if not self.tenant or not self.tenant.strip():
            raise KeyFormatError("a batch caller needs a tenant")


@dataclass(frozen=True, slots=True)
class OwnerRefused:
    """Why an item cannot be sent for its owner: a 401 (the key is gone) in the client's format."""

    message: str
    details: str


def act_for(
    worker: VirtualKey,
    headers: Mapping[str, str],
    key_by_id: Callable[[str], VirtualKey | None],
    anonymous_allowed: bool,
) -> BatchCaller | OwnerRefused | object | None:
    """The caller a trusted ``worker``'s request stands for: a ``BatchCaller``, None (an anonymous
    batch the policy lets in), ``OwnerRefused``, or ``NOT_A_BATCH`` (no item header: the worker's
    own request). ``key_by_id``: the usable key of an id (None: unknown, revoked or expired)."""
    item = headers.get(BATCH_ITEM_HEADER)
    if not item:
        return NOT_A_BATCH
    batch = item.partition(":")[0]
    owner_id = headers.get(BATCH_KEY_HEADER, ANONYMOUS_TENANT_VALUE).strip() or ANONYMOUS_TENANT_VALUE
    tenant = headers.get(BATCH_TENANT_HEADER, "").strip()
    if owner_id == ANONYMOUS_TENANT_VALUE:
        if anonymous_allowed:
            return None
        return OwnerRefused("this batch has no owner key, and the gateway requires one", "ccr_auth_batch_anonymous")
    if ":" in owner_id:  # cert:... or jwt:...: a caller with no key of its own, its tenant's rules
        if not tenant or tenant == ANONYMOUS_TENANT_VALUE:
            return OwnerRefused("the batch worker named no tenant for this batch", "ccr_auth_batch_no_tenant")
        return BatchCaller(owner_id, tenant, "batch", batch=batch, worker=worker.key_id)
    owner = key_by_id(owner_id)
    if owner is None:
        message = "invalid API key: the key that created this batch has been revoked, has expired or is unknown"
        return OwnerRefused(message, "ccr_auth_batch_owner_gone")
    fields = {field.name: getattr(owner, field.name) for field in dataclasses.fields(VirtualKey)}
    return BatchCaller(**fields, batch=batch, worker=worker.key_id, owner=owner)
