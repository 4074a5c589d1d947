"""control_plane.policy.file_source: the polled policy file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from control_plane.policy import GatewayPolicy, PolicyError
from control_plane.policy.file_source import FilePolicySource
from tests.unit.cp_helpers import EXAMPLE_POLICY

VALID = EXAMPLE_POLICY.read_text()
OTHER = VALID.replace("port: 8080", "port: 8081")
INVALID = "providers:\n  - name: a\n    api: nope\n    base_url: http://h\n    models: [m]\n"


def write(path: Path, text: str | bytes, mtime: float) -> None:
    """Write and set an explicit mtime, so that changes never hide in a coarse mtime resolution."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    os.utime(path, (mtime, mtime))


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    write(path, VALID, 1_000_000)
    return path


def test_load_returns_the_policy_once_then_none_while_unchanged(policy_file):
    source = FilePolicySource(str(policy_file))
    policy = source.load()
    assert isinstance(policy, GatewayPolicy)
    assert policy.source == str(policy_file)
    assert [p.name for p in policy.providers] == ["fake-anthropic", "fake-openai"]
    assert source.load() is None
    assert source.load() is None


def test_a_touched_file_with_the_same_content_is_unchanged(policy_file):
    source = FilePolicySource(str(policy_file))
    assert source.load() is not None
    os.utime(policy_file, (2_000_000, 2_000_000))
    assert source.load() is None


def test_a_file_rewritten_with_the_same_content_is_unchanged(policy_file):
    source = FilePolicySource(str(policy_file))
    assert source.load() is not None
    policy_file.unlink()
    write(policy_file, VALID, 3_000_000)  # an editor's save-by-rename: new inode, same bytes
    assert source.load() is None


def test_changed_content_is_loaded(policy_file):
    source = FilePolicySource(str(policy_file))
    assert source.load().listener_port == 8080
    write(policy_file, OTHER, 1_000_001)
    assert source.load().listener_port == 8081


def test_a_change_that_keeps_size_and_mtime_but_replaces_the_file_is_loaded(policy_file, tmp_path):
    # ConfigMap-style swap: another file of the same size and mtime renamed over this one.
    source = FilePolicySource(str(policy_file))
    assert source.load().listener_port == 8080
    swapped = tmp_path / "swap.yaml"
    write(swapped, OTHER, 1_000_000)
    assert swapped.stat().st_size == policy_file.stat().st_size
    os.replace(swapped, policy_file)
    assert source.load().listener_port == 8081


def test_invalid_content_raises_and_fixing_it_recovers(policy_file):
    source = FilePolicySource(str(policy_file))
    assert source.load() is not None
    write(policy_file, INVALID, 1_000_001)
    with pytest.raises(PolicyError) as caught:
        source.load()
    assert str(caught.value) == (
        f"{policy_file}:3:10: providers[0].api: must be one of anthropic, openai, gemini, responses, vertex, bedrock (got 'nope')"
    )
    assert source.load() is None, "the same invalid content is reported once"
    write(policy_file, OTHER, 1_000_002)
    assert source.load().listener_port == 8081


def test_going_back_to_the_last_good_content_after_an_error_loads_it_again(policy_file):
    source = FilePolicySource(str(policy_file))
    assert source.load() is not None
    write(policy_file, INVALID, 1_000_001)
    with pytest.raises(PolicyError):
        source.load()
    write(policy_file, VALID, 1_000_002)
    assert source.load() is not None


def test_a_missing_file_raises_and_its_return_is_loaded(tmp_path):
    path = tmp_path / "later.yaml"
    source = FilePolicySource(str(path))
    with pytest.raises(PolicyError) as caught:
        source.load()
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"
    write(path, VALID, 1_000_000)
    assert source.load() is not None


def test_a_file_that_is_not_utf8_is_a_policy_error(policy_file):
    source = FilePolicySource(str(policy_file))
    write(policy_file, b"providers: \xff\xfe\n", 1_000_001)
    with pytest.raises(PolicyError) as caught:
        source.load()
    assert str(caught.value).startswith(f"{policy_file}: not UTF-8 text: invalid start byte at byte 11")


def test_an_empty_file_is_a_policy_error(policy_file):
    source = FilePolicySource(str(policy_file))
    write(policy_file, "", 1_000_001)
    with pytest.raises(PolicyError) as caught:
        source.load()
    assert str(caught.value) == f"{policy_file}:1:1: policy is empty; at least one provider is required"


async def test_watch_calls_on_policy_and_on_error_as_the_file_changes(policy_file):
    source = FilePolicySource(str(policy_file), interval=0.01)
    events: asyncio.Queue[object] = asyncio.Queue()
    task = asyncio.create_task(source.watch(events.put_nowait, events.put_nowait))
    try:
        first = await asyncio.wait_for(events.get(), 2)
        assert isinstance(first, GatewayPolicy) and first.listener_port == 8080
        write(policy_file, INVALID, 1_000_001)
        error = await asyncio.wait_for(events.get(), 2)
        assert isinstance(error, PolicyError)
        assert "providers[0].api" in str(error)
        write(policy_file, OTHER, 1_000_002)
        fixed = await asyncio.wait_for(events.get(), 2)
        assert isinstance(fixed, GatewayPolicy) and fixed.listener_port == 8081
        await asyncio.sleep(0.05)
        assert events.empty(), "nothing is reported while the file stays the same"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watch_keeps_going_when_the_file_disappears(policy_file):
    source = FilePolicySource(str(policy_file), interval=0.01)
    events: asyncio.Queue[object] = asyncio.Queue()
    task = asyncio.create_task(source.watch(events.put_nowait, events.put_nowait))
    try:
        assert isinstance(await asyncio.wait_for(events.get(), 2), GatewayPolicy)
        policy_file.unlink()
        assert isinstance(await asyncio.wait_for(events.get(), 2), PolicyError)
        write(policy_file, OTHER, 1_000_001)
        while isinstance(event := await asyncio.wait_for(events.get(), 2), PolicyError):
            pass  # "cannot read" is reported on every poll while the file is missing
        assert isinstance(event, GatewayPolicy) and event.listener_port == 8081
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
