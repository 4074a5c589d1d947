"""The audit hash chain: any single edit, deletion, insertion or reordering is found, and where."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.chain import ChainKey, Draft, Entry, Head, empty_head, seal, verify

KEY = ChainKey(b"k" * 32)


def chain(drafts: list[Draft], key: ChainKey = KEY) -> list[Entry]:
    entries: list[Entry] = []
    head = empty_head()
    for index, draft in enumerate(drafts):
        entry = seal(key, draft, head, f"2025-01-01T00:00:{index:02d}.000000Z")
        entries.append(entry)
        head = Head(entry.seq, entry.hash)
    return entries


def head_of(entries: list[Entry]) -> Head:
    return Head(entries[-1].seq, entries[-1].hash) if entries else empty_head()


def drafts(n: int) -> list[Draft]:
    return [Draft("alice", "key.create", f"k{i}", "keys.db", "host", "", {"rpm": i}) for i in range(n)]


def test_an_untouched_chain_verifies_with_its_head():
    entries = chain(drafts(5))
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert verify(KEY, entries, head_of(entries)) is None


def test_an_empty_log_verifies():
    assert verify(KEY, [], empty_head()) is None


def test_an_edited_field_is_found_at_its_entry():
    entries = chain(drafts(4))
    entries[2] = dataclasses.replace(entries[2], actor="mallory")
    broken = verify(KEY, entries, head_of(entries))
    assert broken is not None and broken.seq == 3 and "edited" in broken.reason


def test_an_edited_detail_is_found():
    entries = chain(drafts(3))
    entries[0] = dataclasses.replace(entries[0], details={"rpm": 999})
    assert verify(KEY, entries).seq == 1


def test_a_deleted_middle_entry_is_named():
    entries = chain(drafts(5))
    del entries[2]
    broken = verify(KEY, entries, head_of(entries))
    assert broken is not None and broken.seq == 3 and "missing" in broken.reason


def test_deleting_the_newest_entry_is_caught_by_the_head():
    entries = chain(drafts(5))
    head = head_of(entries)
    broken = verify(KEY, entries[:-1], head)
    assert broken is not None and broken.seq == 5 and "missing" in broken.reason


def test_a_renumbered_forgery_without_the_key_does_not_verify():
    entries = chain(drafts(4))
    forged = chain(drafts(1), ChainKey(b"x" * 32))[0]
    entries.insert(1, forged)
    entries = [dataclasses.replace(e, seq=i + 1) for i, e in enumerate(entries)]
    assert verify(KEY, entries) is not None


def test_swapping_two_entries_is_found():
    entries = chain(drafts(4))
    entries[1], entries[2] = entries[2], entries[1]
    broken = verify(KEY, entries)
    assert broken is not None and broken.seq in (2, 3)


def test_the_wrong_key_says_so():
    entries = chain(drafts(2))
    broken = verify(ChainKey(b"o" * 32), entries)
    assert broken is not None and broken.seq == 1 and "not this key" in broken.reason


def test_a_short_key_is_refused_and_repr_hides_the_secret():
    with pytest.raises(ValueError):
        ChainKey(b"short")
    assert "kkkk" not in repr(KEY)


def test_entries_round_trip_through_json():
    entry = chain([Draft("a", "b", details={"models": ("x", "y"), "n": 1.5})])[0]
    again = Entry.from_json(entry.to_json())
    assert again == entry and verify(KEY, [again]) is None


# -- hypothesis: random logs, one random mutation each ------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
draft_strategy = st.builds(
    Draft,
    actor=st.text(max_size=10),
    action=st.sampled_from(["policy.accepted", "policy.rejected", "key.create", "key.revoke", "budget.change"]),
    target=st.text(max_size=10),
    source=st.text(max_size=10),
    host=st.text(max_size=6),
    xds_version=st.text("0123456789", max_size=3),
    details=st.dictionaries(st.text(max_size=5), json_values, max_size=3),
)
_TEXT_FIELDS = ("at", "actor", "action", "target", "host", "source", "xds_version")


@settings(max_examples=150, deadline=None)
@given(st.lists(draft_strategy, min_size=1, max_size=8))
def test_any_untouched_random_log_verifies(logged):
    entries = chain(logged)
    assert verify(KEY, entries, head_of(entries)) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(draft_strategy, min_size=2, max_size=8), st.data())
def test_any_single_mutation_is_detected(logged, data):
    entries = chain(logged)
    head = head_of(entries)
    mutation = data.draw(st.sampled_from(["edit", "delete", "insert", "reorder", "details"]))
    index = data.draw(st.integers(0, len(entries) - 1))
    mutated = list(entries)
    if mutation == "edit":
        name = data.draw(st.sampled_from(_TEXT_FIELDS))
        value = data.draw(st.text(max_size=10).filter(lambda v: v != getattr(entries[index], name)))
        mutated[index] = dataclasses.replace(entries[index], **{name: value})
    elif mutation == "details":
        new = data.draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3))
        if new == dict(entries[index].details):
            new = {**new, "tampered": True}
        mutated[index] = dataclasses.replace(entries[index], details=new)
    elif mutation == "delete":
        del mutated[index]
    elif mutation == "insert":
        extra = seal(KEY, data.draw(draft_strategy), Head(entries[index].seq, entries[index].hash), "2030-01-01")
        mutated.insert(index + 1, extra)  # a well-formed entry made with the key, in the wrong place
    else:
        other = data.draw(st.integers(0, len(entries) - 1).filter(lambda i: i != index))
        mutated[index], mutated[other] = mutated[other], mutated[index]
    broken = verify(KEY, mutated, head)
    assert broken is not None, mutation
    assert 1 <= broken.seq <= len(entries) + 1


async def test_the_sqlite_store_appends_a_batch_in_one_chain(tmp_path):
    from audit.chain import ChainKey, Draft, verify
    from audit.stores import SqliteAuditStore

    key = ChainKey(bytes(32))
    store = SqliteAuditStore(tmp_path / "audit.db")
    try:
        drafts = [Draft("w", "mcp.tool_call", f"s/t{i}", "mcp-gateway", "host", "", {"i": i}) for i in range(4)]
        await store.append(key, drafts[0])
        batch = await store.append_many(key, drafts[1:])
        head, entries = await store.head(), await store.entries()
    finally:
        await store.close()
    assert [e.seq for e in batch] == [2, 3, 4] and head.seq == 4
    assert verify(key, entries, head) is None
