"""The web console in a real browser: headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright) logs in, watches the dashboard's counters move, adds a blocked rule, tests a URL,
edits the rule, imports a bad file (the row is named), finds the blocked URL in the log,
changes a setting, adds a viewer, and logs out; the viewer's session shows no write control.
A screenshot of each page is saved under the test's folder (``screens/``), at 1280x800 and
a few at a phone's width.

CI installs chromium (.ci/run) and sets RAMPART_REQUIRE_BROWSER=1, so there the test fails
rather than skips when the browser is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import EICAR_MD5, EICAR_SHA256, RAMPART, Proc, free_port, start_cloud

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
VIEWER_PASSWORD = "viewer-password-1234"


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


@pytest.fixture
def served(tmp_path: Path) -> Any:
    """An appliance relaying to a reference cloud (so the dashboard has a cloud endpoint)."""
    cloud = start_cloud(tmp_path)
    http, port = free_port(), free_port()
    proc = Proc([*RAMPART, "serve", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1",
                 "--query-port", str(http), "--query-tls-port", "0", "--console-port", str(port),
                 "--proxy-port", "0", "--transparent-port", "0",
                 "--cloud", f"https://localhost:{cloud.ports['https']}",
                 "--cloud-ca", str(cloud.data_dir / "ca.pem")],
                tmp_path / "d", tmp_path / "serve.log")
    try:
        proc.start(f"http://127.0.0.1:{http}/healthz")
        yield proc, http, port, _first_password(proc)
    finally:
        proc.stop()
        cloud.stop()


def test_an_administrator_runs_the_console_in_a_browser(served: Any, tmp_path: Path) -> None:
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    _proc, http, port, password = served
    shots = tmp_path / "screens"
    shots.mkdir()
    console = f"https://127.0.0.1:{port}/"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        # the appliance CA is not in this throwaway profile; TLS trust is tested with httpx
        context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(console)
        expect(page.locator("#login")).to_be_visible()
        page.screenshot(path=str(shots / "login.png"), full_page=True)
        page.fill("input[name=password]", "not the password")
        page.press("input[name=password]", "Enter")  # keyboard only
        expect(page.locator("#login .msg")).to_contain_text("user name or password")
        page.fill("input[name=password]", password)
        page.click("#login-form button")

        # the dashboard: protecting, and the counters move on their own as queries come in
        expect(page.locator("#d-status")).to_have_text("Protecting")
        expect(page.locator("#who-name")).to_have_text("admin (admin)")
        before = int(page.locator("#d-total").inner_text())
        for _ in range(3):
            httpx.get(f"http://127.0.0.1:{http}/v1/file/{EICAR_MD5}")
        expect(page.locator("#d-total")).not_to_have_text(str(before), timeout=10_000)
        expect(page.locator("#d-rate-service-legend")).to_contain_text("file")
        expect(page.locator("#d-local")).to_have_text("100 %")
        for _ in range(3):  # unknown here: asked of the cloud once, then from the cache
            httpx.get(f"http://127.0.0.1:{http}/v1/domain/nobody-knows.example.org")
        expect(page.locator("#d-cache")).to_have_text("67 %", timeout=10_000)
        expect(page.locator("#d-relay tbody")).to_contain_text("closed")
        expect(page.locator("#d-local")).to_have_text("50 %")

        # lists: add a blocked rule with an expiry, test a URL for a client, edit the rule
        page.click("nav a[data-page=lists]")
        add = page.locator("#add-form")
        add.locator("textarea[name=values]").fill("browser-bad.example.test\nbrowser-temp.example.test")
        add.locator("input[name=expires]").fill("7d")
        add.locator("input[name=note]").fill("added in the browser test")
        add.locator("button[type=submit]").click()
        expect(add.locator(".msg")).to_contain_text("browser-bad.example.test")
        row = page.locator("#l-entries tbody tr", has_text="browser-bad.example.test")
        expect(row).to_contain_text("every client")
        expect(row).not_to_contain_text("never")  # it expires in 7 days
        got = httpx.get(f"http://127.0.0.1:{http}/v1/domain/browser-bad.example.test")
        assert got.json()["results"][0]["source"] == "blocked-list"
        page.fill("#test-form input[name=url]", "http://www.browser-bad.example.test/x")
        page.fill("#test-form input[name=client]", "10.1.2.3")
        page.click("#test-form button")
        expect(page.locator("#test-decision")).to_contain_text("dangerous from blocked-list")
        expect(page.locator("#test-result")).to_contain_text("decides")
        page.screenshot(path=str(shots / "lists.png"), full_page=True)

        row.locator("button", has_text="Edit").click()
        edit = page.locator("#edit-form")
        expect(edit).to_be_visible()
        edit.locator("input[name=note]").fill("edited in the browser")
        edit.locator("#edit-never").click()
        page.screenshot(path=str(shots / "lists-edit.png"))
        edit.locator("button[type=submit]").click()
        expect(edit).to_be_hidden()
        expect(row).to_contain_text("edited in the browser")
        expect(row).to_contain_text("never")
        temp = page.locator("#l-entries tbody tr", has_text="browser-temp.example.test")
        temp.locator("button", has_text="Remove").click()
        temp.locator("button", has_text="Really remove?").click()  # asked once more, in place
        expect(page.locator("#l-table-msg")).to_contain_text("removed domain browser-temp.example.test")
        expect(page.locator("#l-entries")).not_to_contain_text("browser-temp.example.test")

        page.locator("details summary", has_text="Import").click()
        imp = page.locator("#import-form")
        imp.locator("select[name=format]").select_option("plain")
        imp.locator("textarea[name=data]").fill("good.example.test\nnot a domain!!\n")
        imp.locator("button[type=submit]").click()
        expect(imp.locator(".msg")).to_contain_text("import:2")  # the bad row, named, in place
        expect(page.locator("#l-entries")).not_to_contain_text("good.example.test")

        # the blocked URL in the blocked-access log, then among the day's most blocked
        httpx.get(f"http://127.0.0.1:{http}/v1/web",
                  params={"url": "http://browser-bad.example.test/download"})
        page.click("nav a[data-page=logs]")
        page.select_option("#log-form select[name=log]", "blocked")
        page.fill("#log-form input[name=text]", "browser-bad")
        page.click("#log-form button[type=submit]")
        expect(page.locator("#log-table tbody")).to_contain_text("blocked-list", timeout=10_000)
        expect(page.locator("#log-table tbody")).to_contain_text("browser-bad.example.test")
        assert "browser-bad" in (page.get_attribute("#log-csv", "href") or "")
        page.screenshot(path=str(shots / "logs.png"), full_page=True)
        page.select_option("#log-form select[name=log]", "audit")
        page.fill("#log-form input[name=text]", "browser-temp")
        page.click("#log-form button[type=submit]")
        expect(page.locator("#log-table tbody")).to_contain_text("admin")  # who removed it
        expect(page.locator("#log-form input[name=actor]")).to_be_visible()  # the audit log's filters
        expect(page.locator("#log-form select[name=verdict]")).to_be_hidden()
        page.click("nav a[data-page=dashboard]")
        expect(page.locator("#d-top-urls")).to_contain_text("browser-bad.example.test/download")
        expect(page.locator("#d-top-files")).to_contain_text(EICAR_MD5)
        expect(page.locator("#d-top-threats")).to_contain_text("EICAR-Test-File")
        expect(page.locator("#d-rate-service polyline").first).to_be_attached()
        page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

        page.click("nav a[data-page=updates]")
        expect(page.locator("#u-versions tbody")).to_contain_text("(current)")
        expect(page.locator("#u-facts")).to_contain_text("bundled sample")
        page.screenshot(path=str(shots / "updates.png"), full_page=True)
        page.click("nav a[data-page=certificates]")
        expect(page.locator("#c-table tbody")).to_contain_text("appliance CA")
        expect(page.locator("#c-subject")).to_contain_text("Rampart")
        expect(page.locator("#c-fingerprint")).to_have_text(re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$"))
        page.screenshot(path=str(shots / "certificates.png"), full_page=True)

        _change_a_setting(page, expect)
        page.screenshot(path=str(shots / "settings.png"), full_page=True)

        page.click("nav a[data-page=accounts]")
        users = page.locator("#user-form")
        users.locator("input[name=name]").fill("watcher")
        users.locator("input[name=password]").fill(VIEWER_PASSWORD)
        users.locator("button[type=submit]").click()
        expect(page.locator("#a-users tbody")).to_contain_text("watcher")
        page.fill("#key-form input[name=name]", "monitoring")
        page.click("#key-form button[type=submit]")
        expect(page.locator("#a-new-key-value")).to_contain_text("rpk_")
        expect(page.locator("#a-keys tbody")).to_contain_text("monitoring")
        page.screenshot(path=str(shots / "accounts.png"), full_page=True)
        key = page.locator("#a-keys tbody tr", has_text="monitoring")
        key.locator("button", has_text="Revoke").click()
        key.locator("button", has_text="Really revoke?").click()
        expect(page.locator("#a-keys-msg")).to_contain_text("revoked the key monitoring")
        expect(page.locator("#a-keys td.value", has_text=re.compile("^monitoring$"))).to_have_count(0)

        _narrow(context, console, shots, expect)
        page.click("#logout")
        expect(page.locator("#login")).to_be_visible()
        page.reload()
        expect(page.locator("#login")).to_be_visible()  # the session is gone for good
        context.close()

        _viewer_sees_no_write_controls(browser, console, shots, expect)
        browser.close()
    assert errors == []
    names = {p.name for p in shots.iterdir()}
    assert {"login.png", "dashboard.png", "lists.png", "lists-edit.png", "logs.png", "updates.png",
            "certificates.png", "accounts.png", "narrow-dashboard.png", "narrow-lists.png",
            "viewer-lists.png", "settings.png"} <= names


def test_updates_run_and_roll_back_from_the_console(tmp_path: Path) -> None:
    """An update source with two versions: update now installs each, the history shows the
    runs, roll back returns to the first."""
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    now = datetime.now(UTC)
    v1, v2 = (f"{now - timedelta(minutes=m):%Y%m%d%H%M}" for m in (2, 1))
    _rampart("pattern", "keygen", "--out", str(tmp_path / "key"))
    for n, (version, base) in enumerate(((v1, None), (v2, v1))):
        hashes = tmp_path / f"hashes-{version}.txt"
        hashes.write_text(f"{EICAR_SHA256},Console-Test\n{n:064x},Console-Test-{n}\n")
        _rampart("pattern", "build", "--out", str(tmp_path / version), "--hashes", str(hashes),
                 "--version", version, *(["--base", str(tmp_path / base)] if base else []))
    publish = ("pattern", "publish", "--repo", str(tmp_path / "repo"), "--key", str(tmp_path / "key"))
    _rampart(*publish, "--from", str(tmp_path / v1))
    repo_port, http, port = free_port(), free_port(), free_port()
    source = Proc([*RAMPART, "pattern", "serve", str(tmp_path / "repo"), "--port", str(repo_port)],
                  tmp_path, tmp_path / "source.log", {"http": repo_port})
    source.start(f"http://127.0.0.1:{repo_port}/manifest.json")
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(f'update_source = "http://127.0.0.1:{repo_port}/"\n'
                   f'update_key = "{tmp_path / "key.pub"}"\n')
    proc = Proc([*RAMPART, "serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"),
                 "--listen", "127.0.0.1", "--query-port", str(http), "--query-tls-port", "0",
                 "--console-port", str(port), "--proxy-port", "0", "--transparent-port", "0"],
                tmp_path / "d", tmp_path / "serve.log")
    try:
        proc.start(f"http://127.0.0.1:{http}/healthz")
        password = _first_password(proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_context(ignore_https_errors=True,
                                       viewport={"width": 1280, "height": 800}).new_page()
            page.goto(f"https://127.0.0.1:{port}/#updates")
            page.fill("input[name=password]", password)
            page.click("#login-form button")
            expect(page.locator("#u-facts")).to_contain_text(f"127.0.0.1:{repo_port}")
            page.click("#update-now")  # v1, unless the start took it already
            expect(page.locator("#u-facts")).to_contain_text(v1, timeout=15_000)
            _rampart(*publish, "--from", str(tmp_path / v2))
            page.click("#update-now")
            expect(page.locator("#u-msg")).to_contain_text(f"installed {v2}", timeout=15_000)
            expect(page.locator("#u-versions tbody tr").first).to_contain_text("(current)")
            expect(page.locator("#u-history tbody")).to_contain_text("installed")
            page.screenshot(path=str(tmp_path / "updates-source.png"), full_page=True)
            page.click("#rollback")
            expect(page.locator("#u-msg")).to_contain_text("rolled back from")
            expect(page.locator("#u-facts")).to_contain_text(v1)
            browser.close()
    finally:
        proc.stop()
        source.stop()


def _rampart(*args: str) -> None:
    done = subprocess.run([*RAMPART, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _change_a_setting(page: Any, expect: Any) -> None:
    """A bad value is refused on its own row; degraded_action changes and is kept."""
    page.click("nav a[data-page=settings]")
    page.fill("#set-log_max_rows", "-5")
    page.click("#settings-form button[type=submit]")
    bad = page.locator(".setting[data-key=log_max_rows]")
    expect(bad.locator(".msg")).to_contain_text("log_max_rows")
    expect(bad).to_have_class(re.compile("invalid"))
    page.reload()  # nothing was saved
    expect(page.locator("#set-log_max_rows")).not_to_have_value("-5")
    field = page.locator("#set-degraded_action")
    expect(field).to_be_visible()
    now = field.input_value()
    other = "block" if now == "allow" else "allow"
    field.select_option(other)
    page.click("#settings-form button[type=submit]")
    expect(page.locator("#settings-form > .msg")).to_contain_text("saved degraded_action")
    expect(page.locator(".setting[data-key=degraded_action]")).to_contain_text("changed here")
    page.reload()
    expect(page.locator("#set-degraded_action")).to_have_value(other)


def _narrow(context: Any, console: str, shots: Path, expect: Any) -> None:
    """The same session at a phone's width: the pages still read (screenshots)."""
    page = context.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{console}#dashboard")
    expect(page.locator("#d-status")).to_have_text("Protecting")
    page.screenshot(path=str(shots / "narrow-dashboard.png"), full_page=True)
    page.click("nav a[data-page=lists]")
    expect(page.locator("#l-entries tbody")).to_contain_text("browser-bad.example.test")
    page.screenshot(path=str(shots / "narrow-lists.png"), full_page=True)
    page.close()


