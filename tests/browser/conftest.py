"""A real headless chromium on the RabbitMQ management UI, and a worker on a vhost of its own.

Debian's chromium (deploy/browser/install-chromium.sh) is driven by playwright
through `executable_path`; playwright's own browser downloads are not used.
Without chromium the tests are skipped, unless STATUSEK_REQUIRE_BROWSER=1.
Screenshots go to STATUSEK_TEST_ARTIFACTS (default `.artifacts/browser/`).
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from playwright.async_api import Browser, Page, async_playwright

from statusek.app.settings import Settings
from statusek.app.worker import Worker
from statusek.testing import fresh_database, fresh_vhost
from tests.conftest import AMQP_URL, DATABASE_URL, ROOT, SHIPPED_MODELS

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
MANAGEMENT_URL = os.environ.get("STATUSEK_TEST_MANAGEMENT_URL", "http://127.0.0.1:15672/")
ARTIFACTS = Path(os.environ.get("STATUSEK_TEST_ARTIFACTS", ROOT / ".artifacts" / "browser"))
# Every wait on the UI is bounded: a page that does not answer fails the test, never hangs it.
UI_TIMEOUT_MS = 15_000


@dataclass(frozen=True)
class Stack:
    """A running worker on a fresh vhost and database, as an operator of the UI sees it."""

    amqp_url: str
    vhost: str
    user: str
    password: str
    worker: Worker


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    # The page fixture keeps a screenshot of the page a test failed on.
    report: pytest.TestReport = yield
    item.stash.setdefault(FAILED, False)
    if report.failed:
        item.stash[FAILED] = True
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, or a skip (a failure under STATUSEK_REQUIRE_BROWSER=1)."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = f"no chromium at {CHROMIUM} (install it with deploy/browser/install-chromium.sh)"
    if os.environ.get("STATUSEK_REQUIRE_BROWSER") == "1":
        pytest.fail(f"STATUSEK_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def management_url() -> str:
    """The management UI, checked to answer before a browser is pointed at it."""
    parts = urlsplit(AMQP_URL)
    request = urllib.request.Request(MANAGEMENT_URL.rstrip("/") + "/api/overview")
    credentials = f"{unquote(parts.username or 'guest')}:{unquote(parts.password or 'guest')}"
    request.add_header("Authorization", "Basic " + _b64(credentials))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            version = json.load(response).get("management_version")
    except (urllib.error.URLError, OSError, ValueError) as e:
        pytest.fail(
            f"the RabbitMQ management UI does not answer at {MANAGEMENT_URL} ({e}); "
            "enable it with `rabbitmq-plugins enable rabbitmq_management`",
            pytrace=False,
        )
    assert version, f"{MANAGEMENT_URL}api/overview gave no management_version"
    return MANAGEMENT_URL


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[Stack]:
    """A worker of its own: the UI test must not share queues with other tests."""
    with fresh_vhost(AMQP_URL, prefix="statusek-ui") as amqp_url:
        async with fresh_database(DATABASE_URL, prefix="statusek_ui") as database_url:
            settings = Settings(
                amqp_url=amqp_url,
                database_url=database_url,
                models_path=str(SHIPPED_MODELS),
                log_level="WARNING",
                ops_port=0,
            )
            worker = Worker(settings)
            task = asyncio.create_task(worker.run())
            started = asyncio.create_task(worker.started.wait())
            await asyncio.wait([task, started], timeout=60, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()
            assert started.done(), "the worker did not start within 60 s"
            parts = urlsplit(amqp_url)
            try:
                yield Stack(
                    amqp_url=amqp_url,
                    vhost=unquote(parts.path[1:]),
                    user=unquote(parts.username or "guest"),
                    password=unquote(parts.password or "guest"),
                    worker=worker,
                )
            finally:
                worker.request_stop()
                await asyncio.wait_for(task, 30)


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
async def page(browser: Browser, artifacts: Path, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A fresh browser context per test; the page a test fails on is kept as a screenshot."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.set_default_navigation_timeout(UI_TIMEOUT_MS)
    page = await context.new_page()
    try:
        yield page
    finally:
        if request.node.stash.get(FAILED, False):
            name = request.node.name
            await page.screenshot(path=artifacts / f"{name}-failed.png", full_page=True, timeout=10_000)
            (artifacts / f"{name}-failed.html").write_text(await page.content())
        await context.close()
