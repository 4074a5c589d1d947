"""One fake provider and one gateway (real Envoy) shared by the end-to-end tests of a session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import log_secrets
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the last e2e test, every log under the session's temporary directory is scanned
    (tests/e2e/log_secrets.py); a secret found fails the run as an error at the last test's teardown.
    Autouse and session-scoped, it is set up before every other session fixture of the e2e tests and
    so torn down after them all: the gateways have stopped and written their last lines. Whatever
    tests are selected, however ordered, the scan covers the logs of the gateways they started."""
    yield
    root = tmp_path_factory.getbasetemp()
    report = log_secrets.scan(log_secrets.log_files(root), log_secrets.known_secrets(), log_secrets.load_schema())
    print(f"\nlog secret scan of {root}: {report.summary()}")
    assert not report.findings, "secrets or off-schema lines in the e2e logs:\n" + "\n".join(
        str(finding) for finding in report.findings[:50]
    )


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def fake(workdir: Path) -> Iterator[FakeProvider]:
    provider = FakeProvider.start(workdir)
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def gateway(workdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    gw = Gateway.start(workdir, base_policy(free_port(), fake))
    yield gw
    gw.stop()
    assert gw.process.returncode == 0, f"ccr-gateway did not shut down cleanly:\n{gw.log()[-4000:]}"


@pytest.fixture(autouse=True)
def _clean_fake(request: pytest.FixtureRequest) -> None:
    if "fake" in request.fixturenames:
        provider: FakeProvider = request.getfixturevalue("fake")
        provider.clear()
        provider.configure(reset=True)
