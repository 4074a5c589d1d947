"""Real-browser tests of the web console (control_plane/admin/console/): Debian's Chromium driven by
Playwright for Python, against the real thing: `ccr-gateway up --admin-api` (control plane, Admin
API, ext_proc, Envoy) and the fake provider, with virtual keys required (a SQLite key store).

Skipped, with the reason, when /usr/bin/chromium (Debian: `apt-get install chromium`) or the
playwright package is missing; no browser is ever downloaded (Playwright launches the system's).
Screenshots of every page go to $CCR_TEST_ARTIFACTS/screenshots (else a temporary directory); the
run's summary prints where."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http, wait_until

CHROMIUM = Path(os.environ.get("CCR_CHROMIUM", "/usr/bin/chromium"))
ADMIN_KEY = re.compile(r"sk-ccr-adm-[a-z2-7]{8}_[A-Za-z0-9_\-]+")
SCREENSHOTS: list[Path] = []


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright; no browser download needed)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _missing()
    for item in items:
        if "tests/browser/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SCREENSHOTS:
        where = sorted({str(path.parent) for path in SCREENSHOTS})
        terminalreporter.write_line(f"console screenshots ({len(SCREENSHOTS)}): {', '.join(where)}")


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("CCR_TEST_ARTIFACTS")
    directory = Path(root) / "screenshots" if root else tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots in {directory}")
    return directory


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped, not session: Playwright's sync API keeps an asyncio loop running in the main
    thread while it is open, and every later test that calls asyncio.run (most fixtures of the
    rest of the suite) would fail with "cannot be called from a running event loop"."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


class Stack:
    """The fake provider, a gateway requiring virtual keys (SQLite) with its Admin API, and the
    CLI that makes admin keys."""

    def __init__(self, gateway: Gateway, admin_api: str, keys_db: Path) -> None:
        self.gateway, self.admin_api, self.keys_db = gateway, admin_api, keys_db
        self.secrets: list[str] = []  # every admin and virtual key the tests saw: none may be logged

    def admin_key(self, role: str, name: str, tenant: str | None = None) -> str:
        """A new admin key from `ccr-gateway admin keys create` (printed once)."""
        command = [sys.executable, "-m", "ccr_gateway", "admin", "keys", "create", "--role", role, "--name", name]
        if tenant:
            command += ["--tenant", tenant]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"admin keys create failed:\n{done.stdout}\n{done.stderr}"
        found = ADMIN_KEY.search(done.stdout)
        assert found, "no admin key in the output of admin keys create"
        self.secrets.append(found[0])
        return found[0]

    def api(self, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
        """The Admin API with a bearer admin key (test set-up, not the console)."""
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        status, _, raw = http(method, f"{self.admin_api}/admin/v1{path}", data, headers)
        return status, (json.loads(raw) if raw else None)


def _admin_api_available() -> str | None:
    up = subprocess.run(
        [sys.executable, "-m", "ccr_gateway", "up", "--help"], capture_output=True, text=True, timeout=60
    )
    if "--admin-api" not in up.stdout:
        return "`ccr-gateway up` has no --admin-api yet (the Admin API backend is not built)"
    admin = subprocess.run(
        [sys.executable, "-m", "ccr_gateway", "admin", "--help"], capture_output=True, text=True, timeout=60
    )
    if admin.returncode != 0:
        return "`ccr-gateway admin` (admin keys) is not there yet"
    return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = _admin_api_available()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("console")
    fake = FakeProvider.start(directory)
    gateway = None
    try:
        policy = base_policy(free_port(), fake)
        # Priced, so that requests show up as spend (the fake provider's usage x these prices).
        policy["providers"][0]["models"][0]["pricing"] = {"input": 3.0, "output": 15.0}
        keys_db = directory / "keys.db"
        policy["auth"] = {"required": True, "keys": {"sqlite": str(keys_db)}}
        admin_port = free_port()
        gateway = Gateway.start(
            directory, policy, name="console-gateway", workers=1, args=["--admin-api", f"127.0.0.1:{admin_port}"]
        )
        admin_api = f"http://127.0.0.1:{admin_port}"
        wait_until(lambda: http("GET", f"{admin_api}/console/", timeout=1)[0] == 200, 30, "the Admin API")
        made = Stack(gateway, admin_api, keys_db)
        yield made
    finally:
        if gateway is not None:
            gateway.stop()
        fake.stop()
    logged = [
        f"{log.name}: a key ending {secret[-6:]}"
        for log in directory.glob("*.log")
        for secret in made.secrets
        if secret in log.read_text(errors="replace")
    ]
    assert not logged, f"secrets in the gateway's logs: {logged}"


@pytest.fixture
def new_page(browser: Any, screenshots: Path) -> Iterator[Any]:
    """new_page() -> a Console on a fresh browser context (own cookies) at 1280x800. At teardown,
    no page may have had a script error or a Content-Security-Policy violation."""
    from tests.browser.console import Console

    made: list[Console] = []

    def make() -> Console:
        context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US", timezone_id="UTC")
        context.set_default_timeout(10_000)
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        console = Console(context.new_page(), screenshots, SCREENSHOTS)
        made.append(console)
        return console

    yield make
    problems = [problem for console in made for problem in console.problems]
    for console in made:
        console.page.context.close()
    assert not problems, "script errors or CSP violations in the console:\n" + "\n".join(problems)
