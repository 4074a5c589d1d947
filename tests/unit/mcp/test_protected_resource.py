"""RFC 9728 protected-resource metadata of the MCP endpoint (extproc.mcp.protected_resource): pure."""

from __future__ import annotations

import orjson
import pytest

from extproc.mcp import protected_resource as pr


def test_the_metadata_is_served_on_the_path_form_and_the_root_form():
    assert pr.metadata_paths("/mcp") == (
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    )
    assert pr.metadata_paths("/tools/mcp")[0] == "/.well-known/oauth-protected-resource/tools/mcp"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({":authority": "gw.example.com", ":scheme": "https"}, "https://gw.example.com"),
        ({":authority": "127.0.0.1:8080", ":scheme": "http"}, "http://127.0.0.1:8080"),
        # Envoy's x-forwarded-proto wins over :scheme (TLS ended before Envoy), first value only.
        ({":authority": "gw", ":scheme": "http", "x-forwarded-proto": "https, http"}, "https://gw"),
        # The decision hop: the host under the Lua filter's name, never the hop call's own Host.
        (
            {pr.HOP_AUTHORITY_HEADER: "GW.example:8443", "host": "ccr-hop", "x-forwarded-proto": "https"},
            "https://gw.example:8443",
        ),
        ({":authority": "[::1]:8080"}, "http://[::1]:8080"),
        # Nothing usable: still a URL, never the client's junk in a header or a JSON document.
        ({}, "http://localhost"),
        ({":authority": 'evil"host', ":scheme": "gopher"}, "http://localhost"),
        ({":authority": "a b"}, "http://localhost"),
    ],
)
def test_the_origin_is_the_scheme_and_host_the_client_called(headers, expected):
    assert pr.origin(headers) == expected


def test_the_resource_is_the_endpoints_url_and_the_metadata_url_inserts_the_well_known_path():
    headers = {":authority": "gw.example.com", ":scheme": "https"}
    assert pr.resource_url(headers, "/mcp") == "https://gw.example.com/mcp"
    assert pr.metadata_url(headers, "/mcp") == "https://gw.example.com/.well-known/oauth-protected-resource/mcp"


def test_the_document_names_the_authorization_servers_and_header_bearer_tokens():
    body = pr.metadata_body({":authority": "gw", ":scheme": "https"}, "/mcp", ("https://auth.example.com",))
    assert orjson.loads(body) == {
        "resource": "https://gw/mcp",
        "authorization_servers": ["https://auth.example.com"],
        "bearer_methods_supported": ["header"],
        "resource_name": "ccr-gateway MCP endpoint",
    }


def test_without_authorization_servers_the_field_is_left_out_and_no_scope_is_claimed():
    document = pr.metadata("https://gw/mcp")
    assert "authorization_servers" not in document and "scopes_supported" not in document
    assert document["resource"] == "https://gw/mcp"


def test_the_challenge_points_at_the_metadata_and_says_when_a_token_was_refused():
    headers = {":authority": "gw", ":scheme": "https"}
    assert pr.www_authenticate(headers, "/mcp") == (
        'Bearer resource_metadata="https://gw/.well-known/oauth-protected-resource/mcp"'
    )
    assert pr.www_authenticate(headers, "/mcp", invalid_token=True).endswith(', error="invalid_token"')
