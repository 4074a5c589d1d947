"""Capture what the real Codex CLI sends, as golden fixtures for the Responses API translators.

    python -m tests.codex.capture             # writes tests/fixtures/codex/<scenario>/<n>.json

Runs every scenario (tests.codex.scenarios) with ``codex exec`` pointed at a tiny capture server
in this process instead of a gateway. The server records every request (method, path, headers
without credentials, JSON body) and answers ``POST .../responses`` the way the fake provider's
model would, as a streamed Responses API answer (tests.codex.answers):
- the last input item is a ``function_call_output``: a text "Tool result: <output>";
- the last user text holds a ``[fake-tool NAME {json}]`` directive naming an offered tool: a
  ``function_call`` of that tool (how the shell loop gets Codex to run a command);
- otherwise: a text greeting.
Each request is scrubbed (tests.codex.scrub) and written as ``<scenario>/<n>.json``, numbered in
order, holding the CLI version.

Re-capture after a version bump: set the version in tests/codex/package.json, run
``npm install --prefix tests/codex``, run this module, then
``pytest tests/unit/test_codex_fixtures.py`` and review the fixtures' diff (and docs/responses.md,
which summarises what Codex sends). A scenario whose run fails writes nothing and exits non-zero.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from pathlib import Path
from typing import Any

from fake_provider.reply import TOOL_DIRECTIVE
from tests.codex.answers import encode_sse, function_call_answer, text_answer
from tests.codex.cli import CLIENT_KEY, Codex, find_binary
from tests.codex.scenarios import corpus
from tests.codex.scrub import scrub

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "codex"
# Never recorded: credentials, and what only says how the bytes travelled.
DROPPED_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "cookie", "host", "content-length"})


class CaptureServer:
    """Records requests and answers them; runs in a thread of the calling process."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._ids = count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> CaptureServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self.close()

    def close(self) -> None:
        """Release the port (``__exit__`` does, after stopping the thread)."""
        self._server.server_close()

    def record(self, method: str, path: str, headers: dict[str, str], body: Any) -> None:
        kept = {k.lower(): v for k, v in headers.items() if k.lower() not in DROPPED_HEADERS}
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": kept, "body": body})

    def answer(self, body: dict[str, Any]) -> list[dict]:
        response_id = f"resp_capture_{next(self._ids)}"
        model = body.get("model", "")
        size = len(json.dumps(body))
        items = body.get("input") or []
        last = items[-1] if items else {}
        if last.get("type") == "function_call_output":
            output = last.get("output")
            text = output if isinstance(output, str) else json.dumps(output)
            return text_answer(response_id, model, "Tool result: " + text[:200], size // 4)
        prompt = _last_user_text(items)
        offered = _tool_names(body.get("tools") or [])
        for match in TOOL_DIRECTIVE.finditer(prompt):
            if match[1] in offered:
                return function_call_answer(response_id, model, match[1], json.loads(match[2]), size // 4)
        return text_answer(response_id, model, f"Hello from the capture server: {prompt[:40]}", size // 4)


def _handler(capture: CaptureServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            capture.record("GET", self.path, dict(self.headers), None)
            self._send(404, b'{"error": {"message": "not captured", "type": "not_found"}}', "application/json")

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            encoding = (self.headers.get("content-encoding") or "").lower()
            if encoding == "gzip":
                raw = gzip.decompress(raw)
            elif encoding:
                # Codex may compress (features.enable_request_compression: zstd) for its own backend;
                # a custom provider got plain JSON so far. Fail loudly if that changes.
                capture.record("POST", self.path, dict(self.headers), {"undecoded": encoding})
                self._send(415, b'{"error": {"message": "unsupported content-encoding"}}', "application/json")
                return
            body = json.loads(raw) if raw else None
            capture.record("POST", self.path, dict(self.headers), body)
            if not self.path.rstrip("/").endswith("/responses") or not isinstance(body, dict):
                self._send(404, b'{"error": {"message": "not captured", "type": "not_found"}}', "application/json")
                return
            self._send(200, encode_sse(capture.answer(body)), "text/event-stream")

        def _send(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: object) -> None:  # keep the capture's output to its summary
            pass

    return Handler


def _last_user_text(items: list[dict]) -> str:
    for item in reversed(items):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))
    return ""


def _tool_names(tools: list[dict]) -> set[str]:
    names = set()
    for tool in tools:
        if tool.get("name"):
            names.add(tool["name"])
        names |= _tool_names(tool.get("tools") or [])  # a "namespace" tool groups functions
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=FIXTURES, help="folder to write (default: %(default)s)")
    args = parser.parse_args(argv)
    binary = find_binary()
    if binary is None:
        print("Codex is not installed: npm install --prefix tests/codex", file=sys.stderr)
        return 2
    failed = 0
    with tempfile.TemporaryDirectory(prefix="ccr-codex-capture-") as tmp:
        cli = Codex(binary, Path(tmp))
        version = cli.version()
        for scenario in corpus():
            with CaptureServer() as server:
                run = cli.run(scenario.prompt, server.url, model=scenario.model)
            print(f"{scenario.name}: exit {run.returncode}, {len(server.requests)} request(s)", file=sys.stderr)
            if run.returncode != 0:
                print(run.failure(), file=sys.stderr)
                failed += 1
                continue
            folder = args.out / scenario.name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for number, request in enumerate(server.requests, 1):
                fixture = {"cli_version": version, "scenario": scenario.name, "request": number}
                fixture.update(scrub(request, project=str(cli.project), home=str(cli.home), secrets=(CLIENT_KEY,)))
                (folder / f"{number}.json").write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
