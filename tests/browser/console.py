"""A page object for the console: sign in, go to a page, take its screenshot, and the checks every
page must pass (labelled controls, no script error, no Content-Security-Policy violation)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# Registered before any page script runs (Playwright injects it outside the page's CSP).
_WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"} (${event.sourceFile}:${event.lineNumber})`);
});
"""

# Every input, select and textarea has an accessible name from a <label>, aria-label or aria-labelledby.
_UNLABELLED = """
() => [...document.querySelectorAll("input, select, textarea")]
  .filter((el) => el.type !== "hidden" && el.getClientRects().length > 0)
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.getAttribute("aria-labelledby"))
  .map((el) => el.outerHTML.slice(0, 120))
"""

# Nothing styled inline: the CSP forbids it, so anything here would be an ignored (broken) style.
# (An empty style="" styles nothing: one appears on the textarea after Playwright fills it.)
_INLINE_STYLES = """
() => [...document.querySelectorAll("[style]")].filter((el) => el.getAttribute("style").trim() !== "").map((el) => `${el.tagName}#${el.id} style="${el.getAttribute("style")}"`)
"""


class Console:
    def __init__(self, page: Any, screenshots: Path, registry: list[Path]) -> None:
        self.page = page
        self.screenshots = screenshots
        self.registry = registry
        self.problems: list[str] = []
        page.add_init_script(_WATCH_CSP)
        page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        page.on(
            "console",
            lambda message: (
                self.problems.append(f"console: {message.text}")
                if message.type == "error" and "Content Security Policy" in message.text
                else None
            ),
        )
        self.base = ""

    def open(self, admin_api: str) -> Console:
        self.base = admin_api
        self.page.goto(f"{admin_api}/")
        self.page.get_by_label("Admin key").wait_for()
        assert self.page.url.endswith("/console/#/signin"), self.page.url
        return self

    def sign_in(self, key: str, expect_page: str = "Spend") -> Console:
        self.page.get_by_label("Admin key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        self.heading(expect_page).wait_for()
        return self

    def heading(self, name: str) -> Any:
        return self.page.get_by_role("heading", level=1, name=name)

    def go(self, route: str, heading: str) -> Console:
        """Through the navigation, as a user would (a same-document hash change: the CSRF token
        the console holds in memory survives)."""
        self.page.get_by_role("navigation", name="Main").get_by_role("link", name=heading).click()
        self.heading(heading).wait_for()
        assert self.page.url.endswith(f"#/{route}")
        return self

    def shot(self, name: str, mask: list[Any] | None = None) -> Path:
        path = self.screenshots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True, mask=mask or [])
        self.registry.append(path)
        return path

    def check(self) -> None:
        """The checks every page passes: labelled controls, no inline style, no CSP violation."""
        assert self.page.evaluate(_UNLABELLED) == [], "controls without a label"
        styled = self.page.evaluate(_INLINE_STYLES)
        assert styled == [], f"inline styles (refused by the CSP): {styled}"
        violations = self.page.evaluate("window.__cspViolations")
        self.problems.extend(f"CSP: {violation}" for violation in violations)
        assert violations == [], violations

    def text(self) -> str:
        return self.page.locator("body").inner_text()

    def toast(self, pattern: str) -> None:
        self.page.locator("#toast").get_by_text(re.compile(pattern)).wait_for()
