"""The session record (extproc.mcp.session): bytes round-trip (for Redis), corrupt bytes are an
unknown session, idle expiry, ids unique across sessions, and a lost upstream is re-opened once."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.mcp.session import (
    InFlight,
    LostUpstream,
    ServerRequest,
    Session,
    SessionDecodeError,
    UpstreamSession,
    new_session,
)

ids = st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)
small = st.text(max_size=8)
json_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5)
json_obj = st.dictionaries(small, json_leaf | st.dictionaries(small, json_leaf, max_size=2), max_size=3)

sessions = st.builds(
    Session,
    id=small,
    protocol_version=st.sampled_from(["2025-06-18", "2025-11-25"]),
    created_at=st.floats(0, 2e9),
    last_seen=st.floats(0, 2e9),
    idle_ttl_s=st.floats(1, 1e6),
    client_info=json_obj,
    client_capabilities=json_obj,
    initialized=st.booleans(),
    upstreams=st.dictionaries(small, st.builds(UpstreamSession, st.none() | small, small, st.booleans()), max_size=3),
    in_flight=st.dictionaries(
        small, st.builds(InFlight, small, ids, small, st.none() | ids, st.none() | small), max_size=3
    ),
    server_requests=st.dictionaries(small, st.builds(ServerRequest, small, ids, st.none() | ids), max_size=3),
    counter=st.integers(0, 2**40),
)


@given(sessions)
def test_a_session_survives_bytes_unchanged(session: Session) -> None:
    assert Session.from_bytes(session.to_bytes()) == session


@given(st.binary(max_size=80))
def test_bytes_that_are_not_a_session_raise_only_the_decode_error(data: bytes) -> None:
    with contextlib.suppress(SessionDecodeError):
        Session.from_bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b'{"v":2}',
        b"[]",
        b'{"v":1,"id":3}',
        b'{"v":1,"id":"x","pv":"p","ca":0,"ls":0,"ttl":1,"ci":{},"cc":{},"init":false,"n":0,"up":{"a":[1,2]},"fl":{},"sr":{}}',
    ],
)
def test_corrupt_or_foreign_bytes_are_an_unknown_session(data: bytes) -> None:
    with pytest.raises(SessionDecodeError):
        Session.from_bytes(data)


def test_a_session_expires_after_its_idle_ttl_and_each_use_extends_it() -> None:
    session = new_session("s", "2025-06-18", 100.0, idle_ttl_s=10)
    assert not session.expired(109.9) and session.expired(110.0)
    session.touch(105.0)
    assert not session.expired(114.0) and session.expired(115.0)
    session.touch(50.0)  # a replica with a slower clock never shortens a session
    assert session.last_seen == 105.0


def test_upstream_ids_are_unique_within_and_across_sessions() -> None:
    a, b = new_session("a", "2025-06-18", 0), new_session("b", "2025-06-18", 0)
    got = [s.forward_id(InFlight("x", 1, "tools/call")) for s in (a, b, a, b)]
    assert len(set(got)) == 4
    assert a.finish(got[0]) is not None and a.finish(got[0]) is None
    assert a.finish(7) is None


def test_in_flight_is_found_by_the_clients_id_with_its_json_type() -> None:
    session = new_session("a", "2025-06-18", 0)
    uid = session.forward_id(InFlight("x", 1, "tools/call"))
    assert session.in_flight_for_client_id(1) == (uid, session.in_flight[uid])
    assert session.in_flight_for_client_id("1") is None
    assert session.in_flight_for_client_id(True) is None


def test_a_lost_upstream_is_reinitialized_once_then_given_up() -> None:
    session = new_session("a", "2025-06-18", 0)
    session.upstream_opened("files", "up-1", "2025-06-18")
    assert session.upstream_lost("files") is LostUpstream.REINITIALIZE
    assert session.upstream_open("files") is None  # must be opened again before use
    session.upstream_opened("files", "up-2", "2025-06-18")
    assert session.upstream_lost("files") is LostUpstream.GIVE_UP
    assert session.upstream_open("files") is None


def test_a_success_after_reinitializing_earns_another_retry() -> None:
    session = new_session("a", "2025-06-18", 0)
    session.upstream_opened("files", "up-1", "2025-06-18")
    assert session.upstream_lost("files") is LostUpstream.REINITIALIZE
    session.upstream_opened("files", "up-2", "2025-06-18")
    session.upstream_succeeded("files")
    assert session.upstream_lost("files") is LostUpstream.REINITIALIZE


def test_the_reinitialize_marker_survives_bytes() -> None:
    session = new_session("a", "2025-06-18", 0)
    session.upstream_opened("files", "up-1", "2025-06-18")
    session.upstream_lost("files")
    moved = Session.from_bytes(session.to_bytes())  # the retry lands on another replica
    moved.upstream_opened("files", "up-2", "2025-06-18")
    assert moved.upstream_lost("files") is LostUpstream.GIVE_UP


def test_a_touch_asks_to_be_stored_only_once_expiry_moved_noticeably() -> None:
    session = new_session("a", "2025-06-18", 0.0, idle_ttl_s=3600)
    assert not session.touch(30.0)  # 30 s of a 1 h session: not worth a store write
    assert session.touch(61.0)  # a minute since the stored copy: write it back
    assert not session.touch(62.0)
    assert Session.from_bytes(session.to_bytes()).last_seen == 62.0
