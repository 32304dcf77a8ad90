"""A real headless chromium on the RabbitMQ management UI, and a worker on a vhost of its own.

Debian's chromium (deploy/browser/install-chromium.sh) is driven by playwright
through `executable_path`; playwright's own browser downloads are not used.
Without chromium the tests are skipped, unless STATUSEK_REQUIRE_BROWSER=1.
The UI is the one of the session's broker (`services`: STATUSEK_TEST_MANAGEMENT_URL,
default http://127.0.0.1:15672/, or the broker container's); a UI that does not
answer fails the tests.
Screenshots go to STATUSEK_TEST_ARTIFACTS (default `.artifacts/browser/`),
one folder per test, with `failed.png` and `failed.html` of the page a test
failed on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import time
import urllib.request
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from playwright.async_api import Error as PlaywrightError

from statusek.settings import Settings
from statusek.testing import Services, fresh_database, fresh_vhost, running_worker
from statusek.worker.worker import Worker
from tests.helpers import ROOT, SHIPPED_MODELS

CHROMIUM = os.environ.get("STATUSEK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("STATUSEK_TEST_ARTIFACTS", ROOT / ".artifacts" / "browser"))
# Every wait on the UI is bounded: a page that does not answer fails the test, never hangs it.
UI_TIMEOUT_MS = 15_000
MANAGEMENT_WAIT_S = 30
expect.set_options(timeout=UI_TIMEOUT_MS)

FAILED = pytest.StashKey[bool]()


@dataclass(frozen=True)
class Stack:
    """A running worker on a fresh vhost and database, and the broker user an operator logs in as."""

    amqp_url: str
    vhost: str
    user: str
    password: str
    worker: Worker


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Seen by the page fixture's teardown, which keeps the page a test failed on.
    report = yield
    if report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, or a skip (a failure under STATUSEK_REQUIRE_BROWSER=1)."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = f"no chromium at {CHROMIUM} (deploy/browser/install-chromium.sh installs it)"
    if os.environ.get("STATUSEK_REQUIRE_BROWSER") == "1":
        pytest.fail(f"STATUSEK_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def management_url(services: Services) -> str:
    """The management UI, checked to answer before a browser is pointed at it.

    A broker container's UI may come up a little after its AMQP port, hence a few tries.
    """
    url = services.management_url
    parts = urlsplit(services.amqp_url)
    credentials = f"{unquote(parts.username or 'guest')}:{unquote(parts.password or 'guest')}"
    request = urllib.request.Request(
        url.rstrip("/") + "/api/overview",
        headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()},
    )
    deadline = time.monotonic() + MANAGEMENT_WAIT_S
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                version = json.load(response).get("management_version")
            break
        except (OSError, ValueError) as e:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the RabbitMQ management UI does not answer at {url} ({e}); "
                    "it needs `rabbitmq-plugins enable rabbitmq_management`",
                    pytrace=False,
                )
            time.sleep(0.5)
    if not version:
        pytest.fail(f"{url} answers, but not as the RabbitMQ management API", pytrace=False)
    return url


@pytest.fixture(scope="session")
async def stack(services: Services) -> AsyncIterator[Stack]:
    """A worker of its own: what the operator finds in the queues is this test's doing only."""
    with fresh_vhost(services.amqp_url, prefix="statusek-ui", admin=services.rabbit) as amqp_url:
        async with fresh_database(services.database_url, prefix="statusek_ui") as database_url:
            settings = Settings(
                amqp_url=amqp_url,
                database_url=database_url,
                models_path=str(SHIPPED_MODELS),
                log_level="WARNING",
                ops_port=0,
            )
            async with running_worker(settings) as worker:
                parts = urlsplit(amqp_url)
                yield Stack(
                    amqp_url=amqp_url,
                    vhost=unquote(parts.path[1:]),
                    user=unquote(parts.username or "guest"),
                    password=unquote(parts.password or "guest"),
                    worker=worker,
                )


@pytest.fixture(scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """This test's folder of screenshots, emptied first so that it shows the last run only."""
    name: str = request.node.name
    folder = ARTIFACTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
async def page(browser: Browser, artifacts: Path, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A fresh browser context (no cookies, no UI preferences) per test."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.set_default_navigation_timeout(UI_TIMEOUT_MS)
    page = await context.new_page()
    try:
        yield page
    finally:
        # Best effort: a browser that died with the test has nothing left to show.
        if request.node.stash.get(FAILED, False):
            with contextlib.suppress(PlaywrightError):
                await page.screenshot(path=artifacts / "failed.png", full_page=True, timeout=UI_TIMEOUT_MS)
                (artifacts / "failed.html").write_text(await page.content())
        await context.close()
