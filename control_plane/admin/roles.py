"""Who may do what in the Admin API: four roles, one table. No I/O.

``admin`` does everything; ``operator`` reads everything, pushes policy, revokes and rotates keys;
``viewer`` reads; ``tenant-admin`` manages its own tenant's keys and reads its own usage, nothing
else. A tenant-admin asking for another tenant's object gets a 404 from the routes (``sees``), so
that it cannot learn which ids exist.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    TENANT_ADMIN = "tenant-admin"


class Action(enum.Enum):
    KEYS_READ = "keys.read"
    KEYS_CREATE = "keys.create"
    KEYS_UPDATE = "keys.update"
    KEYS_REVOKE = "keys.revoke"
    KEYS_ROTATE = "keys.rotate"
    USAGE_READ = "usage.read"
    POLICY_READ = "policy.read"
    POLICY_PUSH = "policy.push"
    STATUS_READ = "status.read"
    AUDIT_READ = "audit.read"
    ADMIN_KEYS_MANAGE = "admin_keys.manage"


_READS = frozenset({Action.KEYS_READ, Action.USAGE_READ, Action.POLICY_READ, Action.STATUS_READ, Action.AUDIT_READ})
ALLOWED: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.OPERATOR: _READS | {Action.POLICY_PUSH, Action.KEYS_REVOKE, Action.KEYS_ROTATE},
    Role.VIEWER: _READS,
    Role.TENANT_ADMIN: frozenset(
        {
            Action.KEYS_READ,
            Action.KEYS_CREATE,
            Action.KEYS_UPDATE,
            Action.KEYS_REVOKE,
            Action.KEYS_ROTATE,
            Action.USAGE_READ,
        }
    ),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: an admin key's or a JWT's holder. ``tenant``: a tenant-admin's only tenant."""

    id: str  # "admin:<key id>" | "jwt:<subject>"
    name: str
    role: Role
    tenant: str | None = None

    def __post_init__(self) -> None:
        if self.role is Role.TENANT_ADMIN and not self.tenant:
            raise ValueError("a tenant-admin needs its tenant")

    def as_dict(self) -> dict[str, str | None]:
        return {"id": self.id, "name": self.name, "role": self.role.value, "tenant": self.tenant}


def may(principal: Principal, action: Action) -> bool:
    """Whether the principal's role allows the action at all (tenant scoping is ``sees``)."""
    return action in ALLOWED[principal.role]


def sees(principal: Principal, tenant: str | None) -> bool:
    """Whether an object of ``tenant`` is visible to the principal (None: an object of no tenant,
    such as the policy, visible to the roles that may read it at all)."""
    return principal.role is not Role.TENANT_ADMIN or (tenant is not None and tenant == principal.tenant)


def tenant_scope(principal: Principal, asked: str | None) -> str | None:
    """The tenant a listing is limited to: a tenant-admin's own whatever it asked; else what it
    asked (None: all tenants)."""
    return principal.tenant if principal.role is Role.TENANT_ADMIN else asked
