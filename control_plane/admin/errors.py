"""The Admin API's error as the usage, policy and status routes raise it, and its JSON body
(docs/admin-api.md, "Errors"). No I/O.

``AdminError`` is an ``http.ApiError`` (the type the server's error middleware renders), with the
argument order ``(status, code, message, details)``: raising either gives the same answer.
"""

from __future__ import annotations

from typing import Any

from control_plane.admin.http import ApiError


class AdminError(ApiError):
    """An answer other than success: the HTTP status, a stable code (``invalid_request``,
    ``not_found``, ``conflict``, ``unavailable``...), a message for people, and for validation
    problems ``details`` ([{"path", "message"}, ...] or, for a policy, with line and column)."""

    def __init__(self, status: int, code: str, message: str, details: list[Any] | None = None) -> None:
        super().__init__(status, message, code=code, details=details)
        self.status: int = status
        self.code: str = code
        self.message: str = message
        self.details: list[Any] | None = details


def error_body(status: int, code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    """``{"error": {"code", "message"[, "details"]}}``; ``status`` is the caller's to send."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}
