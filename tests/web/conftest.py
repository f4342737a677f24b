"""What the console's browser tests share: one `make run` stack for the session (each test file
makes its own subject's keys and data in it, so no test depends on another), Debian's Chromium
driven by Playwright, and a page that records every console error and uncaught exception and
saves screenshots in NEURAL_TEST_ARTIFACTS (default tests/web/artifacts/)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from scripts.browser import CHROMIUM, CHROMIUM_ARGS
from scripts.local_stack import admin_key, running_stack

ROOT = Path(__file__).resolve().parents[2]
DIST_INDEX = ROOT / "web" / "dist" / "index.html"
UI_TIMEOUT_MS = 30_000


def artifacts_folder() -> Path:
    folder = Path(os.environ.get("NEURAL_TEST_ARTIFACTS") or ROOT / "tests" / "web" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def post(api: httpx.Client, path: str, body: Any) -> dict[str, Any]:
    """A REST call that must succeed; its JSON answer."""
    response = api.post(path, json=body)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    return response.json()


@dataclass
class Console:
    """The running stack as a browser user sees it: its gateway's URL and an admin key."""

    url: str
    admin_key: str
    env: dict[str, str]

    def api(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    def keys(self, subject: str, *roles: str) -> dict[str, str]:
        """New API keys of `subject`, one per role ("USER", "VIEWER", "ADMIN"), made through
        the REST API with the admin key. Keys that name one subject see the same rows."""
        with self.api(self.admin_key) as admin:
            return {
                role: post(admin, "/v1/api-keys", {"name": subject, "role": f"ROLE_{role}"})["key"]
                for role in roles
            }


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """A `make run` stack (gateway, services, a training worker) for the whole session."""
    if not DIST_INDEX.is_file():
        pytest.fail("the web console is not built: run `make setup` (it builds web/dist)")
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: make setup installs it")
    folder = tmp_path_factory.mktemp("console-stack")
    with running_stack(folder) as env:
        url = f"http://127.0.0.1:{env['NEURAL_GATEWAY_PORT']}"
        yield Console(url, admin_key(env, "console-tests"), env)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Per module, not per session: Playwright's sync API keeps an event loop running in this
    # thread while it is open, and the asyncio.run of a later module's fixtures (tests/services'
    # stacks) would fail under it whatever order the files are given in.
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watched:
    """A page and every console error and uncaught exception it had, with the URL it was at."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(artifacts_folder() / f"{name}.png"), full_page=True)

    @contextmanager
    def refused(self, status: int) -> Iterator[None]:
        """A step whose call the server refuses on purpose: the browser's own report of that
        response ("Failed to load resource: ... status of 400") is no error of the app's;
        anything else logged meanwhile still is."""
        before = len(self.errors)
        yield
        during = self.errors[before:]
        del self.errors[before:]
        self.errors += [e for e in during if f"status of {status}" not in e]

    def sign_in(self, console: Console, key: str, subject: str, role: str) -> None:
        """Signs in on the console's first page and waits for the header to name who it is
        (`role` as the header writes it: "user", "viewer", "admin")."""
        page = self.page
        page.goto(f"{console.url}/")
        page.locator("input[data-testid=api-key]").fill(key)
        page.locator("button[data-testid=sign-in]").click()
        whoami = page.locator("[data-testid=whoami]")
        expect(whoami).to_contain_text(subject)
        expect(whoami).to_contain_text(role)


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    result = Watched(page)
    page.on(
        "console",
        lambda m: (
            result.errors.append(f"console at {page.url}: {m.text}") if m.type == "error" else None
        ),
    )
    page.on("pageerror", lambda e: result.errors.append(f"page error at {page.url}: {e}"))
    try:
        yield result
    finally:
        context.close()
