"""What the tests ask Codex to do, shared by the end-to-end tests and the fixture capture.

The fake model (and the capture server) follows ``[fake-tool NAME {json}]`` directives in the
prompt, so a scenario makes the real CLI walk one path of its agent loop: answer, or run a shell
command and answer with what it printed.

Which model name Codex is given changes what it sends. A name it has no metadata for (a gateway's
own model or alias: GATEWAY_MODEL) gets its fallback shape: ``reasoning: {"summary": "auto"}``,
function tools plus a ``namespace`` tool and ``web_search``. A name from its bundled catalog
(KNOWN_MODEL) gets that model's shape: ``reasoning.effort``, ``text.verbosity``, a freeform
``custom`` tool (apply_patch) and ``tool_search``. The corpus captures both.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.codex.cli import DEFAULT_MODEL, tool_prompt

# Served by no provider of the e2e policy: the tenant's default route decides where it goes.
GATEWAY_MODEL = DEFAULT_MODEL
KNOWN_MODEL = "gpt-5.5"  # in Codex 0.171's bundled model catalog
# The shell tool Codex 0.171 offers, with either model: a PTY command runner whose arguments are
# {"cmd": "...", ...}; its output comes back headed by "Chunk ID", "Wall time", "Process exited
# with code N", "Original token count", then "Output:" and what the command printed.
SHELL_TOOL = "exec_command"
TOOL_MARKER = "ccr-tool-ok-42"  # what the command prints: `echo ccr-tool-ok-$((6*7))`
TEXT_PROMPT = "Say hello to the gateway"


@dataclass(frozen=True)
class Scenario:
    name: str
    prompt: str
    model: str = GATEWAY_MODEL


def text(model: str = GATEWAY_MODEL) -> Scenario:
    return Scenario("text", TEXT_PROMPT, model)


def shell_loop(model: str = GATEWAY_MODEL) -> Scenario:
    # The shell computes the marker, so the final answer can only quote it if the command really ran.
    command = {"cmd": "echo ccr-tool-ok-$((6*7))"}
    return Scenario("shell_loop", "Run the marker command: " + tool_prompt(SHELL_TOOL, command), model)


def corpus() -> list[Scenario]:
    """Every shape the fixtures capture: a text turn and a shell loop, and the loop with a model
    Codex knows (tests/fixtures/codex/<name>/)."""
    known = shell_loop(KNOWN_MODEL)
    return [text(), shell_loop(), Scenario("known_model_shell_loop", known.prompt, known.model)]
