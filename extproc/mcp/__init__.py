"""The MCP gateway's sans-IO core: JSON-RPC messages in, decisions out (docs/mcp.md).

Nothing here does I/O: no sockets, no asyncio, no Redis, no Envoy. Time, random ids and the
results of upstream calls are passed in; bytes, dicts and frozen decisions come out. The
transport adapters (the decision hop on the listener, the upstream clients) are built beside it.

Modules: ``jsonrpc`` (the wire: parse, validate, encode), ``transport`` (the Streamable HTTP
rules on headers), ``catalog`` (several upstream servers merged into one, names and URIs
prefixed), ``access`` (who may see and call what), ``session`` (gateway session <-> upstream
sessions, ids in flight), ``router`` (one client or upstream message -> one decision).
"""