def _viewer_sees_no_write_controls(browser: Any, console: str, shots: Path, expect: Any) -> None:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(console)
    page.fill("input[name=user]", "watcher")
    page.fill("input[name=password]", VIEWER_PASSWORD)
    page.click("#login-form button")
    expect(page.locator("#who-name")).to_have_text("watcher (viewer)")
    page.click("nav a[data-page=lists]")
    expect(page.locator("#l-entries tbody")).to_contain_text("browser-bad.example.test")
    expect(page.locator("#add-form")).to_be_hidden()
    expect(page.locator("#import-form")).to_be_hidden()
    expect(page.locator("#l-entries button")).to_have_count(0)
    expect(page.locator("#test-form button")).to_be_visible()  # testing is reading
    page.screenshot(path=str(shots / "viewer-lists.png"), full_page=True)
    page.click("nav a[data-page=updates]")
    expect(page.locator("#u-versions tbody")).to_contain_text("(current)")
    expect(page.locator("#update-now")).to_be_hidden()
    expect(page.locator("#rollback")).to_be_hidden()
    page.click("nav a[data-page=settings]")
    expect(page.locator("#settings-form button[type=submit]")).to_be_hidden()
    expect(page.locator("#set-degraded_action")).to_be_disabled()
    page.click("nav a[data-page=accounts]")
    expect(page.locator("#password-form")).to_be_visible()  # one's own password
    expect(page.locator("#a-manage")).to_be_hidden()
    context.close()


def _first_password(proc: Proc) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = re.search(r"first login: admin / (\S+)", proc.output())
        if found:
            return found[1]
        time.sleep(0.1)
    raise AssertionError(proc.output())
