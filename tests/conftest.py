"""Options every test directory shares.

Rewrite golden expectations after an intended change, then review the diff:
    python -m pytest tests/unit --update-golden
(translator goldens under tests/golden/<client>_<provider>/ and the Claude Code corpus goldens
under tests/golden/claude_code/).
"""

from __future__ import annotations

import os
import tempfile

import pytest

# Every gateway a test starts keeps its local usage ledger (ledger.local: $XDG_DATA_HOME) here, not
# in the home directory of whoever runs the tests.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="ccr-tests-data-")
# Gateways run side by side here: none serves the Admin API on its fixed default port unless the
# test asks for one (`up --admin-api 127.0.0.1:PORT`: tests/browser, tests/e2e/test_admin_*).
os.environ["CCR_ADMIN_API"] = "off"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the expected files of the golden translator cases (tests/golden/)",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))
