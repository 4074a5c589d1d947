"""One fake provider and one gateway (real Envoy) shared by the end-to-end tests of a session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


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
