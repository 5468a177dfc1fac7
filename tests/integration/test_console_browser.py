"""The web console in a real browser: headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright) logs in, reads the dashboard, adds a blocked rule, tests a URL, sees the counters
move, and logs out. A screenshot of each page is saved under the test's folder.

CI installs chromium (.ci/run) and sets RAMPART_REQUIRE_BROWSER=1, so there the test fails
rather than skips when the browser is missing.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import EICAR_MD5, RAMPART, Proc, free_port

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"


def _browser_or_skip() -> None:
    missing = not Path(CHROMIUM).exists()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = True
    if missing:
        if os.environ.get("RAMPART_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test needs {CHROMIUM} and playwright")
        pytest.skip(f"no {CHROMIUM} or playwright here")


def test_an_administrator_runs_the_console_in_a_browser(tmp_path: Path) -> None:
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    http, port = free_port(), free_port()
    proc = Proc([*RAMPART, "serve", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1",
                 "--query-port", str(http), "--query-tls-port", "0", "--console-port", str(port)],
                tmp_path / "d", tmp_path / "serve.log")
    proc.start(f"http://127.0.0.1:{http}/healthz")
    shots = tmp_path / "screens"
    shots.mkdir()
    try:
        password = _first_password(proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            # the appliance CA is not in this throwaway profile; TLS trust is tested with httpx
            page = browser.new_context(ignore_https_errors=True).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"https://127.0.0.1:{port}/")
            expect(page.locator("#login")).to_be_visible()
            page.screenshot(path=str(shots / "login.png"), full_page=True)
            page.fill("input[name=password]", "not the password")
            page.click("#login-form button")
            expect(page.locator("#message")).to_contain_text("user name or password")
            page.fill("input[name=password]", password)
            page.click("#login-form button")

            expect(page.locator("#d-status")).to_have_text("Protecting")
            expect(page.locator("#who-name")).to_have_text("admin (admin)")
            before = int(page.locator("#d-total").inner_text())
            for _ in range(3):
                httpx.get(f"http://127.0.0.1:{http}/v1/file/{EICAR_MD5}")
            expect(page.locator("#d-total")).not_to_have_text(str(before), timeout=10_000)
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

            page.click("nav a[data-page=lists]")
            page.fill("#add-form input[name=value]", "browser-bad.example.test")
            page.fill("#add-form input[name=note]", "added in the browser test")
            page.click("#add-form button")
            expect(page.locator("#l-entries")).to_contain_text("browser-bad.example.test")
            got = httpx.get(f"http://127.0.0.1:{http}/v1/domain/browser-bad.example.test")
            assert got.json()["results"][0]["source"] == "blocked-list"
            page.fill("#test-form input[name=url]", "http://www.browser-bad.example.test/x")
            page.click("#test-form button")
            expect(page.locator("#test-result")).to_contain_text("blocked-list")
            page.screenshot(path=str(shots / "lists.png"), full_page=True)

            httpx.get(f"http://127.0.0.1:{http}/v1/web",
                      params={"url": "http://browser-bad.example.test/download"})
            page.click("nav a[data-page=logs]")
            page.select_option("#log-form select[name=log]", "blocked")
            page.click("#log-form button")
            expect(page.locator("#log-table tbody")).to_contain_text("blocked-list", timeout=10_000)
            expect(page.locator("#log-table tbody")).to_contain_text("browser-bad.example.test")
            page.screenshot(path=str(shots / "logs.png"), full_page=True)
            page.click("nav a[data-page=dashboard]")
            expect(page.locator("#d-top-items")).to_contain_text("browser-bad.example.test")
            expect(page.locator("#d-top-threats")).to_contain_text("EICAR-Test-File")
            expect(page.locator("#d-rate polyline")).to_have_count(1)
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

            page.click("nav a[data-page=updates]")
            expect(page.locator("#u-versions tbody")).to_contain_text("(current)")
            page.screenshot(path=str(shots / "updates.png"), full_page=True)
            page.click("nav a[data-page=certificates]")
            expect(page.locator("#c-table tbody")).to_contain_text("appliance CA")
            page.screenshot(path=str(shots / "certificates.png"), full_page=True)

            page.click("nav a[data-page=accounts]")
            page.fill("#key-form input[name=name]", "monitoring")
            page.click("#key-form button")
            expect(page.locator("#a-new-key")).to_contain_text("rpk_")
            expect(page.locator("#a-keys tbody")).to_contain_text("monitoring")
            page.screenshot(path=str(shots / "accounts.png"), full_page=True)

            page.click("#logout")
            expect(page.locator("#login")).to_be_visible()
            page.reload()
            expect(page.locator("#login")).to_be_visible()  # the session is gone for good
            browser.close()
        assert errors == []
    finally:
        proc.stop()
    assert sorted(p.name for p in shots.iterdir()) == [
        "accounts.png", "certificates.png", "dashboard.png", "lists.png", "login.png", "logs.png",
        "updates.png"]


def _first_password(proc: Proc) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = re.search(r"first login: admin / (\S+)", proc.output())
        if found:
            return found[1]
        time.sleep(0.1)
    raise AssertionError(proc.output())
