"""The web console in a real browser (issue 21's acceptance): sign in; create a key and read it
once; requests with it through the gateway's Envoy listener show in the spend chart within seconds;
revoked, its next request is refused with 401; a policy push with a validation error is shown at its
line (and a stale push as a conflict); a tenant-admin does not see another tenant's keys. Every page
is screenshotted (conftest.py says where)."""

from __future__ import annotations

import re
import time

import anthropic
import openai

from tests.browser.conftest import Stack
from tests.e2e.gateway import wait_until

MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def _admin(stack: Stack, name: str) -> str:
    return stack.admin_key("admin", name)


def test_signing_in_and_every_page_renders_accessible_and_within_the_csp(stack: Stack, new_page):
    key = _admin(stack, "browser-pages")
    console = new_page().open(stack.admin_api)
    console.check()
    console.shot("01-signin")

    page = console.page
    page.get_by_label("Admin key").fill("sk-ccr-adm-aaaaaaaa_not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").get_by_text("That key was not accepted").wait_for()
    assert page.get_by_label("Admin key").get_attribute("aria-invalid") == "true"

    console.sign_in(key)
    # The session cookie is HttpOnly and nothing is kept in web storage.
    assert "ccr_admin_session" not in page.evaluate("document.cookie")
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0

    page.locator("#spend-updated").get_by_text("updated").wait_for()
    assert page.locator("figure.chart").count() == 6
    page.get_by_role("button", name="Last 7 days").click()
    page.locator("#spend-updated").get_by_text("Last 7 days").wait_for()
    assert page.get_by_role("button", name="Last 7 days").get_attribute("aria-pressed") == "true"
    page.get_by_role("button", name="Last 24 hours").click()
    page.locator("#spend-updated").get_by_text("Last 24 hours").wait_for()
    console.check()
    console.shot("02-spend")

    console.go("keys", "Keys")
    page.locator(".table-wrap table, .table-wrap .empty").first.wait_for()
    console.check()
    console.shot("03-keys")

    console.go("policy", "Policy")
    page.locator("#policy-meta").get_by_text("version").wait_for()
    assert "listener:" in page.get_by_label("Policy YAML").input_value()
    console.check()
    console.shot("04-policy")

    console.go("health", "Health")
    page.get_by_role("heading", name="Clusters").wait_for()
    page.locator("section", has=page.get_by_role("heading", name="Clusters")).locator("table, .empty").first.wait_for()
    # A state is a word, not only a colour.
    for badge in page.locator("[data-state]").all():
        assert badge.inner_text().strip() in {
            "Healthy",
            "Degraded",
            "Down",
            "In sync",
            "Behind",
        } or badge.inner_text().startswith("Rejected")
    console.check()
    console.shot("05-health")

    console.go("audit", "Audit")
    page.locator("table.audit-table").get_by_text("admin.sign_in").first.wait_for()
    console.check()
    console.shot("06-audit")

    page.get_by_role("button", name="Sign out").click()
    console.heading("Sign in").wait_for()
    page.evaluate("location.hash = '#/keys'")
    console.heading("Sign in").wait_for()


