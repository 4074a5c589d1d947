"""Who a JWT says the caller is: the verified claims Envoy hands over, turned into the identity the
auth step admits (extproc.auth.decision). Pure: headers in, an identity or a refusal out.

Envoy verifies the tokens (its ``jwt_authn`` filter, configured from the policy's ``auth.jwt`` by
control_plane.resources.jwt) and sets ``x-ccr-jwt-*`` headers after removing any a client sent:

- ``x-ccr-jwt-from``: the headers tokens are read from; present whenever the policy has issuers;
- ``x-ccr-jwt-issuer``: the ``iss`` of a token that verified, set only then;
- ``x-ccr-jwt-tenant``, ``-key``, ``-subject``: the claims the policy names for them, when the token has them;
- ``x-ccr-jwt-error``: why a token failed ("Jwt is expired"), when Envoy says.

So a request carries a verified token if and only if it has the issuer header. A token that looks
like a JWT (three base64url parts) in one of the ``from`` headers without it failed (expired, wrong
audience, unknown key, bad signature, unknown issuer, malformed): a 401, whether or not keys are
required, as for a virtual key that is wrong. Anything else there (a virtual key ``sk-ccr-...``, a
provider's key) is not a token and is left to the virtual key check.

The identity: the token's tenant claim; with a ``key`` claim, the virtual key of that id (its models
and limits apply; it must be usable and belong to the same tenant, else 403); without one a
``JwtCaller``: the tenant, any model, no limits of its own, labelled ``jwt:<subject>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ccr.v1.contract import INTERNAL_HEADER_PREFIX
from extproc.auth.keys import KeyFormatError, VirtualKey

# The names control_plane.resources.jwt sets (a test holds the two equal).
JWT_HEADER_PREFIX = INTERNAL_HEADER_PREFIX + "jwt-"
FROM_HEADER = JWT_HEADER_PREFIX + "from"
ISSUER_HEADER = JWT_HEADER_PREFIX + "issuer"
TENANT_HEADER = JWT_HEADER_PREFIX + "tenant"
KEY_HEADER = JWT_HEADER_PREFIX + "key"
SUBJECT_HEADER = JWT_HEADER_PREFIX + "subject"
ERROR_HEADER = JWT_HEADER_PREFIX + "error"
JWT_KEY_ID_PREFIX = "jwt:"
_BEARER = "bearer "
# Compact JWS: header.payload.signature, each base64url without padding (an unsigned token's
# signature is empty). Dots never occur in a virtual key or a provider's key.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# What may name a tenant or a subject: printable, no control characters, not too long (they become
# usage labels and ledger columns).
_LABEL = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


@dataclass(frozen=True, slots=True)
class VerifiedClaims:
    """What Envoy verified, as the policy's claim rules named it ("" for a claim the token lacks)."""

    issuer: str
    tenant: str = ""
    key: str = ""
    subject: str = ""


@dataclass(frozen=True, slots=True)
class JwtRefusal:
    """A token that names nobody the gateway admits: 401 (it failed) or 403 (it verified, but its
    claims do not make a caller). ``details``: the reason for logs and metrics."""

    status: int
    message: str
    details: str


@dataclass(frozen=True, slots=True)
class JwtCaller(VirtualKey):
    """A caller a verified token names without naming a virtual key. A VirtualKey so the auth step's
    model and limit checks and the request labels take it as they take a key: no models list, no
    limits, and ``key_id`` ``jwt:<subject>`` (not a virtual key's 8 characters: it names the caller
    in usage records and is never looked up)."""

    subject: str = ""
    issuer: str = ""

    def __post_init__(self) -> None:
        if not self.key_id.startswith(JWT_KEY_ID_PREFIX):
            raise KeyFormatError(f"a JWT caller's id starts with {JWT_KEY_ID_PREFIX!r}, not {self.key_id!r}")
        if not self.tenant or not self.tenant.strip():
            raise KeyFormatError("a JWT caller needs a tenant")


def read_claims(headers: Mapping[str, str]) -> VerifiedClaims | JwtRefusal | None:
    """The verified claims, the 401 for a token that failed, or None: no token (JWT off, or nothing
    in the ``from`` headers that looks like one)."""
    issuer = headers.get(ISSUER_HEADER)
    if issuer:
        return VerifiedClaims(
            issuer, headers.get(TENANT_HEADER, ""), headers.get(KEY_HEADER, ""), headers.get(SUBJECT_HEADER, "")
        )
    sources = headers.get(FROM_HEADER)
    if not sources or not any(looks_like_jwt(name, headers.get(name)) for name in sources.split(",")):
        return None
    why = headers.get(ERROR_HEADER) or "Jwt verification fails"
    return JwtRefusal(401, f"invalid token: {why}", "ccr_auth_jwt_invalid")


def looks_like_jwt(header: str, value: str | None) -> bool:
    """Whether ``value`` of ``header`` is a token Envoy tried (``Bearer <token>`` in authorization)."""
    if not value:
        return False
    value = value.strip()
    if header == "authorization":
        if value[: len(_BEARER)].lower() != _BEARER:
            return False
        value = value[len(_BEARER) :].strip()
    return _COMPACT_JWS.fullmatch(value) is not None


def identity(claims: VerifiedClaims, key_by_id: Callable[[str], VirtualKey | None]) -> VirtualKey | JwtRefusal:
    """The caller ``claims`` name. ``key_by_id``: the usable virtual key of an id (None: unknown,
    revoked or expired)."""
    tenant = claims.tenant.strip()
    if not tenant:
        return JwtRefusal(
            403, "this token names no tenant (the policy's tenant claim is missing)", "ccr_auth_jwt_no_tenant"
        )
    if not _LABEL.fullmatch(tenant):
        return JwtRefusal(403, "this token's tenant claim is not a usable name", "ccr_auth_jwt_bad_tenant")
    if claims.key:
        key = key_by_id(claims.key)
        if key is None:
            return JwtRefusal(403, "this token's key claim names no usable API key", "ccr_auth_jwt_unknown_key")
        if key.tenant != tenant:
            return JwtRefusal(
                403, "this token's key claim names an API key of another tenant", "ccr_auth_jwt_key_tenant"
            )
        return key
    subject = claims.subject.strip()
    if subject and not _LABEL.fullmatch(subject):
        return JwtRefusal(403, "this token's subject claim is not a usable name", "ccr_auth_jwt_bad_subject")
    return JwtCaller(JWT_KEY_ID_PREFIX + subject, tenant, subject or "jwt", subject=subject, issuer=claims.issuer)
