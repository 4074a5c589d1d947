"""Run the real OpenAI Codex CLI (npm ``@openai/codex``, pinned in package.json beside this file) as
``codex exec`` against a base URL, offline and isolated.

Every run gets a fresh HOME and CODEX_HOME (no login, no history, no config from the developer's
machine) holding one config.toml: a custom model provider ``gateway`` at ``<base_url>/v1`` speaking
the Responses API (``wire_api = "responses"``), its key read from ``CCR_GATEWAY_KEY``. Only the
environment listed here reaches the CLI. Nothing else may leave the machine:
- ``check_for_update_on_startup = false`` (the GitHub releases check), ``analytics.enabled = false``,
  ``feedback.enabled = false``, ``features.plugins = false`` (the plugin catalog sync from GitHub:
  without it Codex resolves github.com at every start, seen with strace);
- and in case a later version adds another call home, HTTP(S)_PROXY point at a closed local port
  with NO_PROXY for the loopback addresses: anything not sent to 127.0.0.1 fails at once.

Sandbox: ``--dangerously-bypass-approvals-and-sandbox`` unless a run asks for one (``sandbox=``).
``codex exec`` never stops to ask for approval; what decides whether a shell command runs is its
sandbox (seccomp + landlock on Linux), which needs kernel features a CI container may not give.
On this machine (kernel 6.18) ``-s read-only`` and ``-s workspace-write`` both run the tests'
``echo``; a container without them would fail the command instead, and the test with it. The
project is a fresh temporary directory and the commands are the tests' own, so running them
unsandboxed risks nothing and keeps the result independent of the host. (0.171 has no
``--full-auto``; ``-s danger-full-access`` alone would do as well, the bypass also says "never ask".)

Install it with ``npm install --prefix tests/codex`` (``.ci/run`` does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PINNED_VERSION = json.loads((HERE / "package.json").read_text())["dependencies"]["@openai/codex"]
# The key Codex sends (as "Authorization: Bearer ..."): the gateway must never forward it.
CLIENT_KEY = "sk-codex-client-key-never-forwarded"
KEY_ENV = "CCR_GATEWAY_KEY"
# A model name Codex knows nothing of: it uses its fallback model metadata (and says so once, as
# an "error" item in the --json output, then goes on). See tests.codex.scenarios.
DEFAULT_MODEL = "gateway-default"
# Where the proxy variables send whatever is not loopback: port 9 (discard), nothing listens there.
DEAD_PROXY = "http://127.0.0.1:9"
NO_SANDBOX = ("--dangerously-bypass-approvals-and-sandbox",)


def find_binary() -> Path | None:
    """The native CLI the npm package installed, or ``CCR_CODEX_BIN``; None if absent."""
    configured = os.environ.get("CCR_CODEX_BIN")
    if configured:
        return Path(configured)
    # @openai/codex's bin/codex.js only execs the platform package's native binary: run that directly.
    for candidate in sorted((HERE / "node_modules" / "@openai").glob("codex-linux-*/vendor/*/bin/codex")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    wrapper = HERE / "node_modules" / ".bin" / "codex"
    return wrapper if wrapper.exists() else None


def config_toml(base_url: str, model: str) -> str:
    """The whole config.toml of a run (TOML strings are JSON strings for these values)."""
    return f"""\
model = {json.dumps(model)}
model_provider = "gateway"
check_for_update_on_startup = false

[analytics]
enabled = false

[feedback]
enabled = false

[features]
plugins = false

[model_providers.gateway]
name = "ccr-gateway"
base_url = {json.dumps(base_url.rstrip("/") + "/v1")}
wire_api = "responses"
env_key = "{KEY_ENV}"
# One HTTP request per model turn: a gateway error reaches the test instead of a retry hiding it
# (Codex retries 5xx and dropped streams a few times by default, with backoff).
request_max_retries = 0
stream_max_retries = 0
"""


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        """The ``--json`` events (one JSON object per stdout line)."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def items(self, kind: str) -> list[dict[str, Any]]:
        """The completed items of one type: ``agent_message``, ``command_execution``, ``reasoning``, ..."""
        return [e["item"] for e in self.events() if e.get("type") == "item.completed" and e["item"]["type"] == kind]

    def final_text(self) -> str:
        """The last agent message: Codex's answer."""
        messages = self.items("agent_message")
        return messages[-1]["text"] if messages else ""

    def commands(self) -> list[dict[str, Any]]:
        """The shell commands Codex ran: ``command``, ``aggregated_output``, ``exit_code``, ``status``."""
        return self.items("command_execution")

    def usage(self) -> dict[str, Any] | None:
        """The token usage of the last completed turn."""
        turns = [e for e in self.events() if e.get("type") == "turn.completed"]
        return turns[-1].get("usage") if turns else None

    def failure(self) -> str:
        """Why the run failed, for assertion messages."""
        return f"codex exited {self.returncode}:\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}"


@dataclass
class Codex:
    binary: Path
    workdir: Path  # HOME and project directories are made under it

    @property
    def home(self) -> Path:
        return self.workdir / "home"

    @property
    def project(self) -> Path:
        return self.workdir / "project"

    def version(self) -> str:
        out = subprocess.run([str(self.binary), "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.split()[-1] if out.stdout else ""  # "codex-cli 0.171.0"

    def run(
        self,
        prompt: str,
        base_url: str,
        *,
        model: str = DEFAULT_MODEL,
        key: str = CLIENT_KEY,
        sandbox: str | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> Run:
        """``codex exec --json PROMPT`` in a fresh HOME and project; the exit code is not checked.
        ``sandbox``: a ``-s`` mode (read-only, workspace-write, danger-full-access); None: no sandbox."""
        home = _fresh(self.home)
        project = _fresh(self.project)
        codex_home = home / ".codex"
        codex_home.mkdir()
        (codex_home / "config.toml").write_text(config_toml(base_url, model))
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "CODEX_HOME": str(codex_home),
            "TZ": "UTC",  # the <environment_context> Codex sends names the time zone
            "LANG": "C.UTF-8",
            KEY_ENV: key,
            "HTTP_PROXY": DEAD_PROXY,
            "HTTPS_PROXY": DEAD_PROXY,
            "ALL_PROXY": DEAD_PROXY,
            "NO_PROXY": "127.0.0.1,localhost,::1",
            **(env or {}),
        }
        command = [
            str(self.binary),
            "exec",
            "--json",
            "--skip-git-repo-check",  # the project is a bare temporary directory
            "--strict-config",  # a key this version no longer knows is an error, not silently ignored
            "--color",
            "never",
            *(NO_SANDBOX if sandbox is None else ("-s", sandbox)),
            *args,
            prompt,
        ]
        try:
            done = subprocess.run(
                command,
                cwd=project,
                env=environment,
                stdin=subprocess.DEVNULL,  # else codex exec reads stdin for more prompt
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            # Codex waits for the network forever when it cannot connect ("Reconnecting... waiting
            # for network"): a run that hangs is a failed run, with what it printed so far.
            return Run(-1, _text(exc.stdout), _text(exc.stderr) + f"\n(killed after {timeout}s)")
        return Run(done.returncode, done.stdout, done.stderr)


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def tool_prompt(tool: str, arguments: dict) -> str:
    """A prompt that makes the fake model call ``tool`` (fake_provider.reply.TOOL_DIRECTIVE)."""
    return f"[fake-tool {tool} {json.dumps(arguments)}]"
