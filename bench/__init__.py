"""The benchmark harness: the gateway against plain Envoy on the same fake upstream.

`ccr-gateway bench` (or `python -m bench`); see bench/cli.py for the options and docs/performance.md
for the latest results and how they were measured.
"""
