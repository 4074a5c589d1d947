"""The Admin HTTP API and the web console (docs/admin-api.md), served by the control plane on a
listener of its own, off the client data path. Sans-IO cores (roles, operations, views_*) with thin
aiohttp adapters (server, routes_*) around them."""
