"""The policy's ``responses:`` section: stored responses of the Responses API (docs/responses.md,
"Stored responses").

```yaml
responses:
  store: true        # default true: a request with store not false is kept, previous_response_id served
  retention: 30d     # default 30d: how long a stored response can be read or continued (h, d, w)
```

With ``store: false`` nothing is kept: ``previous_response_id`` is refused (400) and
``GET``/``DELETE /v1/responses/{id}`` answer 404, as on a gateway without stored responses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ccr.v1 import policy_pb2
from control_plane.policy.yaml_check import Checker, Located, join, kind_of

_FIELDS = ("store", "retention")
DEFAULT_RETENTION_S = 30 * 86_400
MAX_RETENTION_S = 3650 * 86_400
_PERIOD = re.compile(r"^(\d+)\s*(h|hours?|d|days?|w|weeks?)$")
_UNIT_S = {"h": 3600, "d": 86_400, "w": 7 * 86_400}


@dataclass(frozen=True, slots=True)
class ResponsesSpec:
    store: bool = True
    retention_s: int = DEFAULT_RETENTION_S

    def to_proto(self) -> policy_pb2.Responses:
        return policy_pb2.Responses(store_disabled=not self.store, retention_s=self.retention_s)


def parse_responses(check: Checker, at: Located, path: str = "responses") -> ResponsesSpec:
    """The top-level ``responses:``; the defaults where a field is missing or has a problem
    (recorded in ``check``, which fails the policy)."""
    fields = check.mapping(at, path, _FIELDS)
    store = True
    if "store" in fields:
        flag = fields["store"]
        if isinstance(flag.value, bool):
            store = flag.value
        else:
            check.problem(flag, join(path, "store"), f"must be true or false, got {kind_of(flag.value)}")
    retention = DEFAULT_RETENTION_S
    if "retention" in fields:
        retention = _retention(check, fields["retention"], join(path, "retention")) or retention
    return ResponsesSpec(store, retention)


def _retention(check: Checker, at: Located, path: str) -> int | None:
    text = at.value
    match = _PERIOD.match(text.strip()) if isinstance(text, str) else None
    seconds = int(match[1]) * _UNIT_S[match[2][0]] if match is not None else 0
    if not 0 < seconds <= MAX_RETENTION_S:
        shown = repr(text) if isinstance(text, str) else kind_of(text)
        check.problem(at, path, f"must be a period like '30d', '12h' or '4w' (at most 3650 days), got {shown}")
        return None
    return seconds