def test_a_created_key_is_shown_once_spends_in_the_chart_and_is_refused_once_revoked(stack: Stack, new_page):
    tenant = "shop"
    console = new_page().open(stack.admin_api).sign_in(_admin(stack, "browser-keys"))
    page = console.page
    console.go("keys", "Keys")

    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="Create a key")
    dialog.get_by_label("Name").fill("browser-key")
    dialog.get_by_label("Tenant").fill(tenant)
    dialog.get_by_label("Requests per minute").fill("600")
    console.check()
    console.shot("07-keys-create")
    dialog.get_by_role("button", name="Create key").click()

    created = page.get_by_role("dialog", name="Key created")
    secret_box = created.locator("input.secret")
    secret_box.wait_for()
    secret = secret_box.input_value()
    stack.secrets.append(secret)
    assert secret.startswith("sk-ccr-"), "the new key, in its dialog"
    created.get_by_text("shown only this once").wait_for()
    created.get_by_role("button", name="Copy key").click()
    created.get_by_text("Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    console.shot("08-keys-created-once", mask=[secret_box])  # the secret itself never in an artifact
    created.get_by_role("button", name="I have stored it").click()
    created.wait_for(state="detached")
    assert secret not in page.content(), "the secret is gone from the page once its dialog is closed"
    page.get_by_label("Tenant").select_option(tenant)  # the filter lists the new tenant
    key_id = page.locator("tr", has_text="browser-key").get_attribute("data-key-id")
    assert key_id and key_id in secret

    row = page.locator(f'tr[data-key-id="{key_id}"]')
    row.get_by_role("button", name="Edit limits of browser-key").click()
    edit = page.get_by_role("dialog", name=re.compile("Edit limits"))
    assert edit.get_by_label("Requests per minute").input_value() == "600"
    edit.get_by_label("Requests per minute").fill("1200")
    edit.get_by_label("Budget (USD)").fill("50")
    edit.get_by_role("button", name="Save limits").click()
    console.toast("Limits of browser-key saved")
    row.get_by_text("rpm 1,200").wait_for()
    row.get_by_text("$50.00").wait_for()

    # Requests with it through the gateway's Envoy listener, with both SDKs.
    claude = anthropic.Anthropic(base_url=stack.gateway.url, api_key=secret, max_retries=0)

    def accepted() -> bool:
        try:
            return bool(claude.messages.create(**MESSAGE).content)
        except anthropic.AuthenticationError:
            return False

    # The gateway's key cache learns of a new key at its next poll of the key store.
    wait_until(accepted, 15, "the new key accepted by the gateway", interval=0.25)
    for _ in range(2):
        assert claude.messages.create(**MESSAGE).content
    gpt = openai.OpenAI(base_url=f"{stack.gateway.url}/v1", api_key=secret, max_retries=0)
    assert gpt.chat.completions.create(
        model="gpt-4o", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    ).choices

    # ... and they show in the spend charts within seconds (the page refreshes every 5 s).
    sent = time.monotonic()
    console.go("spend", "Spend")
    by_tenant = page.locator("figure", has=page.get_by_role("heading", name="Spend by tenant"))
    by_tenant.get_by_text("Show as table").click()
    by_tenant.locator("table").get_by_role("columnheader", name=tenant).wait_for(timeout=20_000)
    tokens = page.locator("figure", has=page.get_by_role("heading", name="Tokens by tenant"))
    tokens.get_by_role("img").wait_for()
    assert tenant in tokens.locator(".legend").inner_text()
    top = page.locator("figure", has=page.get_by_role("heading", name="Top keys by spend"))
    top.get_by_text("Show as table").click()
    top.locator("table").get_by_role("rowheader", name=key_id).wait_for(timeout=20_000)
    models = page.locator("figure", has=page.get_by_role("heading", name="Spend by model"))
    # The ledger's model: the provider's id for claude-sonnet-4-5 in this policy.
    assert "fake-sonnet" in models.locator(".legend").inner_text()
    print(f"requests visible in the spend charts {time.monotonic() - sent:.1f}s after they were sent")
    console.check()
    console.shot("09-spend-with-the-new-key")

    console.go("keys", "Keys")
    row.get_by_role("button", name="Revoke browser-key").click()
    confirm = page.get_by_role("dialog", name="Revoke this key?")
    confirm.get_by_text(key_id).wait_for()
    console.shot("10-keys-revoke-confirm")
    confirm.get_by_role("button", name="Revoke key").click()
    console.toast("Key browser-key revoked")
    row.get_by_text("revoked", exact=True).wait_for()
    console.shot("11-keys-revoked")

    def refused() -> bool:
        try:
            claude.messages.create(**MESSAGE)
        except anthropic.AuthenticationError as exc:
            return exc.status_code == 401
        return False

    wait_until(refused, 15, "the revoked key's next request refused with 401", interval=0.25)


def test_a_policy_error_is_shown_at_its_line_and_a_stale_push_is_a_conflict(stack: Stack, new_page):
    console = new_page().open(stack.admin_api).sign_in(_admin(stack, "browser-policy"))
    page = console.page
    console.go("policy", "Policy")
    page.locator("#policy-meta").get_by_text("version").wait_for()
    editor = page.get_by_label("Policy YAML")
    original = editor.input_value()

    lines = original.split("\n")
    bad_line = next(i for i, line in enumerate(lines) if line.strip() == "api: openai") + 1
    lines[bad_line - 1] = lines[bad_line - 1].replace("openai", "openaix")
    editor.fill("\n".join(lines))
    page.get_by_text("Unsaved changes").wait_for()

    page.get_by_role("button", name="Validate").click()
    results = page.locator(".results")
    error = results.get_by_role("button", name=re.compile(rf"^Line {bad_line}, column \d+$"))
    error.wait_for()
    assert "providers[1].api" in results.inner_text()
    # The line is marked in the gutter and the editor, and the caret jumped to it.
    assert page.locator(f'.gutter .ln.error[data-line="{bad_line}"]').count() == 1
    assert page.locator(".gutter .ln.error").count() == 1
    assert page.evaluate("document.activeElement.id") == "policy-yaml"
    caret_line = page.evaluate(
        "(() => { const t = document.activeElement; return t.value.slice(0, t.selectionStart).split('\\n').length; })()"
    )
    assert caret_line == bad_line
    console.check()
    console.shot("12-policy-validation-error")

    # Push refuses it the same way, nothing written.
    page.get_by_role("button", name="Push", exact=True).click()
    page.get_by_role("dialog", name="Push this policy?").get_by_role("button", name="Push policy").click()
    results.get_by_role("heading", name=re.compile("Not pushed")).wait_for()
    results.get_by_role("button", name=re.compile(rf"^Line {bad_line},")).wait_for()
    assert stack.gateway.policy_path.read_text() == original
    console.shot("13-policy-push-refused")

    # Diff of a valid edit, then someone else changes the policy: the push is a conflict.
    editor.fill("# edited in the console\n" + original)
    page.get_by_role("button", name="Diff vs current").click()
    results.locator("pre.diff .add", has_text="# edited in the console").wait_for()
    console.shot("14-policy-diff")
    stack.gateway.write_policy("# edited by someone else\n" + original)
    page.get_by_role("button", name="Push", exact=True).click()
    page.get_by_role("dialog", name="Push this policy?").get_by_role("button", name="Push policy").click()
    results.get_by_role("heading", name=re.compile("Conflict")).wait_for()
    assert "# edited in the console" in editor.input_value(), "the edits are kept"
    assert "# edited in the console" not in stack.gateway.policy_path.read_text()
    console.check()
    console.shot("15-policy-conflict")

    # Reload the current one (it asks before discarding the edits), edit, push: a new version.
    page.get_by_role("button", name="Reload current").click()
    page.get_by_role("dialog", name="Discard your edits?").get_by_role("button", name="Discard and reload").click()
    wait_until(lambda: editor.input_value().startswith("# edited by someone else"), 10, "the current policy reloaded")
    editor.fill("# pushed from the console\n" + editor.input_value())
    page.get_by_role("button", name="Push", exact=True).click()
    page.get_by_role("dialog", name="Push this policy?").get_by_role("button", name="Push policy").click()
    results.get_by_role("heading", name="Pushed").wait_for()
    assert stack.gateway.policy_path.read_text().startswith("# pushed from the console\n")
    page.get_by_text("No changes").wait_for()


def test_a_tenant_admin_sees_only_its_tenant_and_its_pages(stack: Stack, new_page):
    admin = _admin(stack, "browser-tenants")
    for tenant, name in (("acme", "acme-ci"), ("globex", "globex-ci")):
        status, body = stack.api("POST", "/keys", admin, {"tenant": tenant, "name": name})
        assert status == 201, body
        stack.secrets.append(body["key"])
    tenant_admin = stack.admin_key("tenant-admin", "acme-admin", tenant="acme")

    console = new_page().open(stack.admin_api).sign_in(tenant_admin)
    page = console.page
    nav = page.get_by_role("navigation", name="Main")
    assert [link.inner_text() for link in nav.get_by_role("link").all()] == ["Spend", "Keys"]
    page.get_by_text("tenant-admin (acme)").wait_for()

    console.go("keys", "Keys")
    page.locator("tr", has_text="acme-ci").first.wait_for()
    listed = page.locator("table.keys-table tbody").inner_text()
    assert "globex" not in listed
    assert page.get_by_label("Tenant").count() == 0 or not page.get_by_label("Tenant").is_visible()
    # The API scopes it too, whatever the console asks for.
    answer = page.evaluate("fetch('/admin/v1/keys?tenant=globex').then((r) => r.json())")
    assert all(key["tenant"] == "acme" for key in answer.get("data", [])), answer
    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="Create a key")
    assert dialog.get_by_label("Tenant").input_value() == "acme"
    assert dialog.get_by_label("Tenant").get_attribute("readonly") is not None
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached")
    console.check()
    console.shot("16-keys-as-tenant-admin")

    # Rotating its own key: the new secret shown once, like a created one.
    page.get_by_role("button", name="Rotate acme-ci").first.click()
    rotate = page.get_by_role("dialog", name="Rotate acme-ci")
    rotate.get_by_label("Grace period").select_option("3600")
    rotate.get_by_role("button", name="Rotate key").click()
    rotated = page.get_by_role("dialog", name="Key rotated")
    stack.secrets.append(rotated.locator("input.secret").input_value())
    assert stack.secrets[-1].startswith("sk-ccr-")
    rotated.get_by_role("button", name="I have stored it").click()
    rotated.wait_for(state="detached")

    page.evaluate("location.hash = '#/policy'")
    page.get_by_text("Your role does not give access to this page.").wait_for()
    console.shot("17-policy-as-tenant-admin")


