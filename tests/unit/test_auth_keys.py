"""extproc.auth.keys: the key format, parsing what clients send, hashes, rotation, usability."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.auth.keys import (
    KEY_PREFIX,
    KeyFormatError,
    SecretHash,
    VirtualKey,
    new_key,
    parse_presented,
    public_fields,
    rotate,
    with_changes,
)

NOW = 1_800_000_000.0


def make(**limits: object) -> tuple[str, object]:
    return new_key("acme", "ci-bot", NOW, **limits)


def test_a_new_key_has_the_prefix_an_8_character_id_and_a_43_character_secret() -> None:
    presented, record = make()
    assert presented.startswith(KEY_PREFIX)
    key_id, secret = presented[len(KEY_PREFIX) :].split("_", 1)
    assert key_id == record.key_id and len(key_id) == 8 and key_id.islower()
    assert len(secret) == 43
    assert secret not in repr(record) and record.secret.salt.hex() not in repr(record)


def test_new_keys_differ_in_id_salt_and_secret() -> None:
    made = [make() for _ in range(200)]
    assert len({presented for presented, _ in made}) == 200
    assert len({record.key_id for _, record in made}) == 200
    assert len({record.secret.salt for _, record in made}) == 200


@pytest.mark.parametrize("form", ["{k}", "Bearer {k}", "bearer {k}", "BEARER   {k}", "  {k}  ", "Bearer {k}\t"])
def test_both_header_forms_parse_to_the_id_and_secret(form: str) -> None:
    presented, record = make()
    parsed = parse_presented(form.format(k=presented))
    assert parsed is not None
    assert parsed[0] == record.key_id
    assert record.verify(parsed[1], NOW)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Bearer ",
        "sk-ant-api03-abcdef",
        "sk-ccr-",
        "sk-ccr-abcdefgh",
        "sk-ccr-abcdefgh_short",
        "sk-ccr-ABCDEFGH_" + "a" * 43,  # upper-case id
        "sk-ccr-abcdefg1_" + "a" * 43,  # 1 is not base32
        "sk-ccr-abcdefgh_" + "a" * 42 + "=",
        "sk-ccr-abcdefgh-" + "a" * 43,
        "Basic sk-ccr-abcdefgh_" + "a" * 43,
        "sk-ccr-abcdefgh_" + "a" * 44,
    ],
)
def test_anything_else_does_not_parse(text: str) -> None:
    assert parse_presented(text) is None


@given(st.text())
def test_parse_never_raises_on_arbitrary_text(text: str) -> None:
    parse_presented(text)
    parse_presented("Bearer " + text)
    parse_presented(KEY_PREFIX + text)


@given(st.binary(max_size=80))
def test_parse_never_raises_on_arbitrary_bytes_decoded_leniently(data: bytes) -> None:
    parse_presented(data.decode("latin-1"))


def test_only_the_right_secret_verifies() -> None:
    presented, record = make()
    _, secret = parse_presented(presented)
    assert record.verify(secret, NOW)
    assert not record.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B"), NOW)
    _, other = make()
    assert not other.verify(secret, NOW)


def test_the_hash_is_salted() -> None:
    assert SecretHash.of("same").digest != SecretHash.of("same").digest
    assert SecretHash.of("same", b"salt") == SecretHash.of("same", b"salt")


def test_a_rotated_key_accepts_the_old_secret_until_the_grace_deadline() -> None:
    old_presented, record = make()
    new_presented, rotated = rotate(record, 3600, NOW)
    old_secret, new_secret = parse_presented(old_presented)[1], parse_presented(new_presented)[1]
    assert rotated.key_id == record.key_id and new_presented != old_presented
    assert rotated.previous_valid_until == NOW + 3600
    assert rotated.verify(new_secret, NOW) and rotated.verify(new_secret, NOW + 10**6)
    assert rotated.verify(old_secret, NOW + 3599)
    assert not rotated.verify(old_secret, NOW + 3600)
    assert not record.verify(new_secret, NOW)


def test_rotating_without_grace_stops_the_old_secret_at_once() -> None:
    old_presented, record = make()
    _, rotated = rotate(record, 0, NOW)
    assert rotated.previous_secret is None
    assert not rotated.verify(parse_presented(old_presented)[1], NOW)


def test_a_second_rotation_keeps_only_the_secret_it_replaced() -> None:
    first, record = make()
    second, once = rotate(record, 3600, NOW)
    third, twice = rotate(once, 3600, NOW + 1)
    assert not twice.verify(parse_presented(first)[1], NOW + 2)
    assert twice.verify(parse_presented(second)[1], NOW + 2)
    assert twice.verify(parse_presented(third)[1], NOW + 2)


def test_negative_grace_is_refused() -> None:
    _, record = make()
    with pytest.raises(KeyFormatError):
        rotate(record, -1, NOW)


def test_usable_at_says_why_not() -> None:
    _, record = make(expires_at=NOW + 60)
    key = record.key
    assert key.usable_at(NOW) is None
    assert key.usable_at(NOW + 60) == "expired"
    assert dataclasses.replace(key, revoked=True).usable_at(NOW) == "revoked"
    assert dataclasses.replace(key, expires_at=None).usable_at(NOW + 10**9) is None


def test_models_empty_means_any() -> None:
    assert VirtualKey("abcdefgh", "t", "n").allows_model("anything")
    key = VirtualKey("abcdefgh", "t", "n", models=("a", "b"))
    assert key.allows_model("a") and not key.allows_model("c")


@pytest.mark.parametrize(
    "fields",
    [
        {"key_id": "short"},
        {"tenant": ""},
        {"models": ["a"]},
        {"models": ("",)},
        {"rpm": 0},
        {"tpm": -1},
        {"max_parallel": True},
        {"rpm": 1.5},
        {"budget_usd": -1.0},
        {"budget_usd": float("nan")},
        {"budget_usd": 5.0, "budget_period": "year"},
        {"budget_period": "day"},
    ],
)
def test_invalid_keys_are_refused(fields: dict[str, object]) -> None:
    values = {"key_id": "abcdefgh", "tenant": "t", "name": "n", **fields}
    with pytest.raises(KeyFormatError):
        VirtualKey(**values)  # type: ignore[arg-type]


def test_with_changes_edits_limits_and_refuses_other_fields() -> None:
    key = VirtualKey("abcdefgh", "t", "n")
    assert with_changes(key, {"rpm": 5, "models": ("m",)}) == VirtualKey("abcdefgh", "t", "n", models=("m",), rpm=5)
    for field in ("key_id", "tenant", "revoked", "nonsense"):
        with pytest.raises(KeyFormatError, match=field):
            with_changes(key, {field: "x"})
    with pytest.raises(KeyFormatError):
        with_changes(key, {"rpm": -3})


def test_public_fields_hold_no_secret_salt_or_hash() -> None:
    presented, record = make()
    _, rotated = rotate(record, 60, NOW)
    shown = repr(public_fields(rotated))
    assert parse_presented(presented)[1] not in shown
    for secret in (rotated.secret, rotated.previous_secret):
        assert secret.salt.hex() not in shown and str(secret.salt) not in shown
        assert secret.digest.hex() not in shown and str(secret.digest) not in shown
