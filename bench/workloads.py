"""What the benchmark sends: deterministic request bodies and the benchmark cases.

Bodies are generated, not stored: the same seed and size always give the same bytes, so two runs
(and the gateway and the plain-Envoy baseline within one run) send exactly the same request. The
40 KB body is shaped like a Claude Code request: two system blocks (the big one cached), 16 tools
with JSON schemas, and a tool_use/tool_result history ending in tool results, which is what an
agent loop sends on most turns. The 2 KB and 400 KB bodies are the same shape, smaller and larger.

The conversation deliberately ends with two tool results of a few hundred characters: the fake
provider answers with "Tool result: ..." quoting up to 200 characters of each, so its reply text
is long enough to be cut into 200 stream chunks (it never cuts a text into more pieces than it has
characters).

Non-streaming cases go to the bench's upstream Envoy (canned answers, see ``bench.baseline``) and
streams to the fake provider: a case's model name picks the upstream on the gateway side (the
generated policy has a provider pair for each), the ``x-bench-upstream`` header on the plain side.

Cached cases (``Case.pool``) send a pool of distinct deterministic requests (temperature 0, one
seed each), drawn in turn, to a model the generated policy caches: each is a miss the first time a
worker sees it and a hit after that. They are passthrough-shaped (an Anthropic client, an
anthropic-format provider), so that plain Envoy is sent the very bytes the gateway is, and the
answer the gateway replays from its cache is the one plain Envoy relays from the same upstream.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from bench.baseline import UPSTREAM_HEADER, UPSTREAM_HEADER_DIRECT
from extproc.translate.base import Api, Target
from extproc.translate.client_request import parse_request
from extproc.translate.registry import translator_for

KB = 1024
SIZES = {"2k": 2 * KB, "40k": 40 * KB, "400k": 400 * KB}

# Served by the fake provider (streams), in its anthropic format (passthrough) and its openai
# format (Anthropic -> OpenAI translation).
ANTHROPIC_MODEL = "bench-anthropic"
OPENAI_MODEL = "bench-openai"
# The same two formats served by the upstream Envoy's canned answers (non-streaming cases).
ANTHROPIC_DIRECT_MODEL = "bench-anthropic-direct"
OPENAI_DIRECT_MODEL = "bench-openai-direct"
# Models the generated policy caches (cache: {when: deterministic}), one on each upstream; no other
# case uses them, so the other cases never pay for a cache key.
ANTHROPIC_CACHED_MODEL = "bench-anthropic-cached"
ANTHROPIC_DIRECT_CACHED_MODEL = "bench-anthropic-direct-cached"
CACHED_MODELS = (ANTHROPIC_CACHED_MODEL, ANTHROPIC_DIRECT_CACHED_MODEL)
MAX_OUTPUT_TOKENS = 16384  # the policy's limit for both models; Claude Code asks for 32000

SEED = 20250101

_VOCABULARY = (
    "the function returns a list of items when called with the given arguments and raises an error "
    "if the path does not exist use the tool to read files before editing them keep changes minimal "
    "prefer editing existing files never commit unless asked run the tests after every change check "
    "types imports config module class method handler request response stream buffer cache token"
)
_WORDS = tuple(_VOCABULARY.split())
_CODE = (
    "def handle(request):",
    "    body = orjson.loads(request.body)",
    "    if not isinstance(body, dict):",
    "        raise ValueError('request body must be a JSON object')",
    "    return Response(status=200, body=orjson.dumps(result))",
    "class Router:",
    "    def __init__(self, table: dict[str, Route]) -> None:",
    "        self.table = table",
    "for index, item in enumerate(items):",
    "    total += item.size  # bytes, not characters",
    "import asyncio",
    "from dataclasses import dataclass, field",
    "    await asyncio.sleep(0.05)",
    "logger.info('routed %s to %s', model, provider)",
    "",
)

# Claude Code's own tool names (the 16 a session typically carries).
_TOOLS = (
    "Task",
    "Bash",
    "Glob",
    "Grep",
    "LS",
    "ExitPlanMode",
    "Read",
    "Edit",
    "MultiEdit",
    "Write",
    "NotebookEdit",
    "WebFetch",
    "TodoWrite",
    "BashOutput",
    "KillShell",
    "SlashCommand",
)


def _prose(rng: random.Random, size: int) -> str:
    """At most ``size`` characters of words (one fewer when the last word ends exactly at ``size``:
    kept so, as the bodies of every run stay the same bytes)."""
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def _file_listing(rng: random.Random, size: int) -> str:
    """Read-tool output: numbered source lines, with Claude Code's arrow separator (non-ASCII)."""
    lines: list[str] = []
    length = 0
    number = 1
    while length < size:
        line = f"{number:6}\u2192{rng.choice(_CODE)}"
        lines.append(line)
        length += len(line.encode()) + 1
        number += 1
    return "\n".join(lines)


