"""The policy endpoints without I/O: a policy's text in, validation problems (line, column, path,
message), diffs, check-and-set decisions and the rejected-policy answer out.

Validation is control_plane.policy's own (``load_policy``, whose ``PolicyError.problems`` are
already structured ``Problem``s: the lines `ccr-gateway validate` prints are their ``str()``), so
the console shows exactly what the control plane would refuse, at the same line.

Versions: a file's is the sha256 of its bytes (hex); Consul's is the ModifyIndex of
``<prefix>policy`` as a decimal string ("0": no such key yet, e.g. a split-key layout, which a
push replaces with one key).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from typing import Any

from control_plane.admin.errors import AdminError
from control_plane.admin.views_status import rejection_pending
from control_plane.policy import GatewayPolicy, PolicyError, Problem, load_policy, unset_key_warnings

MAX_POLICY_BYTES = 512 * 1024  # one Consul KV value's limit; a file policy is held to it too


def file_version(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def problem_dict(problem: Problem) -> dict[str, Any]:
    return {"line": problem.line, "column": problem.column, "path": problem.path, "message": problem.message}


def summary(policy: GatewayPolicy) -> str:
    models = sum(len(provider.models) for provider in policy.providers)
    return f"valid ({len(policy.providers)} providers, {models} models)"


def validate(text: str, source: str) -> dict[str, Any]:
    """{"valid", "errors": [{line, column, path, message}], "warnings": [...], "summary"}.
    Line 0 means the problem has no position (the policy as a whole)."""
    try:
        policy = load_policy(text, source=source)
    except PolicyError as exc:
        count = len(exc.problems)
        return {
            "valid": False,
            "errors": [problem_dict(problem) for problem in exc.problems],
            "warnings": [problem_dict(problem) for problem in exc.warnings],
            "summary": f"invalid: {count} problem{'s' if count != 1 else ''}",
        }
    warnings = [*policy.warnings, *unset_key_warnings(policy)]
    return {
        "valid": True,
        "errors": [],
        "warnings": [
            problem_dict(problem) if isinstance(problem, Problem) else _plain(problem) for problem in warnings
        ],
        "summary": summary(policy),
    }


def _plain(warning: object) -> dict[str, Any]:
    return {"line": 0, "column": 0, "path": "", "message": str(warning)}


def yaml_of(body: Mapping[str, Any]) -> str:
    """The body's ``yaml``; AdminError 400 (or 413) for a missing or oversized one."""
    text = body.get("yaml")
    if not isinstance(text, str):
        raise AdminError(
            400, "invalid_request", "yaml: a string is required", [{"path": "yaml", "message": "required"}]
        )
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise AdminError(413, "too_large", f"a policy holds at most {MAX_POLICY_BYTES} bytes")
    return text


def expected_version_of(body: Mapping[str, Any]) -> str:
    version = body.get("expected_version")
    if not isinstance(version, str) or not version:
        raise AdminError(
            400,
            "invalid_request",
            "expected_version: the version the edit is based on is required (GET /policy gives it)",
            [{"path": "expected_version", "message": "required"}],
        )
    return version


def invalid_policy(result: Mapping[str, Any]) -> AdminError:
    """A PUT of an invalid policy: 400 whose details are its problems (nothing is written)."""
    return AdminError(400, "invalid_request", f"the policy is {result['summary']}; nothing written", result["errors"])


def check_version(current: str, expected: str) -> None:
    """Check-and-set: 409 when the policy changed since the caller read it."""
    if current != expected:
        raise AdminError(
            409,
            "conflict",
            f"the policy changed since version {expected} (now {current}): "
            "read it again (GET /policy), merge, and push with the new version",
        )


def unified_diff(current: str, proposed: str, current_name: str, proposed_name: str = "proposed") -> str:
    """`ccr-gateway policy diff`'s form: a missing final newline said as diff says it."""
    lines = difflib.unified_diff(
        current.splitlines(keepends=True),
        proposed.splitlines(keepends=True),
        fromfile=current_name,
        tofile=proposed_name,
    )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def rejected_body(status: Mapping[str, Any] | None, source: str) -> dict[str, Any]:
    """The control plane's status file (control_plane.server.PolicyStatusFile) -> {"rejected":
    null | {"at", "source", "error", "pending"}}. ``pending``: rejected after the policy in force
    was accepted (the edit on disk or in Consul is not live)."""
    rejected = (status or {}).get("last_rejected")
    if not isinstance(rejected, Mapping):
        return {"rejected": None}
    return {
        "rejected": {
            "at": rejected.get("at"),
            "source": rejected.get("source") or (status or {}).get("source") or source,
            "error": str(rejected.get("message", "")),
            "pending": rejection_pending(status or {}),
        }
    }
