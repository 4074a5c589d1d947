"""A fast fake LLM upstream speaking the Anthropic, OpenAI (Chat Completions and Responses) and Gemini
APIs, for tests and benchmarks.

Replies are derived from the request (see ``reply``), so tests can predict them exactly. Faults are
injected per request with ``x-fake-*`` headers (see ``config``) or globally via ``POST /_fake/config``;
``GET /_fake/requests`` shows what arrived. Start it with ``server.start`` in-process or
``python -m fake_provider`` / ``ccr-gateway fake-provider``.
"""
