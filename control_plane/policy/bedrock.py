"""A Bedrock provider's policy fields (``api: bedrock``, issue 25).

::

    - name: bedrock
      api: bedrock
      base_url: https://bedrock-runtime.us-east-1.amazonaws.com   # no path
      region: us-east-1          # optional on the standard host (read from it), required elsewhere
      credentials: env           # how Envoy signs (control_plane.policy.credentials)
      models:
        - {name: claude-sonnet-4-5, id: us.anthropic.claude-sonnet-4-5-20250929-v1:0}  # a model id or inference profile

Requests are signed with SigV4 by Envoy (control_plane.resources.aws_signing), for the region here:
a Bedrock provider has no API key (``api_key`` / ``api_key_env`` are refused), and ext_proc sends
no key header to it (extproc.routing_table.auth_headers).
"""

from __future__ import annotations

import re

from control_plane.policy.yaml_check import Checker, Located, join

# bedrock-runtime.<region>.amazonaws.com, its FIPS twin, and the China partition's .com.cn.
_STANDARD_HOST = re.compile(r"^bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
# us-east-1, eu-central-2, ap-southeast-4, us-gov-west-1, cn-north-1, il-central-1 ...
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")


def region_in_host(host: str) -> str:
    """The region a standard Bedrock runtime host names ("" for any other host)."""
    found = _STANDARD_HOST.match(host.lower())
    return found.group(1) if found is not None and _REGION.match(found.group(1)) else ""


def bedrock_region(host: str, written: str | None) -> tuple[str, str | None]:
    """The provider's region, and why it is wrong (None: it is fine): ``written`` is the
    ``region:`` field (None when absent)."""
    derived = region_in_host(host)
    if written is None:
        if derived:
            return derived, None
        return "", f"required: {host} is not a bedrock-runtime.<region>.amazonaws.com host to read it from"
    if not _REGION.match(written):
        return "", f"{written!r} is not an AWS region (like us-east-1)"
    if derived and derived != written:
        return "", f"{written!r} differs from the region of base_url's host ({derived})"
    return written, None


def parse_bedrock(check: Checker, fields: dict[str, Located], path: str, host: str | None) -> str:
    """A bedrock provider's region (``region:``, else read from the host); refuses a key. Problems
    are reported at their field's line; "" when there is one (or no host to read)."""
    for name in ("api_key", "api_key_env"):
        if name in fields:
            message = "a bedrock provider takes no key: Envoy signs its requests with SigV4 (credentials)"
            check.problem(fields[name], join(path, name), message)
    written = None
    if "region" in fields:
        written = check.string(fields["region"], join(path, "region"))
        if written is None:
            return ""
    if host is None:
        return ""
    region, problem = bedrock_region(host, written)
    if problem is not None:
        where = fields.get("region") or fields.get("base_url")
        if where is not None:
            check.problem(where, join(path, "region"), problem)
    return region
