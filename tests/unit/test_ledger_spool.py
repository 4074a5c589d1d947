"""The publisher's spool: order, durability across reopen, torn tails, the size bound."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.spool import HEADER, Spool, SpoolEntry, SpoolError, encode_entry, scan_segment


def payloads(count: int, size: int = 100) -> list[bytes]:
    return [(f"{index:06d}".encode() * (size // 6 + 1))[:size] for index in range(count)]


def drain(spool: Spool) -> list[bytes]:
    out = []
    while len(spool):
        entries = spool.peek(7)
        out += [entry.payload for entry in entries]
        spool.pop(len(entries))
    return out


def segments(directory: Path) -> list[Path]:
    """The segment files holding something (the one a spool opened for appending may be empty)."""
    return sorted(path for path in directory.glob("*.seg") if path.stat().st_size)


def test_batches_come_back_in_the_order_they_went_in(tmp_path):
    spool = Spool(tmp_path, segment_bytes=1000)
    data = payloads(50)
    for payload in data:
        assert spool.append(payload, records=3)
    assert len(spool) == 50 and spool.records == 150
    assert drain(spool) == data
    assert spool.bytes == 0 and spool.records == 0


def test_append_many_stores_in_order_with_record_counts(tmp_path):
    spool = Spool(tmp_path, segment_bytes=500)
    entries = [SpoolEntry(payload, index) for index, payload in enumerate(payloads(20))]
    assert spool.append_many(entries) == 20
    assert spool.peek(20) == entries


def test_what_was_appended_survives_a_reopen(tmp_path):
    spool = Spool(tmp_path, segment_bytes=1000)
    data = payloads(30)
    for payload in data:
        spool.append(payload, 1)
    spool.pop(5)
    spool.close()  # or a crash: every append was fsync'd
    reopened = Spool(tmp_path, segment_bytes=1000)
    remaining = drain(reopened)
    # popped entries whose segment was still on disk come back (published twice: harmless)
    assert remaining[-25:] == data[5:]
    assert remaining == data[len(data) - len(remaining) :]


def test_popped_segments_are_deleted(tmp_path):
    spool = Spool(tmp_path, segment_bytes=300)
    for payload in payloads(20):
        spool.append(payload, 1)
    assert len(segments(tmp_path)) > 3
    spool.pop(20)
    assert segments(tmp_path) == []
    spool.close()
    assert len(Spool(tmp_path)) == 0


@pytest.mark.parametrize("cut", [1, HEADER.size - 1, HEADER.size, HEADER.size + 50])
def test_a_torn_last_write_is_truncated_on_open(tmp_path, cut):
    spool = Spool(tmp_path)
    data = payloads(5)
    for payload in data:
        spool.append(payload, 1)
    spool.close()
    last = segments(tmp_path)[-1]
    size = last.stat().st_size
    with open(last, "r+b") as handle:  # the crash came in the middle of the last append
        handle.truncate(size - (HEADER.size + len(data[-1])) + cut)
    reopened = Spool(tmp_path)
    assert last.stat().st_size == 4 * (HEADER.size + len(data[0]))  # cut back to the whole entries
    assert drain(reopened) == data[:4]


def test_a_corrupt_entry_and_everything_after_it_are_dropped(tmp_path):
    spool = Spool(tmp_path)
    data = payloads(5)
    for payload in data:
        spool.append(payload, 1)
    spool.close()
    last = segments(tmp_path)[-1]
    raw = bytearray(last.read_bytes())
    raw[2 * (HEADER.size + len(data[0])) + HEADER.size + 3] ^= 0xFF  # a flipped bit in the third payload
    last.write_bytes(bytes(raw))
    assert drain(Spool(tmp_path)) == data[:2]


def test_a_full_spool_refuses_instead_of_growing(tmp_path):
    entry_size = HEADER.size + 100
    spool = Spool(tmp_path, max_bytes=entry_size * 3, segment_bytes=1000)
    data = payloads(5, size=100)
    assert [spool.append(payload, 1) for payload in data] == [True, True, True, False, False]
    assert spool.append_many([SpoolEntry(payload, 1) for payload in data]) == 0
    assert spool.bytes == entry_size * 3
    spool.pop(1)
    assert spool.append_many([SpoolEntry(payload, 1) for payload in data]) == 1  # a prefix fits


def test_a_second_process_cannot_share_the_directory(tmp_path):
    spool = Spool(tmp_path)
    # flock is per open file description: a second open in this process conflicts like another process's
    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()


def test_a_disk_error_leaves_nothing_half_written(tmp_path, monkeypatch):
    spool = Spool(tmp_path)
    spool.append(b"first", 1)

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    assert spool.append_many([SpoolEntry(b"second", 1)]) == 0
    monkeypatch.undo()
    assert len(spool) == 1
    spool.close()
    assert drain(Spool(tmp_path)) == [b"first"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12), st.data())
def test_scan_reads_every_whole_entry_of_any_prefix(items, data):
    raw = b"".join(encode_entry(item, len(item)) for item in items)
    cut = data.draw(st.integers(0, len(raw)))
    entries, valid = scan_segment(raw[:cut])
    whole = [item for index, item in enumerate(items) if sum(HEADER.size + len(i) for i in items[: index + 1]) <= cut]
    assert [raw[offset + HEADER.size : offset + HEADER.size + length] for offset, length, _ in entries] == whole
    assert valid == sum(HEADER.size + len(item) for item in whole)
