"""The policy room: the model (specs), parsing YAML into it with line-precise errors, the routing
and resilience sections, and the YAML position plumbing. Importers use this package's names."""

from __future__ import annotations

from control_plane.policy.keys import unset_key_warnings
from control_plane.policy.model import GatewayPolicy, ModelSpec, ProviderSpec
from control_plane.policy.parse import load_policy, load_policy_file
from control_plane.policy.storage import PostgresSpec, RabbitMQSpec, SpoolSpec, StorageSpec
from control_plane.policy.yaml_check import PolicyError, Problem

__all__ = [
    "GatewayPolicy",
    "ModelSpec",
    "PolicyError",
    "PostgresSpec",
    "Problem",
    "ProviderSpec",
    "RabbitMQSpec",
    "SpoolSpec",
    "StorageSpec",
    "load_policy",
    "load_policy_file",
    "unset_key_warnings",
]
