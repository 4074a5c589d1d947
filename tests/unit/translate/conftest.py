"""Options and fixtures for the Anthropic <-> OpenAI translator tests.

Rewrite golden expectations after an intended change (then review the diff):
    pytest tests/unit/translate --update-golden
The option is registered here, so pass it with this directory (or a file in it) on the command line.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the expected files of tests/golden/anthropic_openai and tests/golden/openai_anthropic",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden", default=False))
