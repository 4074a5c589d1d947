"""The resources room: pure builders of the Envoy configuration the control plane serves.

``gateway`` (the listener, its filters, the route table, one cluster per provider), ``chains`` (the
fallback chain clusters and their retry route), ``resilience`` (a provider's limits and health as
cluster fields), ``usage_capture`` (the filters and access log that carry usage to ext_proc)."""
