"""The audit log's hash chain, sans-IO: entries in, a verdict out.

Each entry is hashed with HMAC-SHA256 over the previous entry's hash and the entry's canonical JSON
(every field but ``hash``, sorted keys, no spaces, UTF-8), so changing, inserting, reordering or
deleting one entry breaks every hash after it, and nobody without the key can forge a chain that
verifies. Sequence numbers start at 1 and have no gaps; the store also keeps the head (the last
seq and hash) so that deleting the newest entries is caught too.

Everything that decides what "a valid chain" is lives here; stores only keep rows.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

GENESIS = "0" * 64  # the prev_hash of entry 1
_HASHED_FIELDS = ("seq", "at", "actor", "action", "target", "host", "source", "xds_version", "details", "key_id")


@dataclass(frozen=True, slots=True)
class Draft:
    """What a writer knows about an event; the store gives it a place in the chain."""

    actor: str  # who: an OS user, a CLI's --actor, or "control-plane"
    action: str  # what: policy.accepted, policy.rejected, policy.pushed, key.create, budget.change, ...
    target: str = ""  # what it acted on: a key id, a policy source
    source: str = ""  # where from: a policy file path, consul:<prefix>policy, the key store
    host: str = ""  # where: the machine it ran on
    xds_version: str = ""  # the snapshot version a policy change produced ("" for anything else)
    details: Mapping[str, Any] = field(default_factory=dict)  # JSON values only; never a secret


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    at: str  # UTC, ISO 8601 with microseconds: 2025-01-02T03:04:05.123456Z
    actor: str
    action: str
    target: str
    host: str
    source: str
    xds_version: str
    details: Mapping[str, Any]
    key_id: str  # which HMAC key hashed it (a fingerprint, not the key)
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"details": dict(self.details)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Head:
    seq: int  # 0: empty log
    hash: str


@dataclass(frozen=True, slots=True)
class Broken:
    """The first place the chain does not hold."""

    seq: int
    reason: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.reason}"


class ChainKey:
    """The HMAC key. Its ``key_id`` (a fingerprint) goes in every entry, so a verify with the
    wrong key says so instead of blaming entry 1."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("an audit key must have at least 16 bytes")
        self._secret = secret
        self.key_id = hmac.new(secret, b"ccr-gateway audit key id", hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:  # never the secret
        return f"ChainKey(key_id={self.key_id!r})"

    def mac(self, prev_hash: str, body: bytes) -> str:
        return hmac.new(self._secret, prev_hash.encode() + body, hashlib.sha256).hexdigest()


def canonical(entry: Entry) -> bytes:
    """The bytes an entry's hash covers: every field but prev_hash (chained separately) and hash."""
    data = {name: getattr(entry, name) for name in _HASHED_FIELDS}
    data["details"] = dict(entry.details)
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def seal(key: ChainKey, draft: Draft, after: Head, at: str) -> Entry:
    """The entry that follows ``after``."""
    unsealed = Entry(
        seq=after.seq + 1,
        at=at,
        actor=draft.actor,
        action=draft.action,
        target=draft.target,
        host=draft.host,
        source=draft.source,
        xds_version=draft.xds_version,
        details=_plain(draft.details),
        key_id=key.key_id,
        prev_hash=after.hash,
        hash="",
    )
    return replace(unsealed, hash=key.mac(after.hash, canonical(unsealed)))


def empty_head() -> Head:
    return Head(0, GENESIS)


def verify(key: ChainKey, entries: Iterable[Entry], head: Head | None = None) -> Broken | None:
    """None when ``entries`` (in stored order) are an unbroken chain from seq 1 ending at ``head``
    (when given); else the first place it breaks."""
    previous = empty_head()
    for entry in entries:
        expected = previous.seq + 1
        if entry.seq > expected:
            missing = str(expected) if entry.seq == expected + 1 else f"{expected}..{entry.seq - 1}"
            return Broken(expected, f"entry {missing} is missing (deleted)")
        if entry.seq < expected:
            return Broken(
                entry.seq, f"entry {entry.seq} appears again after entry {previous.seq} (inserted or reordered)"
            )
        if entry.key_id != key.key_id:
            return Broken(entry.seq, f"hashed with key {entry.key_id}, not this key ({key.key_id})")
        if entry.prev_hash != previous.hash:
            return Broken(entry.seq, f"entry {entry.seq} does not follow entry {previous.seq} (inserted or replaced)")
        if not hmac.compare_digest(entry.hash, key.mac(entry.prev_hash, canonical(entry))):
            return Broken(entry.seq, f"entry {entry.seq} was edited (its hash does not match its contents)")
        previous = Head(entry.seq, entry.hash)
    if head is not None:
        if head.seq > previous.seq:
            missing = str(head.seq) if head.seq == previous.seq + 1 else f"{previous.seq + 1}..{head.seq}"
            return Broken(previous.seq + 1, f"entry {missing} is missing (deleted; the head is at {head.seq})")
        if head != previous:
            return Broken(previous.seq, f"the recorded head (seq {head.seq}) does not match the last entry")
    return None


def _plain(details: Mapping[str, Any]) -> dict[str, Any]:
    """Details as JSON would give them back (tuples -> lists), so a re-read entry hashes the same."""
    return orjson.loads(orjson.dumps(dict(details), option=orjson.OPT_NON_STR_KEYS))
