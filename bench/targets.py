"""The names of the bench's targets and verdicts, shared by the runner and every report.

A case (and the half-load run) holds one measured window per target under the target's name:
plain Envoy first, then each gateway asked for with ``--paths``.
"""

from __future__ import annotations

PLAIN, GATEWAY, GATEWAY_EXTPROC = "plain-envoy", "gateway", "gateway-ext_proc"
# Opt-in variants of the hop gateway (--paths hop,...), each the cost of one feature in the same run:
GATEWAY_NO_LEDGER = "gateway-no-ledger"  # hop-no-ledger: without the usage ledger
GATEWAY_AUTH = "gateway-auth"  # hop-auth: virtual keys required, limits counted in process
GATEWAY_AUTH_REDIS = "gateway-auth-redis"  # hop-auth-redis: the same, limits counted in Redis
HOP_VARIANTS = (GATEWAY_NO_LEDGER, GATEWAY_AUTH, GATEWAY_AUTH_REDIS)  # compared with GATEWAY, not only plain Envoy
AUTH_TARGETS = (GATEWAY_AUTH, GATEWAY_AUTH_REDIS)
GATEWAY_TARGETS = (GATEWAY, GATEWAY_EXTPROC, *HOP_VARIANTS)
TARGETS = (PLAIN, *GATEWAY_TARGETS)  # the order every case measures them in
# The gateway per --paths name; what each runs (decision path, ledger, auth) is bench.environment's.
TARGET_BY_DECISION_PATH = {
    "hop": GATEWAY,
    "ext_proc": GATEWAY_EXTPROC,
    "hop-no-ledger": GATEWAY_NO_LEDGER,
    "hop-auth": GATEWAY_AUTH,
    "hop-auth-redis": GATEWAY_AUTH_REDIS,
}
MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"
