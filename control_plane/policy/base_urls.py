"""Does a provider's base_url fit its API? The gateway appends each API's own path to it.

ext_proc builds upstream paths as base_url's path + a fixed suffix (extproc/translate/passthrough.py,
anthropic_openai.py, openai_anthropic.py, gemini_common.py, anthropic_responses.py):

    anthropic   {base}/v1/messages                                  https://api.anthropic.com
    openai      {base}/chat/completions                             https://api.openai.com/v1
    gemini      {base}/models/{model}:generateContent (or stream)   https://generativelanguage.googleapis.com/v1beta
    responses   {base}/responses                                    https://api.openai.com/v1
    bedrock     {base}/model/{model}/invoke (or -with-response-stream)  https://bedrock-runtime.us-east-1.amazonaws.com
    vertex      {base}/v1/projects/{p}/locations/{r}/publishers/anthropic/models/{model}:rawPredict
                (control_plane.policy.vertex: project and region fields; base_url from the region by default)

A base that already holds part of the suffix is certainly wrong (…/v1/v1/messages): an error. An
OpenAI-format (Chat or Responses) base without a version segment is only suspicious: most servers want /v1, but some
serve /chat/completions at their root (DeepSeek's https://api.deepseek.com, Perplexity's), and
others version differently (/api/paas/v4, /v1beta/openai): a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A version segment anywhere in the path: /v1, /v1beta, /v4, /api/v1, /v1beta/openai.
_VERSION_SEGMENT = re.compile(r"/v\d+[a-z0-9]*(/|$)")
_ENDPOINT_SUFFIXES = ("/chat/completions", "/completions", "/responses", "/messages")
_GEMINI_HOST = "generativelanguage.googleapis.com"
_BEDROCK_MODEL_SEGMENT = re.compile(r"/model(/|$)")
# OpenAI-compatible APIs known to answer at /chat/completions without a version: no warning for them.
_UNVERSIONED_HOSTS = frozenset({"api.deepseek.com", "api.perplexity.ai"})


@dataclass(frozen=True, slots=True)
class BaseUrlAdvice:
    message: str
    is_error: bool  # False: a warning, the policy stays valid


def check_base_url(api: str, host: str, base_path: str, url: str) -> BaseUrlAdvice | None:
    """What is wrong with ``url`` (whose host and path, without a trailing slash, are given) as the
    base URL of an ``api`` provider; None when it fits."""
    url = url.rstrip("/")
    if api == "anthropic":
        return _anthropic(base_path, url)
    if api == "openai":
        return _openai(host, base_path, url)
    if api == "responses":
        return _openai(host, base_path, url, "/responses", "OpenAI Responses requests")
    if api == "gemini":
        return _gemini(base_path, url)
    if api == "bedrock":
        return _bedrock(base_path, url)
    return None


def _bedrock(base_path: str, url: str) -> BaseUrlAdvice | None:
    """Bedrock's runtime endpoint has no path of its own: a base holding /model/... is certainly wrong."""
    found = _BEDROCK_MODEL_SEGMENT.search(base_path)
    if found is None:
        return None
    expected = url[: len(url) - len(base_path) + found.start()]
    return BaseUrlAdvice(
        "Bedrock requests go to base_url + /model/<model id>/invoke; "
        f"write it without {base_path[found.start() :]}: {expected}",
        is_error=True,
    )


def _anthropic(base_path: str, url: str) -> BaseUrlAdvice | None:
    calls = f"Anthropic-format requests go to base_url + /v1/messages ({url}/v1/messages)"
    for suffix in ("/v1/messages", "/messages", "/v1"):
        if base_path.endswith(suffix):
            expected = url.removesuffix(suffix)
            return BaseUrlAdvice(f"{calls}; write it without {suffix}: {expected}", is_error=True)
    return None


def _openai(
    host: str, base_path: str, url: str, endpoint: str = "/chat/completions", what: str = "OpenAI-format requests"
) -> BaseUrlAdvice | None:
    calls = f"{what} go to base_url + {endpoint} ({url}{endpoint})"
    for suffix in _ENDPOINT_SUFFIXES:
        if base_path.endswith(suffix):
            expected = url.removesuffix(suffix)
            return BaseUrlAdvice(f"{calls}; write it without {suffix}: {expected}", is_error=True)
    if host == _GEMINI_HOST and not base_path.endswith("/openai"):
        return BaseUrlAdvice(
            f"{calls}; Gemini's OpenAI-compatible API is https://{_GEMINI_HOST}/v1beta/openai "
            f"(or use api: gemini with base_url https://{_GEMINI_HOST}/v1beta)",
            is_error=True,
        )
    if not _VERSION_SEGMENT.search(base_path) and host not in _UNVERSIONED_HOSTS:
        return BaseUrlAdvice(
            f"{calls}; most OpenAI-compatible servers expect a version there, as in https://api.openai.com/v1 "
            f"(fine if the server answers at {endpoint} without one, as DeepSeek's https://api.deepseek.com does)",
            is_error=False,
        )
    return None


def _gemini(base_path: str, url: str) -> BaseUrlAdvice | None:
    calls = f"Gemini requests go to base_url + /models/MODEL:generateContent ({url}/models/...)"
    if base_path.endswith("/openai") or base_path.endswith("/chat/completions"):
        return BaseUrlAdvice(
            f"{calls}; this is Gemini's OpenAI-compatible API: use it with api: openai, or write "
            f"https://{_GEMINI_HOST}/v1beta for api: gemini",
            is_error=True,
        )
    cut = base_path.find("/models")
    if cut >= 0:
        expected = url[: len(url) - len(base_path) + cut]
        return BaseUrlAdvice(f"{calls}; write it without {base_path[cut:]}: {expected}", is_error=True)
    if not _VERSION_SEGMENT.search(base_path):
        return BaseUrlAdvice(
            f"{calls}; Google's API expects a version there: https://{_GEMINI_HOST}/v1beta", is_error=False
        )
    return None
