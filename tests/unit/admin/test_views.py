from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from audit.chain import Entry
from ccr_gateway.admin_keys import key_of
from control_plane.admin import key_admin, views_audit, views_keys
from control_plane.admin.principals import format_admin_key, new_admin_key_record, parse_admin_key
from control_plane.admin.roles import Role
from control_plane.admin.views_common import Invalid, decode_cursor, encode_cursor, iso, page
from extproc.auth import keys as extproc_keys
from extproc.auth.keys import new_key


def test_a_key_renders_without_secret_and_with_its_state() -> None:
    now = time.time()
    _, record = new_key("acme", "ci", now, rpm=10, models=("m1",), expires_at=now + 5)
    shown = views_keys.render(key_of(record), now)
    assert set(shown) == set(views_keys.KEY_SCHEMA["required"])
    assert shown["state"] == "active" and shown["models"] == ["m1"] and shown["rpm"] == 10
    assert views_keys.render(key_of(record), now + 10)["state"] == "expired"
    assert "secret" not in repr(shown) and "salt" not in repr(shown)


def test_create_bodies_become_limits_and_null_means_unset() -> None:
    tenant, name, limits = views_keys.create_request(
        {"tenant": " acme ", "name": "ci", "rpm": 5, "tpm": None, "models": ["a"], "expires_in_seconds": 10}, 100.0
    )
    assert (tenant, name) == ("acme", "ci")
    assert limits == {"rpm": 5, "models": ("a",), "expires_at": 110.0}


def test_a_budget_period_without_a_budget_is_invalid() -> None:
    with pytest.raises(Invalid) as caught:
        views_keys.create_request({"tenant": "a", "name": "b", "budget_period": "day"}, 0)
    assert caught.value.details[0]["path"] == "budget_period"


def test_patch_null_clears() -> None:
    changes = views_keys.patch_request({"rpm": None, "models": None, "expires_in_seconds": None, "name": "x "}, 0)
    assert changes == {"rpm": None, "models": (), "expires_at": None, "name": "x"}


def test_cursors_round_trip_and_foreign_ones_are_invalid() -> None:
    cursor = encode_cursor(["acme", 1.5, "abcdefgh"])
    assert decode_cursor(cursor, (str, float, str)) == ["acme", 1.5, "abcdefgh"]
    assert decode_cursor(None, (str,)) is None
    for bad in ("!!!", "e30", encode_cursor([1, 2, 3]), encode_cursor(["a"])):
        with pytest.raises(Invalid):
            decode_cursor(bad, (str, float, str))


def test_pages_follow_each_other_without_gaps_or_repeats() -> None:
    rows = list(range(7))
    seen, after = [], None
    while True:
        chunk, after = page(rows, lambda r: [r], after, 3)
        seen += chunk
        if after is None:
            break
        after = decode_cursor(encode_cursor(after), (int,))
    assert seen == rows


def test_listing_pages_keys_by_tenant_then_age() -> None:
    records = [key_of(new_key(t, f"k{i}", float(i))[1]) for i, t in enumerate(["b", "a", "b", "a"])]
    first = views_keys.listing(records, None, 3, 10.0)
    assert [k["tenant"] for k in first["data"]] == ["a", "a", "b"]
    second = views_keys.listing(records, first["next_cursor"], 3, 10.0)
    assert len(second["data"]) == 1 and second["next_cursor"] is None


def test_tenants_count_keys_and_mark_the_policy_ones() -> None:
    now = time.time()
    records = [key_of(new_key("acme", "a", now)[1]), key_of(new_key("acme", "b", now, expires_at=now - 1)[1])]
    body = views_keys.tenants(records, {"globex"}, now)
    assert body["data"] == [
        {"name": "acme", "keys": 2, "active_keys": 1, "in_policy": False},
        {"name": "globex", "keys": 0, "active_keys": 0, "in_policy": True},
    ]


def test_the_control_planes_budget_periods_are_the_key_formats() -> None:
    assert key_admin.BUDGET_PERIODS == extproc_keys.BUDGET_PERIODS
    assert views_keys.LIMIT_PROPERTIES["budget_period"]["enum"] == [*extproc_keys.BUDGET_PERIODS, None]


def test_a_key_is_usable_when_the_gateways_say_it_is() -> None:
    now = 1000.0
    for limits, revoke in (({}, False), ({"expires_at": now}, False), ({"expires_at": now + 1}, False), ({}, True)):
        _, record = new_key("acme", "k", 0.0, **limits)
        if revoke:
            record = replace(record, key=replace(record.key, revoked=True))
        for moment in (now - 1, now, now + 1):
            assert key_of(record).unusable_at(moment) == record.key.usable_at(moment)


def test_a_key_carries_every_public_field_but_no_secret() -> None:
    _, record = new_key("acme", "ci", 5.0, rpm=1, rph=2, rpd=3, tpm=4, tpd=5, max_parallel=6, budget_usd=7.0)
    key = key_of(record)
    public = extproc_keys.public_fields(record)
    assert key.id == record.key_id and key.created_at == 5.0
    for name in ("tenant", "name", "rpm", "rph", "rpd", "tpm", "tpd", "max_parallel", "budget_usd", "expires_at"):
        assert getattr(key, name) == public[name], name
    assert "secret" not in repr(key) and "hash" not in repr(key)


def _entry(seq: int, action: str, actor: str = "admin:x") -> Entry:
    return Entry(seq, f"2025-01-01T00:00:0{seq}.000000Z", actor, action, "t", "h", "s", "", {}, "k", "p", "h")


def test_audit_listing_is_newest_first_filtered_and_paged() -> None:
    entries = [_entry(i, "key.create" if i % 2 else "admin.sign_in") for i in range(1, 8)]
    first = views_audit.listing(entries, "key.*", None, None, 2)
    assert [e["seq"] for e in first["data"]] == [7, 5]
    second = views_audit.listing(entries, "key.*", None, first["next_cursor"], 2)
    assert [e["seq"] for e in second["data"]] == [3, 1] and second["next_cursor"] is None
    assert views_audit.listing(entries, None, "nobody", None, 10)["data"] == []


def test_since_takes_iso_times_and_durations() -> None:
    now = datetime(2025, 1, 2, tzinfo=UTC)
    assert views_audit.since_bound("24h", now) == "2025-01-01T00:00:00.000000Z"
    assert views_audit.since_bound("2025-01-01T12:00:00+01:00", now) == "2025-01-01T11:00:00.000000Z"
    for bad in ("yesterday", "24x"):
        with pytest.raises(Invalid):
            views_audit.since_bound(bad, now)


def test_iso_is_utc_with_z() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z" and iso(None) is None


def test_admin_keys_parse_and_hash_only() -> None:
    presented, record = new_admin_key_record("ops", Role.OPERATOR, None, 0)
    key_id, secret = parse_admin_key(presented)
    wrong = secret[:-1] + ("B" if secret.endswith("A") else "A")  # one character off, whatever the last
    assert key_id == record.key_id and record.matches(secret) and not record.matches(wrong)
    assert secret.encode() not in record.salt + record.digest
    assert parse_admin_key("sk-ccr-abcdefgh_" + "a" * 43) is None  # a virtual key is not an admin key
    assert parse_admin_key(format_admin_key("ABCDEFGH", "a" * 43)) is None
    with pytest.raises(ValueError):
        new_admin_key_record("t", Role.TENANT_ADMIN, None, 0)
