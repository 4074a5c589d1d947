"""Virtual keys: their format, how their secrets are stored and checked, and what a worker needs to
know about one per request. Pure: no I/O; randomness and time come in as parameters or from
``secrets``.

A presented key is ``sk-ccr-<key id>_<secret>``:

- the key id: 8 lowercase base32 characters (40 random bits). Not secret: it is what lists, logs
  and usage records show, and what the store is indexed by, so a lookup never scans.
- the secret: 32 random bytes, urlsafe base64 without padding (43 characters). Only a salted
  hash of it is stored; the presented key is shown once, when it is created or rotated.

The id alphabet (a-z, 2-7) has no ``_``, so the first ``_`` after the prefix splits the two even
though the secret's alphabet has one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

KEY_PREFIX = "sk-ccr-"
KEY_ID_LENGTH = 8
SECRET_BYTES = 32
SALT_BYTES = 16
BUDGET_PERIODS = ("day", "week", "month")

_KEY_ID = re.compile(r"[a-z2-7]{8}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_BEARER = "bearer "


class KeyFormatError(ValueError):
    """A key or record that breaks the rules above (our misuse, not a client's bad header)."""


def new_key_id() -> str:
    # 5 bytes are exactly 8 base32 characters, no padding.
    return base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()


def new_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=").decode("ascii")


def format_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}{key_id}_{secret}"


def parse_presented(text: str) -> tuple[str, str] | None:
    """(key id, secret) from what a client sends: the value of ``x-api-key`` (the bare key) or of
    ``authorization`` (``Bearer <key>``, scheme in any case); None for anything else. Never raises:
    header values are attacker-controlled."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if text[:7].lower() == _BEARER:
        text = text[7:].lstrip()
    if len(text) != len(KEY_PREFIX) + KEY_ID_LENGTH + 1 + 43 or not text.startswith(KEY_PREFIX):
        return None
    key_id, separator, secret = text[len(KEY_PREFIX) :].partition("_")
    if separator != "_" or not _KEY_ID.fullmatch(key_id) or not _SECRET.fullmatch(secret):
        return None
    return key_id, secret


@dataclass(frozen=True, slots=True)
class SecretHash:
    """sha256(salt + secret), with a random salt per key. A plain hash and not a slow KDF (bcrypt,
    scrypt, argon2) on purpose: the secrets are 256 random bits, not passwords, so there is no
    dictionary to slow down, and the hash is computed on the request path."""

    salt: bytes
    digest: bytes

    @classmethod
    def of(cls, secret: str, salt: bytes | None = None) -> SecretHash:
        salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
        return cls(salt, _digest(salt, secret))

    def matches(self, secret: str) -> bool:
        # compare_digest: the time taken does not tell how many leading bytes were right.
        return hmac.compare_digest(_digest(self.salt, secret), self.digest)


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("ascii", "replace")).digest()


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """What a worker needs to know about a key for each request: who it belongs to and its limits.
    No secret, no hash. None for a limit means unlimited; ``models`` empty means any model;
    ``budget_period`` None with a budget means the budget never resets."""

    key_id: str
    tenant: str
    name: str
    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_usd: float | None = None
    budget_period: str | None = None
    expires_at: float | None = None  # epoch seconds
    revoked: bool = False
    rph: int | None = None  # requests per hour / day, tokens per day (after the rest: older stores lack them)
    rpd: int | None = None
    tpd: int | None = None

    def __post_init__(self) -> None:
        if not _KEY_ID.fullmatch(self.key_id):
            raise KeyFormatError(f"key id {self.key_id!r} is not {KEY_ID_LENGTH} characters of a-z, 2-7")
        if not self.tenant or not self.tenant.strip():
            raise KeyFormatError("a key needs a tenant")
        if not isinstance(self.models, tuple) or not all(isinstance(m, str) and m for m in self.models):
            raise KeyFormatError(f"models must be a tuple of model names, not {self.models!r}")
        for name in ("rpm", "tpm", "max_parallel", "rph", "rpd", "tpd"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise KeyFormatError(f"{name} must be a positive whole number or unset, not {value!r}")
        if self.budget_usd is not None and not self.budget_usd >= 0:  # `not >=` also rejects NaN
            raise KeyFormatError(f"budget_usd must be 0 or more, not {self.budget_usd!r}")
        if self.budget_period is not None:
            if self.budget_period not in BUDGET_PERIODS:
                raise KeyFormatError(
                    f"budget_period must be one of {', '.join(BUDGET_PERIODS)}, not {self.budget_period!r}"
                )
            if self.budget_usd is None:
                raise KeyFormatError("budget_period needs budget_usd")

    def usable_at(self, now: float) -> str | None:
        """Why the key cannot be used at ``now`` ("revoked", "expired"), or None if it can."""
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return None

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models


# What `update limits` may change; the id, tenant and revocation have operations of their own.
EDITABLE_FIELDS = frozenset(
    ("name", "models", "rpm", "rph", "rpd", "tpm", "tpd", "max_parallel", "budget_usd", "budget_period", "expires_at")
)


def with_changes(key: VirtualKey, changes: Mapping[str, object]) -> VirtualKey:
    """``key`` with ``changes`` applied (validated as a new key is); KeyFormatError names a field
    that cannot be edited."""
    unknown = sorted(set(changes) - EDITABLE_FIELDS)
    if unknown:
        raise KeyFormatError(f"cannot change {', '.join(unknown)} (editable: {', '.join(sorted(EDITABLE_FIELDS))})")
    return replace(key, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as stored: the VirtualKey plus its secret's hash and, after a rotation, the previous
    secret's hash with the deadline until which it still works. ``version`` is the store's change
    counter (0 before the store has it)."""

    key: VirtualKey
    secret: SecretHash = field(repr=False)
    created_at: float
    changed_at: float
    previous_secret: SecretHash | None = field(default=None, repr=False)
    previous_valid_until: float | None = None
    version: int = 0

    @property
    def key_id(self) -> str:
        return self.key.key_id

    def verify(self, secret: str, now: float) -> bool:
        """Whether ``secret`` is this key's: the current one, or the previous one within its grace."""
        if self.secret.matches(secret):
            return True
        return self.previous_secret_valid_at(now) and self.previous_secret.matches(secret)  # type: ignore[union-attr]

    def previous_secret_valid_at(self, now: float) -> bool:
        return (
            self.previous_secret is not None
            and self.previous_valid_until is not None
            and now < self.previous_valid_until
        )


