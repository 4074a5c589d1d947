from __future__ import annotations

from control_plane.admin.roles import Principal, Role
from control_plane.admin.sessions import SessionStore, SignInLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lives_until_its_expiry_and_no_longer() -> None:
    clock = Clock()
    store = SessionStore(60, clock=clock)
    session = store.create(Principal("admin:abcdefgh", "a", Role.ADMIN))
    clock.now += 59.9
    assert store.get(session.id) is session
    clock.now += 0.1
    assert store.get(session.id) is None
    assert len(store) == 0


def test_session_ids_and_csrf_tokens_are_random_and_distinct() -> None:
    store = SessionStore(60)
    principal = Principal("admin:abcdefgh", "a", Role.ADMIN)
    sessions = [store.create(principal) for _ in range(50)]
    values = {s.id for s in sessions} | {s.csrf_token for s in sessions}
    assert len(values) == 100
    assert all(len(s.id) >= 43 for s in sessions)


def test_the_csrf_token_must_match_exactly() -> None:
    session = SessionStore(60).create(Principal("admin:abcdefgh", "a", Role.ADMIN))
    assert session.csrf_matches(session.csrf_token)
    assert not session.csrf_matches(None)
    assert not session.csrf_matches(session.csrf_token[:-1])


def test_an_unknown_or_deleted_session_is_none() -> None:
    store = SessionStore(60)
    session = store.create(Principal("admin:abcdefgh", "a", Role.ADMIN))
    assert store.get("nope") is None and store.get(None) is None
    store.delete(session.id)
    assert store.get(session.id) is None


def test_failures_beyond_the_limit_in_a_minute_are_refused_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    limiter = SignInLimiter(3, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") is None
        limiter.failed("10.0.0.1")
        clock.now += 10
    assert limiter.retry_after("10.0.0.1") == 30  # the first failure leaves the window at +60 s
    assert limiter.retry_after("10.0.0.2") is None  # per address
    clock.now += 30
    assert limiter.retry_after("10.0.0.1") is None
    limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 10  # the window slides: the second failure is next


def test_the_limiter_forgets_quiet_addresses() -> None:
    clock = Clock()
    limiter = SignInLimiter(2, clock=clock)
    limiter.failed("a")
    clock.now += 61
    assert limiter.retry_after("a") is None
    assert not limiter._failures
