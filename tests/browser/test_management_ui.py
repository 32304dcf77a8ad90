"""The README's quick start and docs/operations.md's dead letters, clicked through the RabbitMQ management UI.

Each step asserts what the operator sees and keeps a screenshot in the test's
artifacts folder. STATUSEK_UPDATE_DOCS_IMAGES=1 also writes the two
pictures of the README and docs/operations.md to docs/images/.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest
from playwright.async_api import Locator, Page, expect

from tests.browser.conftest import Stack
from tests.helpers import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.integration]

DOCS_IMAGES = ROOT / "docs" / "images"
# The whole test is bounded too: many bounded waits could still add up to a hang.
TEST_TIMEOUT_S = 180
# How long a notification or a dead letter may take to reach its queue.
ARRIVAL_TIMEOUT_S = 20
MY_QUEUE = "my-statusek-events"


class Operator:
    """A person in the management UI: each method is what they click, and what they check they see."""

    def __init__(self, page: Page, stack: Stack, url: str, artifacts: Path):
        self.page = page
        self.stack = stack
        self.url = url
        self.artifacts = artifacts
        self.steps = 0

    async def screenshot(self, name: str) -> None:
        self.steps += 1
        # From the top: a full-page picture of a scrolled page repeats the fixed header mid-page.
        await self.page.evaluate("window.scrollTo(0, 0)")
        await self.page.screenshot(path=self.artifacts / f"{self.steps:02d}-{name}.png", full_page=True)

    async def log_in(self) -> None:
        await self.page.goto(self.url)
        form = self.page.locator("form[action='#/login']")
        await form.locator("input[name=username]").fill(self.stack.user)
        await form.locator("input[name=password]").fill(self.stack.password)
        await form.get_by_role("button", name="Login").click()
        await expect(self.page.locator("#logout")).to_contain_text(f"User {self.stack.user}")
        # Lists then show the test's vhost only, as an operator of a shared broker picks theirs.
        await self.page.locator("#show-vhost").select_option(self.stack.vhost)
        # The periodic refresh redraws the whole page when its layout changes (a queue's
        # first message does that), wiping messages fetched with "Get messages".
        await self.page.locator("#update-every").select_option(label="Do not refresh")
        await self.screenshot("logged-in")

    async def tab(self, name: str) -> None:
        await self.page.locator("#tabs").get_by_role("link", name=re.compile(rf"^{name}")).click()

    async def open_queue(self, name: str) -> None:
        await self.tab("Queues")
        await link(self.page.locator("#main table.list"), name).click()
        await expect(self.page.locator("#main h1")).to_contain_text(f"Queue {name} in virtual host")
        await expect(self.page.locator("#main h1")).to_contain_text(self.stack.vhost)

    async def open_exchange(self, name: str) -> None:
        await self.tab("Exchanges")
        await link(self.page.locator("#main table.list"), name).click()
        await expect(self.page.locator("#main h1")).to_contain_text(f"Exchange: {name} in virtual host")
        await expect(self.page.locator("#main h1")).to_contain_text(self.stack.vhost)

    def section(self, title: str) -> Locator:
        """A foldable section of the page, by the start of its heading ("Bindings (2)" is "Bindings")."""
        heading = self.page.locator("h2").filter(has_text=re.compile(rf"^\s*{re.escape(title)}"))
        return self.page.locator("#main div.section, #main div.section-hidden").filter(has=heading)

    async def unfold(self, title: str, *, unfolded: bool = True) -> Locator:
        """Unfold (or fold) a section by clicking its heading."""
        section = self.section(title)
        body = section.locator("div.hider").first
        if await body.is_visible() != unfolded:
            await section.locator("h2").first.click()
        await (expect(body).to_be_visible() if unfolded else expect(body).to_be_hidden())
        return section

    async def popup(self, kind: str, text: str) -> None:
        """The UI's answer to a form ("info" or "warn"), then closed."""
        popup = self.page.locator(f".form-popup-{kind}")
        await expect(popup).to_contain_text(text)
        await popup.get_by_text("Close").click()
        await expect(popup).to_have_count(0)

    async def add_queue(self, name: str) -> None:
        await self.tab("Queues")
        form = (await self.unfold("Add a new queue")).locator("form")
        await form.locator("select[name=vhost]").select_option(self.stack.vhost)
        await form.locator("input[name=name]").fill(name)
        await form.get_by_role("button", name="Add queue").click()
        await expect(link(self.page.locator("#main table.list"), name)).to_be_visible()
        await self.screenshot("queue-added")

    async def bind_queue(self, queue: str, exchange: str) -> None:
        await self.open_queue(queue)
        bindings = await self.unfold("Bindings")
        form = bindings.locator("form[action='#/bindings'][method=post]")
        await form.locator("input[name=source]").fill(exchange)
        await form.get_by_role("button", name="Bind").click()
        # The page is redrawn: the count in the heading grows and the section is folded again.
        await expect(bindings.locator("h2")).to_contain_text("Bindings (2)")
        bindings = await self.unfold("Bindings")
        await expect(link(bindings.locator("table.list"), exchange)).to_be_visible()
        await self.screenshot("queue-bound")

    async def fill_publish(self, routing_key: str, payload: str) -> Locator:
        form = (await self.unfold("Publish message")).locator("form")
        await form.locator("input[name=routing_key]").fill(routing_key)
        await form.locator("textarea[name=payload]").fill(payload)
        return form

    async def publish(self, routing_key: str, payload: str) -> None:
        """Publish from the open exchange page; the broker must route it (else the popup is a warning)."""
        form = await self.fill_publish(routing_key, payload)
        await self.screenshot(f"publish-{routing_key}")
        await form.get_by_role("button", name="Publish message").click()
        await self.popup("info", "Message published.")

    async def get_messages(self, count: int = 10) -> Locator:
        """Get messages (requeued, so nothing is lost) from the open queue page until there are some."""
        section = await self.unfold("Get messages")
        form = section.locator("form[action='#/queues/get']")
        await form.locator("select[name=ackmode]").select_option("ack_requeue_true")
        await form.locator("input[name=count]").fill(str(count))
        messages = section.locator("#msg-wrapper div.box")
        empty = self.page.locator(".form-popup-info", has_text="Queue is empty")
        deadline = asyncio.get_running_loop().time() + ARRIVAL_TIMEOUT_S
        while True:
            await form.get_by_role("button", name="Get Message(s)").click()
            await expect(messages.first.or_(empty)).to_be_visible()
            if await messages.count():
                await self.page.wait_for_function("() => !$('#msg-wrapper').is(':animated')")
                return messages
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the queue stayed empty for {ARRIVAL_TIMEOUT_S} s")
            await self.popup("info", "Queue is empty")
            await asyncio.sleep(0.5)

    async def picture(self, name: str, bottom: Locator) -> None:
        """The page from its title down to `bottom`, as wide as its text: the docs' pictures."""
        await self.page.evaluate("window.scrollTo(0, 0)")
        await self.page.mouse.move(0, 0)  # no button drawn hovered
        title = self.page.locator("#main h1")
        main = await self.page.locator("#main").bounding_box()
        top = await title.bounding_box()
        end = await bottom.bounding_box()
        assert main and top and end
        right = max(
            await title.evaluate(RIGHTMOST_TEXT),
            await bottom.evaluate(RIGHTMOST_TEXT),
        )
        margin = 12
        x, y = max(main["x"] - margin, 0), max(top["y"] - margin, 0)
        path = self.artifacts / f"{name}.png"
        await self.page.screenshot(
            path=path,
            full_page=True,
            clip={
                "x": x,
                "y": y,
                "width": min(right + margin, main["x"] + main["width"] + margin) - x,
                "height": end["y"] + end["height"] + margin - y,
            },
        )
        if os.environ.get("STATUSEK_UPDATE_DOCS_IMAGES") == "1":
            DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS_IMAGES / path.name)


