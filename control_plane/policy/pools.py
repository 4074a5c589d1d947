"""A provider's own pool of hosts across regions and zones (``providers[].endpoints``).

```yaml
providers:
  - name: vllm
    api: openai
    base_url: http://vllm.internal:8000/v1   # scheme, path and Host header; the pool is dialled instead
    endpoints:
      - {address: 10.0.1.5, region: us-east, zone: us-east-1a}          # port: base_url's
      - {address: 10.0.1.6, port: 8001, region: us-east, zone: us-east-1b}
      - {address: 10.1.1.5, region: eu-west, weight: 2}
```

Each control plane knows the region it runs in (``control-plane --region``, ``up --region``): the
endpoints of that region are the cluster's first priority, every other region the next one
(control_plane.resources.localities). Envoy sends a request to another region only when its own
region's hosts are not healthy enough (ejected by outlier detection or failing active health
checks), and comes back when they recover: failover and recovery need no control plane push.

Addresses are IPs: they go to Envoy over EDS, which takes no host names (a name-addressed pool
belongs in Consul's catalog, ``consul_service``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from control_plane.policy.yaml_check import Checker, Located, join

# Kubernetes' topology labels (topology.kubernetes.io/region) and cloud region names fit in this.
PLACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_WEIGHT = 128  # Envoy allows up to 2^32 - 1 in a locality; a pool needs a handful of ratios
_FIELDS = ("address", "port", "region", "zone", "weight")


@dataclass(frozen=True, slots=True, order=True)
class PoolEndpoint:
    address: str  # an IP address
    port: int
    region: str = ""  # "": no region (a pool written without any is one priority, one locality)
    zone: str = ""
    weight: int = 1  # its share within its locality; a locality's weight is the sum of its hosts'


def parse_endpoints(check: Checker, at: Located, path: str, default_port: int) -> tuple[PoolEndpoint, ...]:
    """``providers[].endpoints`` checked; () when it has problems (recorded in ``check``)."""
    before = len(check.problems)
    endpoints: list[PoolEndpoint] = []
    seen: set[tuple[str, int]] = set()
    for index, item in enumerate(check.non_empty_sequence(at, path, "endpoint")):
        item_path = join(path, index)
        fields = check.mapping(item, item_path, _FIELDS, required=("address",))
        address = _address(check, fields["address"], join(item_path, "address")) if "address" in fields else None
        port = check.integer(fields["port"], join(item_path, "port"), 1, 65535) if "port" in fields else default_port
        region = _place(check, fields.get("region"), join(item_path, "region"))
        zone = _place(check, fields.get("zone"), join(item_path, "zone"))
        weight = check.integer(fields["weight"], join(item_path, "weight"), 1, MAX_WEIGHT) if "weight" in fields else 1
        if address is None or port is None or region is None or zone is None or weight is None:
            continue
        if (address, port) in seen:
            check.problem(item, item_path, f"{address} port {port} is already in this pool")
            continue
        seen.add((address, port))
        endpoints.append(PoolEndpoint(address, port, region, zone, weight))
    if len(check.problems) > before:
        return ()
    return tuple(endpoints)


def _address(check: Checker, at: Located, path: str) -> str | None:
    text = check.string(at, path)
    if text is None:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        check.problem(at, path, f"{text!r} is not an IP address (EDS takes no host names; use consul_service)")
        return None


def _place(check: Checker, at: Located | None, path: str) -> str | None:
    if at is None:
        return ""
    return check.string(at, path, PLACE, "region or zone name ([A-Za-z0-9_.-])")
