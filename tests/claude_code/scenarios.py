"""What the tests ask Claude Code to do, shared by the end-to-end tests and the corpus capture.

The fake model follows ``[fake-tool NAME {json}]`` directives in the prompt, so each scenario makes
the real CLI walk one path of its agent loop: answer, run a tool, hand work to a subagent, ask the
small fast model, load a deferred tool, or evaluate a prompt hook (structured output).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.claude_code.cli import AGENTS, subagent_definition, tool_prompt

TOOL_MARKER = "ccr-tool-ok-42"  # what the Bash command prints: `echo ccr-tool-ok-$((6*7))`
SUBAGENT_PROMPT = "Review the number 42"
QUICK_PROMPT = "What is six times seven"


@dataclass(frozen=True)
class Scenario:
    name: str
    prompt: str
    args: tuple[str, ...] = ()
    agents: dict[str, str] = field(default_factory=dict)
    settings: dict | None = None


def text() -> Scenario:
    return Scenario("text", "Say hello to the gateway")


def tool_loop() -> Scenario:
    # The shell computes the marker, so the final answer can only quote it if Bash really ran.
    command = {"command": "echo ccr-tool-ok-$((6*7))", "description": "Print the test marker"}
    return Scenario("tool_loop", "Run the marker command: " + tool_prompt("Bash", command))


def subagent(target: str) -> Scenario:
    """The main model delegates to the ``reviewer`` agent, whose prompt carries CCR's tag for ``target``."""
    call = {"subagent_type": "reviewer", "description": "Review", "prompt": SUBAGENT_PROMPT, "run_in_background": False}
    return Scenario(
        "subagent",
        "Delegate: " + tool_prompt("Agent", call),
        agents={"reviewer": subagent_definition("reviewer", target)},
    )


def background() -> Scenario:
    """A subagent on ``model: haiku``: Claude Code's own haiku-class requests."""
    call = {"subagent_type": "quick", "description": "Quick", "prompt": QUICK_PROMPT, "run_in_background": False}
    return Scenario("background", "Ask quickly: " + tool_prompt("Agent", call), agents=dict(AGENTS))


def model_override(model: str) -> Scenario:
    return Scenario("model_override", "Which model are you", args=("--model", model))


def tool_search() -> Scenario:
    """ToolSearch loads a deferred tool: the next request carries a ``tool_reference`` block."""
    return Scenario(
        "tool_search",
        "Load the fetch tool: " + tool_prompt("ToolSearch", {"query": "select:WebFetch", "max_results": 5}),
    )


def prompt_hook() -> Scenario:
    """A Stop hook of type "prompt": Claude Code asks the model for JSON (``output_config.format``)."""
    hook = {"type": "prompt", "prompt": "Did the assistant greet the user? $ARGUMENTS"}
    return Scenario("prompt_hook", "Say hello", settings={"hooks": {"Stop": [{"hooks": [hook]}]}})


def corpus() -> list[Scenario]:
    """Every shape the corpus captures, against an Anthropic-format upstream."""
    return [
        text(),
        tool_loop(),
        subagent("fake-openai,gpt-4o"),
        background(),
        model_override("claude-sonnet-4-5"),
        tool_search(),
        prompt_hook(),
    ]
