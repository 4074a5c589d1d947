"""The Streamable HTTP header rules (extproc.mcp.transport), one check at a time."""

from __future__ import annotations

import pytest

from extproc.mcp import transport


@pytest.mark.parametrize(
    ("accept", "ok"),
    [
        ("application/json, text/event-stream", True),
        ("text/event-stream;q=0.9, application/json;q=1", True),
        ("*/*", True),
        ("application/*, text/*", True),
        ("APPLICATION/JSON, TEXT/EVENT-STREAM", True),
        ("application/json", False),
        ("text/event-stream", False),
        ("", False),
    ],
)
def test_a_post_must_accept_both_json_and_event_streams(accept: str, ok: bool) -> None:
    err = transport.check_post_headers({"accept": accept, "content-type": "application/json"})
    assert (err is None) == ok
    if err is not None:
        assert err.http_status == 406


@pytest.mark.parametrize(
    ("ctype", "ok"),
    [("application/json", True), ("application/json; charset=utf-8", True), ("text/plain", False), ("", False)],
)
def test_a_post_body_must_be_json(ctype: str, ok: bool) -> None:
    err = transport.check_post_headers({"accept": "*/*", "content-type": ctype})
    assert (err is None) == ok and (ok or (err is not None and err.http_status == 415))


def test_origin_is_checked_only_when_present_and_configured() -> None:
    allowed = frozenset({"https://ok.example"})
    assert transport.check_origin({}, allowed) is None
    assert transport.check_origin({"origin": "https://ok.example"}, allowed) is None
    assert transport.check_origin({"origin": "https://evil.example"}, None) is None
    err = transport.check_origin({"origin": "https://evil.example"}, allowed)
    assert err is not None and err.http_status == 403


def test_the_version_header_must_be_supported_and_the_sessions_own() -> None:
    assert transport.check_version_header({}, "2025-06-18") is None
    assert transport.check_version_header({"mcp-protocol-version": "2025-06-18"}, "2025-06-18") is None
    for sent in ("2025-03-26", "2026-07-28", "nonsense", "2025-11-25"):
        err = transport.check_version_header({"mcp-protocol-version": sent}, "2025-06-18")
        assert err is not None and err.http_status == 400


@pytest.mark.parametrize(
    ("method", "status"), [("POST", None), ("GET", None), ("DELETE", None), ("PUT", 405), ("PATCH", 405)]
)
def test_only_post_get_and_delete_are_served(method: str, status: int | None) -> None:
    err = transport.check_method(method)
    assert (err.http_status if err else None) == status
    if err is not None:
        assert ("allow", "GET, POST, DELETE") in err.headers


def test_session_refusals_are_400_when_missing_and_404_when_unknown() -> None:
    assert transport.missing_session().http_status == 400
    assert transport.unknown_session().http_status == 404