# Block elements of the UI span the page; its text and form fields end far sooner.
RIGHTMOST_TEXT = """element => {
    let right = 0;
    const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        if (!node.textContent.trim()) continue;
        const range = document.createRange();
        range.selectNodeContents(node);
        right = Math.max(right, range.getBoundingClientRect().right);
    }
    for (const field of element.querySelectorAll("input, select, textarea")) {
        right = Math.max(right, field.getBoundingClientRect().right);
    }
    return right;
}"""


def link(within: Locator, name: str) -> Locator:
    return within.get_by_role("link", name=name, exact=True)


def header(message: Locator, name: str) -> Locator:
    """The value of a message header in the Properties of a fetched message."""
    return message.locator(f"th:text-is('{name}:') + td")


@pytest.fixture
def operator(chromium: str, management_url: str, page: Page, stack: Stack, artifacts: Path) -> Operator:
    # chromium and management_url come first: a test that cannot run starts no worker.
    return Operator(page, stack, management_url, artifacts)


async def test_quick_start_in_the_management_ui(operator: Operator) -> None:
    """Commands published on statusek.commands give a status-changed notification in a bound queue."""
    token = str(uuid.uuid4())
    create = json.dumps({"object_name": "2-POINT LINE TASK", "instance_token": token})
    set_status = json.dumps({"instance_token": token, "status_name": "STARTED"})
    async with asyncio.timeout(TEST_TIMEOUT_S):
        await operator.log_in()
        await operator.add_queue(MY_QUEUE)
        await operator.bind_queue(MY_QUEUE, "statusek.events")

        await operator.open_exchange("statusek.commands")
        await operator.publish("create", create)
        # Folded, so that the README's picture is the title and the form.
        await operator.unfold("Overview", unfolded=False)
        await operator.unfold("Bindings", unfolded=False)
        await operator.fill_publish("set-status", set_status)
        await operator.picture("management-publish", operator.section("Publish message"))
        await operator.publish("set-status", set_status)

        await operator.open_queue(MY_QUEUE)
        messages = await operator.get_messages()
        await operator.screenshot("notification")
        await expect(messages).to_have_count(1)
        await expect(header(messages, "type")).to_have_text("status-changed")
        payload = json.loads(await messages.locator("pre.msg-payload").inner_text())
        assert (payload["instance_token"], payload["object_name"], payload["status_name"]) == (
            token,
            "2-POINT LINE TASK",
            "STARTED",
        )


async def test_dead_letter_in_the_management_ui(operator: Operator) -> None:
    """A body that breaks the schema is in statusek.dead-letter, its reason in a header."""
    body = json.dumps({"object_name": 42, "instance_token": str(uuid.uuid4())})
    async with asyncio.timeout(TEST_TIMEOUT_S):
        await operator.log_in()
        await operator.open_exchange("statusek.commands")
        await operator.publish("create", body)

        await operator.open_queue("statusek.dead-letter")
        messages = await operator.get_messages()
        await operator.screenshot("dead-letter")
        mine = messages.filter(has=operator.page.locator("pre.msg-payload", has_text=body))
        await expect(mine).to_have_count(1)
        await expect(header(mine, "x-statusek-reason")).to_have_text("schema-violation")
        await expect(header(mine, "x-statusek-detail")).to_contain_text("object_name")
        await expect(header(mine, "x-routing-key")).to_have_text("create")
        await expect(header(mine, "x-exchange")).to_have_text("statusek.commands")

        await operator.unfold("Overview", unfolded=False)
        await operator.unfold("Bindings", unfolded=False)
        await operator.picture("management-dead-letter", mine)