def _tool(rng: random.Random, name: str, description_bytes: int) -> dict[str, Any]:
    if description_bytes < 200:  # a small request's one tool
        schema = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
        return {"name": name, "description": _prose(rng, description_bytes), "input_schema": schema}
    return {
        "name": name,
        "description": _prose(rng, description_bytes),
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "The absolute path to operate on"},
                "pattern": {"type": "string", "description": _prose(rng, 60)},
                "limit": {"type": "number", "description": "The number of lines to read"},
                "recursive": {"type": "boolean"},
                "mode": {"type": "string", "enum": ["content", "files_with_matches", "count"]},
            },
            "required": ["path"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    }


def _size(body: dict[str, Any]) -> int:
    return len(encode(body))


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def claude_code_body(
    size: int, *, seed: int = SEED, model: str = ANTHROPIC_MODEL, stream: bool = False, temperature: int = 1
) -> bytes:
    """An Anthropic Messages request of exactly ``size`` bytes (without ``stream``; a streamed
    request is the same body plus ``"stream":true``). Claude Code samples at temperature 1; 0 makes
    the request deterministic, which is what the response cache caches by default."""
    rng = random.Random(seed)
    big = size >= 16 * KB
    system_bytes = 10 * KB if big else size // 16
    tool_count, description_bytes = (len(_TOOLS), 700) if big else (1, 100)
    session = "0b5f3c1e-7a52-4c1e-9a57-5d2e0c7f9b11"
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 32000,
        "system": [
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": _prose(rng, system_bytes), "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [_tool(rng, name, description_bytes) for name in _TOOLS[:tool_count]],
        "metadata": {"user_id": json.dumps({"device_id": "bench", "session_id": session})},
        "temperature": temperature,
        "messages": [{"role": "user", "content": [{"type": "text", "text": _prose(rng, 200 if big else 80)}]}],
    }
    messages: list[dict[str, Any]] = body["messages"]
    # The closing turn: two parallel tool calls and their results (see the module docstring).
    closing_calls = [
        {"type": "tool_use", "id": f"toolu_bench_final_{i}", "name": name, "input": {"path": f"/src/app/{name}.py"}}
        for i, name in enumerate(("Read", "Grep"))
    ]
    closing_results = [
        {"type": "tool_result", "tool_use_id": call["id"], "content": _file_listing(rng, 220)} for call in closing_calls
    ]
    closing = [
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look at both files."}, *closing_calls]},
        {"role": "user", "content": closing_results},
    ]
    # History: tool_use/tool_result turns sharing what is left of the budget.
    rest = size - _size({**body, "messages": messages + closing})
    turns = max(0, min(48, rest // (3 * KB)))
    for turn in range(turns):
        name = _TOOLS[(turn * 5 + 6) % tool_count] if big else _TOOLS[0]
        call_id = f"toolu_bench_{turn:03d}"
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": _prose(rng, 120)},
                    {"type": "tool_use", "id": call_id, "name": name, "input": {"path": f"/src/app/m{turn}.py"}},
                ],
            }
        )
        share = max(0, (rest - 700 * turns) // turns)  # 700: the JSON around it, newlines escaped
        result = {"type": "tool_result", "tool_use_id": call_id, "content": _file_listing(rng, share)}
        messages.append({"role": "user", "content": [result]})
    messages.extend(closing)
    # Pad (ASCII, so one character is one byte) to the exact size.
    pad_target = messages[-3]["content"][0] if turns else messages[0]["content"][0]
    key = "content" if pad_target["type"] == "tool_result" else "text"
    missing = size - _size(body)
    if missing < 0:  # the shares above leave room for the JSON around them; a size too small for the shape
        raise ValueError(f"a Claude Code-shaped body needs more than {size} bytes")
    pad = _prose(rng, missing)
    pad_target[key] += pad + " " * (missing - len(pad))  # _prose may be one short
    if stream:
        body["stream"] = True
    return encode(body)


def client_body_for(api: Api, anthropic_body: bytes, model: str) -> bytes:
    """``anthropic_body`` as a ``api`` client would send it (Chat Completions or Responses), made by
    the gateway's own translators (Anthropic -> that format): the same conversation, tools and size
    class, so the client APIs' cases compare like with like."""
    if api is Api.ANTHROPIC:
        return anthropic_body
    return _translated(Api.ANTHROPIC, api, anthropic_body, model)


def anthropic_upstream_body(api: Api, client_body: bytes, model: str) -> bytes:
    """The Anthropic Messages request the gateway sends upstream for ``client_body`` (an ``api``
    client's) to ``model``: the plain-Envoy baseline sends exactly this."""
    return _translated(api, Api.ANTHROPIC, client_body, model)


def _translated(client: Api, provider: Api, body: bytes, model: str) -> bytes:
    parsed = json.loads(body)
    translator = translator_for(client, provider)
    if translator is None:
        raise RuntimeError(f"no {client} -> {provider} translator registered")
    base_path = "/v1" if provider in (Api.OPENAI, Api.RESPONSES) else ""
    target = Target(
        model=model, base_path=base_path, stream=bool(parsed.get("stream")), max_output_tokens=MAX_OUTPUT_TOKENS
    )
    return translator.request(parse_request(client, parsed), target).body


def openai_body(anthropic_body: bytes, model: str = OPENAI_MODEL) -> bytes:
    """The OpenAI Chat Completions request the gateway sends upstream for ``anthropic_body`` to
    ``model``, produced by the gateway's own translator: the plain-Envoy baseline sends exactly this."""
    body = json.loads(anthropic_body)
    translator = translator_for(Api.ANTHROPIC, Api.OPENAI)
    if translator is None:
        raise RuntimeError("no Anthropic -> OpenAI translator registered")
    target = Target(
        model=model,
        base_path="/v1",
        stream=bool(body.get("stream")),
        max_output_tokens=MAX_OUTPUT_TOKENS,
    )
    return translator.request(parse_request(translator.client_api, body), target).body


@dataclass(frozen=True, slots=True)
class Case:
    """One benchmark case: a body size, passthrough or translated, buffered or streamed."""

    name: str
    description: str
    size: str  # a key of SIZES
    translated: bool  # Anthropic client -> OpenAI provider; else Anthropic -> Anthropic passthrough
    stream: bool = False
    chunks: int = 0  # text pieces the fake provider streams (x-fake-chunks)
    chunk_gap_ms: float = 0.0  # gap between streamed events; 0 = the whole stream in one write
    # Distinct deterministic requests sent in turn to a cached model; 0: one request, not cached.
    pool: int = 0
    # The client's API for the cases that compare client APIs (an Anthropic-format provider, the
    # upstream Envoy's canned answer): Chat Completions or Responses; Anthropic for the others.
    client_api: Api = Api.ANTHROPIC

    @property
    def from_other_client(self) -> bool:
        return self.client_api is not Api.ANTHROPIC

    @property
    def cached(self) -> bool:
        return self.pool > 0

    @property
    def body_bytes(self) -> int:
        return SIZES[self.size]

    @property
    def direct(self) -> bool:
        """Answered by the upstream Envoy (canned answer); streams need the fake provider's chunks."""
        return not self.stream

    @property
    def model(self) -> str:
        """The model the client asks for; the provider serving it has the same model id upstream."""
        if self.cached:
            return ANTHROPIC_DIRECT_CACHED_MODEL if self.direct else ANTHROPIC_CACHED_MODEL
        if self.from_other_client:
            return ANTHROPIC_DIRECT_MODEL if self.direct else ANTHROPIC_MODEL
        if self.translated:
            return OPENAI_DIRECT_MODEL if self.direct else OPENAI_MODEL
        return ANTHROPIC_DIRECT_MODEL if self.direct else ANTHROPIC_MODEL

    def client_bodies(self) -> list[bytes]:
        """The requests the load sends in turn: one, or a cached case's pool (seeds SEED, SEED + 1, ...)."""
        if self.from_other_client:
            body = claude_code_body(SIZES[self.size], model=self.model, stream=self.stream)
            return [client_body_for(self.client_api, body, self.model)]
        if not self.cached:
            return [claude_code_body(SIZES[self.size], model=self.model, stream=self.stream)]
        return [
            claude_code_body(SIZES[self.size], seed=SEED + i, model=self.model, stream=self.stream, temperature=0)
            for i in range(self.pool)
        ]

    def baseline_bodies(self) -> list[bytes]:
        """What plain Envoy forwards: the bodies the gateway would send upstream, in the same order."""
        bodies = self.client_bodies()
        if self.from_other_client:
            return [anthropic_upstream_body(self.client_api, body, self.model) for body in bodies]
        return [openai_body(body, self.model) for body in bodies] if self.translated else bodies

    def client_body(self) -> bytes:
        return self.client_bodies()[0]

    def baseline_body(self) -> bytes:
        return self.baseline_bodies()[0]

    def client_path(self) -> str:
        return _CLIENT_PATHS[self.client_api]

    def baseline_path(self) -> str:
        return "/v1/chat/completions" if self.translated and not self.from_other_client else "/v1/messages"

    def fake_headers(self) -> dict[str, str]:
        if not self.stream:
            return {}
        return {"x-fake-chunks": str(self.chunks), "x-fake-chunk-delay-ms": f"{self.chunk_gap_ms:g}"}

    def client_headers(self) -> dict[str, str]:
        if self.from_other_client:  # an OpenAI SDK's headers (the key in x-api-key: the bench's targets read it there)
            return {"content-type": "application/json", "x-api-key": "sk-bench-client-key"}
        return {
            "content-type": "application/json",
            "anthropic-version": "2023-06-01",
            "x-api-key": "sk-ant-bench-client-key",
            **self.fake_headers(),
        }

    def baseline_headers(self) -> dict[str, str]:
        """The client's headers (passthrough) or the provider's (translated), plus plain Envoy's
        upstream choice."""
        if self.from_other_client:  # what the gateway sends an Anthropic-format provider
            headers = {
                "content-type": "application/json",
                "anthropic-version": "2023-06-01",
                "x-api-key": "sk-ant-bench-provider-key",
            }
        elif self.translated:
            headers = {
                "content-type": "application/json",
                "authorization": "Bearer sk-bench-provider-key",
                **self.fake_headers(),
            }
        else:
            headers = self.client_headers()
        if self.direct:
            headers[UPSTREAM_HEADER] = UPSTREAM_HEADER_DIRECT
        return headers


CACHE_POOL = 16  # distinct requests of a cached case: 16 misses per worker, then hits only
CASES: tuple[Case, ...] = (
    Case("passthrough-40k", "Anthropic -> Anthropic provider, 40 KB, non-streaming", "40k", translated=False),
    Case(
        "passthrough-stream-40k",
        "Anthropic -> Anthropic provider, 40 KB, stream of 60 chunks sent at once",
        "40k",
        translated=False,
        stream=True,
        chunks=60,
    ),
    Case("translated-2k", "Anthropic -> OpenAI provider, 2 KB, non-streaming", "2k", translated=True),
    Case("translated-40k", "Anthropic -> OpenAI provider, 40 KB (Claude Code-shaped), non-streaming", "40k", True),
    Case("translated-400k", "Anthropic -> OpenAI provider, 400 KB, non-streaming", "400k", translated=True),
    Case(
        "translated-stream-40k",
        "Anthropic -> OpenAI provider, 40 KB, stream of 60 chunks sent at once",
        "40k",
        translated=True,
        stream=True,
        chunks=60,
    ),
    Case(
        "translated-paced-stream-40k",
        "Anthropic -> OpenAI provider, 40 KB, stream of 200 chunks sent one by one, 5 ms apart",
        "40k",
        translated=True,
        stream=True,
        chunks=200,
        chunk_gap_ms=5.0,
    ),
    Case(
        "cached-40k",
        f"Anthropic -> Anthropic provider, 40 KB, non-streaming, {CACHE_POOL} deterministic requests repeated: "
        "answered from the response cache",
        "40k",
        translated=False,
        pool=CACHE_POOL,
    ),
    Case(
        "cached-2k",
        f"Anthropic -> Anthropic provider, 2 KB, non-streaming, {CACHE_POOL} deterministic requests repeated: "
        "answered from the response cache",
        "2k",
        translated=False,
        pool=CACHE_POOL,
    ),
    Case(
        "cached-stream-40k",
        f"Anthropic -> Anthropic provider, 40 KB, stream of 60 chunks, {CACHE_POOL} deterministic requests "
        "repeated: replayed from the response cache",
        "40k",
        translated=False,
        stream=True,
        chunks=60,
        pool=CACHE_POOL,
    ),
    # Issue 24's comparison: the same 40 KB conversation from a Chat Completions client and from a
    # Responses client (as Codex sends it), both translated to an Anthropic-format provider.
    Case(
        "chat-to-anthropic-40k",
        "OpenAI Chat -> Anthropic provider, 40 KB (the Claude Code-shaped conversation), non-streaming",
        "40k",
        translated=True,
        client_api=Api.OPENAI,
    ),
    Case(
        "responses-to-anthropic-40k",
        "OpenAI Responses -> Anthropic provider, 40 KB (the same conversation), non-streaming",
        "40k",
        translated=True,
        client_api=Api.RESPONSES,
    ),
)
CASES_BY_NAME = {case.name: case for case in CASES}
_CLIENT_PATHS = {Api.ANTHROPIC: "/v1/messages", Api.OPENAI: "/v1/chat/completions", Api.RESPONSES: "/v1/responses"}
QUICK_CASES = ("translated-40k", "translated-stream-40k", "cached-40k")
# The budget's reference cases.
MAIN_CASE = "translated-40k"
STREAM_CASE = "translated-stream-40k"
PACED_STREAM_CASE = "translated-paced-stream-40k"
PASSTHROUGH_CASE = "passthrough-40k"
PASSTHROUGH_STREAM_CASE = "passthrough-stream-40k"
CACHED_CASE = "cached-40k"  # the response cache's goals (bench.report.cache_goals)