def new_key(
    tenant: str,
    name: str,
    now: float,
    **limits: object,
) -> tuple[str, KeyRecord]:
    """(the presented key, to show once; the record to store). ``limits``: the VirtualKey fields
    from ``models`` on."""
    key = VirtualKey(new_key_id(), tenant, name, **limits)  # type: ignore[arg-type]
    secret = new_secret()
    return format_key(key.key_id, secret), KeyRecord(key, SecretHash.of(secret), created_at=now, changed_at=now)


def rotate(record: KeyRecord, grace_seconds: float, now: float) -> tuple[str, KeyRecord]:
    """A new secret for the key; the current one keeps working for ``grace_seconds`` (0: stops at
    once), so clients can be moved over without an outage. A secret still in its grace from an
    earlier rotation stops now: only one previous secret is kept."""
    if grace_seconds < 0:
        raise KeyFormatError(f"grace must be 0 or more seconds, not {grace_seconds}")
    secret = new_secret()
    rotated = replace(
        record,
        secret=SecretHash.of(secret),
        previous_secret=record.secret if grace_seconds > 0 else None,
        previous_valid_until=now + grace_seconds if grace_seconds > 0 else None,
        changed_at=now,
    )
    return format_key(record.key_id, secret), rotated


def public_fields(record: KeyRecord) -> dict[str, object]:
    """The record as a dict for lists and JSON: every VirtualKey field and the dates, never a
    secret, salt or hash."""
    out: dict[str, object] = {f.name: getattr(record.key, f.name) for f in fields(VirtualKey)}
    out["models"] = list(record.key.models)
    out.update(
        created_at=record.created_at,
        changed_at=record.changed_at,
        previous_secret_valid_until=record.previous_valid_until,
        version=record.version,
    )
    return out