def test_a_viewer_is_offered_no_change(stack: Stack, new_page):
    viewer = stack.admin_key("viewer", "browser-viewer")
    console = new_page().open(stack.admin_api).sign_in(viewer)
    page = console.page
    console.go("keys", "Keys")
    page.locator(".table-wrap table, .table-wrap .empty").first.wait_for()
    assert page.get_by_role("button", name="Create key").count() == 0
    assert page.get_by_role("button", name=re.compile("^(Revoke|Edit limits|Rotate) ")).count() == 0
    console.go("policy", "Policy")
    page.get_by_role("button", name="Validate").wait_for()
    assert page.get_by_role("button", name="Push", exact=True).count() == 0


def test_dialogs_trap_focus_close_on_escape_and_return_focus(stack: Stack, new_page):
    console = new_page().open(stack.admin_api).sign_in(_admin(stack, "browser-keyboard"))
    page = console.page
    console.go("keys", "Keys")
    opener = page.get_by_role("button", name="Create key")
    opener.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Create a key")
    dialog.wait_for()
    assert page.evaluate("document.activeElement.name") == "name", "focus starts in the first field"
    # A visible focus indicator.
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    for _ in range(25):
        page.keyboard.press("Tab")
        assert page.evaluate("!!document.activeElement.closest('dialog')"), "Tab left the dialog"
    for _ in range(25):
        page.keyboard.press("Shift+Tab")
        assert page.evaluate("!!document.activeElement.closest('dialog')"), "Shift+Tab left the dialog"
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached")
    assert page.evaluate("document.activeElement.textContent") == "Create key", "focus back on the opener"


def test_a_401_anywhere_or_a_reload_before_a_change_sends_to_sign_in_and_back(stack: Stack, new_page):
    key = _admin(stack, "browser-expiry")
    console = new_page().open(stack.admin_api).sign_in(key)
    page = console.page
    console.go("audit", "Audit")
    page.context.clear_cookies()  # the session is gone (expired, signed out elsewhere, restart)
    page.get_by_role("link", name="Keys").click()
    console.heading("Sign in").wait_for()
    page.get_by_text("Your session has ended").wait_for()
    console.sign_in(key, expect_page="Keys")

    # A reload keeps the cookie, not the in-memory CSRF token: /me hands the session its token
    # again, so a change works at once, without signing in anew.
    page.reload()
    console.heading("Keys").wait_for()
    page.locator(".table-wrap table, .table-wrap .empty").first.wait_for()
    page.get_by_role("button", name="Create key").click()
    page.get_by_role("dialog", name="Create a key").wait_for()
