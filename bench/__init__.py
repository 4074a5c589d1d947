"""The benchmark harness: the gateway against plain Envoy, in the same run, on the same upstreams.

Three targets per case: plain Envoy, the gateway on its default decision path (hop) and the gateway
on the ext_proc path; non-streaming cases are answered by an upstream Envoy with canned answers,
streams by the fake provider. `ccr-gateway bench` (or `python -m bench`); see bench/cli.py for the
options and docs/performance.md for the latest results and how they were measured.
"""
