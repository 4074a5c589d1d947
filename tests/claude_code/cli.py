"""Run the real Claude Code CLI (npm ``@anthropic-ai/claude-code``, pinned in package.json beside this
file) in print mode against a base URL, offline and isolated.

Every run gets a fresh HOME (no login, no settings, no history from the developer's machine), a
project directory with the agents a scenario needs, and only the environment listed here: the
CLI must not reach Anthropic (nonessential traffic and the auto-updater off) and must not see the
developer's keys. Install it with ``npm install --prefix tests/claude_code`` (``.ci/run`` does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PINNED_VERSION = json.loads((HERE / "package.json").read_text())["dependencies"]["@anthropic-ai/claude-code"]
# The key Claude Code sends: the gateway must never forward it to a provider.
CLIENT_KEY = "sk-ant-client-key-never-forwarded"
# Subagent definitions a scenario's project may use (`.claude/agents/<name>.md`).
AGENTS = {
    "quick": "---\nname: quick\ndescription: Quick lookups on the small fast model.\nmodel: haiku\n---\n"
    "You answer quick questions in one line.\n",
}


def subagent_definition(name: str, target: str) -> str:
    """An agent whose prompt starts with CCR's routing tag, as CCR users write them."""
    return (
        f"---\nname: {name}\ndescription: Reviews things when asked to review.\ntools: Bash\n---\n"
        f"<CCR-SUBAGENT-MODEL>{target}</CCR-SUBAGENT-MODEL>\nYou are a careful reviewer. Answer briefly.\n"
    )


def find_binary() -> Path | None:
    """The native CLI installed under node_modules, or ``CCR_CLAUDE_CODE_BIN``; None if absent."""
    configured = os.environ.get("CCR_CLAUDE_CODE_BIN")
    if configured:
        return Path(configured)
    modules = HERE / "node_modules"
    # The wrapper's postinstall copies the platform binary over bin/claude.exe; when npm skipped
    # install scripts the platform package's own binary is still there.
    candidates = [modules / "@anthropic-ai" / "claude-code" / "bin" / "claude.exe"]
    candidates += sorted((modules / "@anthropic-ai").glob("claude-code-linux-*/claude"))
    for candidate in candidates:
        if candidate.is_file() and candidate.stat().st_size > 1_000_000:  # not the placeholder stub
            return candidate
    return None


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        """The ``--output-format json`` result object."""
        return json.loads(self.stdout)


@dataclass
class ClaudeCode:
    binary: Path
    workdir: Path  # HOME and project directories are made under it

    def version(self) -> str:
        out = subprocess.run([str(self.binary), "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.split()[0] if out.stdout else ""

    def run(
        self,
        prompt: str,
        base_url: str,
        *,
        args: tuple[str, ...] = ("--output-format", "json"),
        agents: dict[str, str] | None = None,
        settings: dict | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        mcp_servers: tuple[tuple[str, str, tuple[str, ...]], ...] = (),
    ) -> Run:
        """``claude -p PROMPT`` in a fresh HOME and project; the process's exit code is not checked.
        ``mcp_servers``: (name, URL, headers) added first with ``claude mcp add --transport http``
        (user scope, so the -p run trusts them without asking)."""
        home = _fresh(self.workdir / "home")
        project = _fresh(self.workdir / "project")
        if agents:
            folder = project / ".claude" / "agents"
            folder.mkdir(parents=True)
            for name, text in agents.items():
                (folder / f"{name}.md").write_text(text)
        if settings:
            (project / ".claude").mkdir(exist_ok=True)
            (project / ".claude" / "settings.json").write_text(json.dumps(settings))
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": CLIENT_KEY,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            **(env or {}),
        }
        for name, url, headers in mcp_servers:
            add = [str(self.binary), "mcp", "add", "--transport", "http", "--scope", "user", name, url]
            add += [part for header in headers for part in ("--header", header)]
            subprocess.run(add, cwd=project, env=environment, capture_output=True, text=True, timeout=60, check=True)
        command = [str(self.binary), "-p", prompt, *args]
        done = subprocess.run(
            command, cwd=project, env=environment, capture_output=True, text=True, timeout=timeout, check=False
        )
        return Run(done.returncode, done.stdout, done.stderr)


def installed_or_skip(home: Path) -> ClaudeCode:
    """The installed CLI with ``home`` as its home, for a test module's fixture; without it the
    test is skipped, or fails under CI (which installs it: a CI run must not skip it silently)."""
    import pytest  # only the tests that run the CLI need it

    binary = find_binary()
    if binary is None:
        message = "Claude Code CLI not installed: npm install --prefix tests/claude_code"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return ClaudeCode(binary, home)


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def tool_prompt(tool: str, arguments: dict) -> str:
    """A prompt that makes the fake model call ``tool`` (fake_provider.reply.TOOL_DIRECTIVE)."""
    return f"[fake-tool {tool} {json.dumps(arguments)}]"
