"""A ``vertex`` provider's own fields: Claude on Google Vertex AI (extproc.translate.anthropic_vertex).

```yaml
providers:
  - name: vertex
    api: vertex
    project: my-gcp-project      # required: the Google Cloud project id
    region: us-east5             # required: a region, "global", or the multi-regions "us" / "eu"
    base_url: https://us-east5-aiplatform.googleapis.com   # optional: derived from region
    models:
      - {name: claude-sonnet-4-5, id: "claude-sonnet-4-5@20250929"}
```

``publisher: google`` makes it Gemini on Vertex AI instead (``generateContent``, Gemini's own
request and answer: extproc.translate.anthropic_gemini and the other Gemini translators): the
models are Gemini's (``{name: gemini-2.5-pro}``), the project, region and token the same.

The base path the gateway sends to is compiled here, so that the translator only appends the model
and the verb: for Claude ``{base_path}/{model}:rawPredict`` with ``{base_url path}/v1/projects/
{project}/locations/{region}/publishers/anthropic/models``; for Gemini ``{base_path}/models/
{model}:generateContent`` (as on Gemini's own API) with ``.../publishers/google``. No key: Vertex wants a Google OAuth access token,
which Envoy injects on the provider's cluster from the control plane (``credentials``), never
ext_proc, so ``api_key`` and ``api_key_env`` are refused on such a provider.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from control_plane.policy.yaml_check import Checker, Located, join

VERTEX_FIELDS = ("project", "region", "publisher")
# Whose models a vertex provider serves: Claude (rawPredict, Anthropic's API) or Gemini (generateContent).
PUBLISHERS = ("anthropic", "google")
_KEY_FIELDS = ("api_key", "api_key_env")
# A provider's base URL as control_plane.policy.parse reads it: (scheme, host, port, base path).
Url = tuple[str, str, int, str]
# Google Cloud project ids: 6-30 characters, lower-case letters, digits and hyphens, a letter first.
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
# A region (us-east5, europe-west1, asia-southeast1), "global", or a multi-region ("us", "eu").
_REGION = re.compile(r"^(global|us|eu|[a-z]+-[a-z]+[0-9]+)$")
MULTI_REGIONS = ("us", "eu")


def project_problem(project: str) -> str | None:
    if _PROJECT.match(project):
        return None
    return f"{project!r} is not a Google Cloud project id (6-30 of a-z, 0-9 and '-', a letter first)"


def region_problem(region: str) -> str | None:
    if _REGION.match(region):
        return None
    return f"{region!r} is not a Vertex AI region: write one such as us-east5 or europe-west1, or global, us or eu"


def default_base_url(region: str) -> str:
    """Vertex AI's endpoint for ``region`` (as the Anthropic SDK's Vertex client picks it)."""
    if region == "global":
        return "https://aiplatform.googleapis.com"
    if region in MULTI_REGIONS:
        return f"https://aiplatform.{region}.rep.googleapis.com"
    return f"https://{region}-aiplatform.googleapis.com"


def models_path(project: str, region: str, publisher: str = "anthropic") -> str:
    """What follows the base URL's own path in a vertex provider's base path (Gemini's translators
    append ``/models/{model}:...`` themselves, as on Gemini's own API)."""
    collection = f"/v1/projects/{project}/locations/{region}/publishers/{publisher}"
    return collection + "/models" if publisher == "anthropic" else collection


def parse_publisher(check: Checker, fields: dict[str, Located], path: str) -> str:
    """A vertex provider's ``publisher`` (anthropic by default); problems at its line."""
    if "publisher" not in fields:
        return "anthropic"
    value = check.string(fields["publisher"], join(path, "publisher"))
    if value is not None and value not in PUBLISHERS:
        message = f"must be anthropic (Claude, rawPredict) or google (Gemini, generateContent), got {value!r}"
        check.problem(fields["publisher"], join(path, "publisher"), message)
        return "anthropic"
    return value or "anthropic"


def base_url_problem(base_path: str, url: str) -> str | None:
    """A base URL that already holds part of the path the gateway appends."""
    segments = base_path.split("/")
    for part in ("v1", "projects"):
        if part in segments:
            cut = len("/".join(segments[: segments.index(part)]))
            return (
                f"Vertex requests go to base_url + {models_path('PROJECT', 'REGION')}/MODEL:rawPredict, "
                f"project and region from their own fields; write it without {base_path[cut:]}: "
                f"{url[: len(url) - len(base_path) + cut]}"
            )
    return None


def parse_vertex(
    check: Checker,
    at: Located,
    fields: dict[str, Located],
    path: str,
    api: str | None,
    url: Url | None,
    publisher: str = "anthropic",
) -> Url | None:
    """The provider's base URL with the model collection's path appended when it is a vertex
    provider (derived from ``region`` when it gives no base_url); ``url`` unchanged otherwise.
    Problems are reported at their field's line."""
    if api != "vertex":
        for name in VERTEX_FIELDS:
            if name in fields:
                check.problem(fields[name], join(path, name), "only a vertex provider (api: vertex) takes it")
        return url
    for name in _KEY_FIELDS:
        if name in fields:
            message = (
                "a vertex provider takes no key: Envoy sends a Google OAuth access token from the "
                "control plane (credentials), never a key"
            )
            check.problem(fields[name], join(path, name), message)
    values = {}
    for name, problem_of in (("project", project_problem), ("region", region_problem)):
        if name not in fields:
            check.problem(at, join(path, name), "is required for a vertex provider")
            continue
        value = check.string(fields[name], join(path, name))
        problem = problem_of(value) if value is not None else None
        if problem is not None:
            check.problem(fields[name], join(path, name), problem)
        elif value is not None:
            values[name] = value
    if "base_url" in fields:
        if url is not None and (problem := base_url_problem(url[3], str(fields["base_url"].value).rstrip("/"))):
            check.problem(fields["base_url"], join(path, "base_url"), problem)
            return None
    elif "region" in values:
        parts = urlsplit(default_base_url(values["region"]))
        url = ("https", parts.hostname or "", 443, "")
    if url is None or len(values) < 2:
        return None
    scheme, host, port, base_path = url
    return scheme, host, port, base_path + models_path(values["project"], values["region"], publisher)
