"""The Consul room: the HTTP API plumbing (client), the policy source in KV (kv), the catalog
watcher that turns service instances into Envoy endpoints (catalog), and the registration of the
gateway's own services with TTL checks (registration)."""
