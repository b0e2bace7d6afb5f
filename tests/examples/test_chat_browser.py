"""The chat demo in a real browser: headless Chromium, driven by Playwright.

``scripts/demo`` (README's first command) serves the chat against a ``redis-server`` of the
test's own. Two tabs of one browser open the page, join ``room`` through its form, and a
message sent from one shows in the other. Then that Redis is stopped: both tabs must show
the connection lost (the status badge, its detail line, the channel back to "pending", a
line in the log); it is started again on the same port: both must show Redis back and
``room`` active again, and a message sent from one tab again reaches the other.

The browser is Debian's ``chromium`` (``apt-get install chromium``), launched by the
``playwright`` package (the ``test`` extra) with ``executable_path``: no ``playwright
install``, no browser download. scripts/bootstrap installs both. Without a browser that
launches, the test is skipped, except in CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from examples.demo_process import HOST, launch
from redis_servers import RedisServer, RedisServerFactory

try:
    from playwright import sync_api
    from playwright.sync_api import expect
except ImportError:  # reported by the `browser` fixture, before anything uses it
    sync_api = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page

BROWSER_NAMES = ("chromium", "chromium-browser")
LAUNCH_TIMEOUT = 30.0
#: How long the page may take to show what the test waits for (the DOM is polled).
UI_TIMEOUT = 10.0
#: From Redis being up again to the page saying so: the multiplexer's reconnect backoff
#: (full jitter, 0.1 s doubling) after the few attempts that failed while it was down.
RECONNECT_TIMEOUT = 15.0
CHANNEL = "room"


# ------------------------------------------------------------------ the browser


def browser_required() -> bool:
    """In CI a browser must launch: its absence fails the test instead of skipping it."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def no_browser(reason: str) -> NoReturn:
    message = (
        f"no browser for the chat's browser test: {reason} "
        "(scripts/bootstrap installs Debian's chromium and the playwright package)"
    )
    if browser_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium, from the system's package (never a Playwright download)."""
    if sync_api is None:
        no_browser("the playwright package is not installed")
    executable = next(filter(None, map(shutil.which, BROWSER_NAMES)), None)
    if executable is None:
        no_browser(f"none of {', '.join(BROWSER_NAMES)} is on PATH")
    expect.set_options(timeout=ms(UI_TIMEOUT))  # what each expect() waits at most
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=executable,
                headless=True,
                # --no-sandbox: as root (CI) Chromium starts only without its sandbox.
                chromium_sandbox=False,
                timeout=ms(LAUNCH_TIMEOUT),
            )
        except sync_api.Error as exc:
            no_browser(f"{executable} does not start: {launch_error(exc.message)}")
        try:
            yield browser
        finally:
            browser.close()


def launch_error(message: str) -> str:
    """Playwright's launch error, less its very long command lines."""
    lines = [line for line in message.strip().splitlines() if "<launching>" not in line]
    return "\n".join(line for line in lines[:12] if line.strip())


# ------------------------------------------------------------------ the page


def ms(seconds: float) -> float:
    return seconds * 1000


def redis_state(page: Page) -> Locator:
    """The header's status badge: text and data-state "connected" or "reconnecting"."""
    return page.locator("#state")


def channel_badge(page: Page, channel: str) -> Locator:
    """The "active" / "pending" badge of a joined channel, in the channel list."""
    entry = page.locator("#joined li").filter(has=page.get_by_text(channel, exact=True))
    return entry.locator(".badge")


def log_lines(page: Page, text: str | re.Pattern[str]) -> Locator:
    return page.locator("#log li").filter(has_text=text)


def chat_message(page: Page, channel: str, text: str) -> Locator:
    """A message of a joined channel, as the log shows it: ``[room] hello``."""
    return log_lines(page, re.compile(rf"^\[{re.escape(channel)}\] {re.escape(text)}$"))


def open_tab(context: BrowserContext, url: str, errors: list[str]) -> Page:
    """A new tab on the chat, once it says WebSocket and Redis are up."""
    page = context.new_page()
    page.set_default_timeout(ms(UI_TIMEOUT))
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
    page.goto(url)
    expect(redis_state(page)).to_have_attribute("data-state", "connected")
    expect(redis_state(page)).to_have_text("connected")
    return page


def switch_to(page: Page) -> None:
    """Make ``page`` the tab in front, as a user does before typing into it (Chromium
    throttles the animation frames of background tabs, on which Playwright's clicks wait)."""
    page.bring_to_front()


def join(page: Page, channel: str) -> None:
    switch_to(page)
    page.locator("#channel").fill(channel)
    page.locator("#join").click()
    # "active" once Redis confirmed the subscription (on_activation): messages reach it.
    expect(channel_badge(page, channel)).to_have_text("active")


def send(page: Page, channel: str, text: str) -> None:
    switch_to(page)
    page.locator("#send-channel").fill(channel)
    page.locator("#send-text").fill(text)
    page.locator("#send").click()
    # The server's "published" notice: Redis took the message.
    sent = log_lines(page, f"you → [{channel}] {text}")
    expect(sent).to_have_count(1)


def expect_chat(sender: Page, receiver: Page, text: str) -> None:
    send(sender, CHANNEL, text)
    expect(chat_message(receiver, CHANNEL, text)).to_have_count(1)


def expect_redis_lost(page: Page) -> None:
    expect(redis_state(page)).to_have_attribute("data-state", "reconnecting")
    expect(redis_state(page)).to_have_text("reconnecting")
    expect(page.locator("#state-detail")).to_have_text("Redis connection lost, reconnecting")
    expect(channel_badge(page, CHANNEL)).to_have_text("pending")
    lost = log_lines(page, re.compile(r"^Redis connection lost \(.+\), reconnecting$"))
    expect(lost).to_have_count(1)


def expect_redis_back(page: Page) -> None:
    expect(redis_state(page)).to_have_attribute(
        "data-state", "connected", timeout=ms(RECONNECT_TIMEOUT)
    )
    expect(redis_state(page)).to_have_text("connected")
    expect(page.locator("#state-detail")).to_have_text("")
    expect(channel_badge(page, CHANNEL)).to_have_text("active", timeout=ms(RECONNECT_TIMEOUT))
    # One "Redis connected" when the tab opened, one now.
    expect(log_lines(page, re.compile(r"^Redis connected$"))).to_have_count(2)


def numsub(redis: RedisServer, channel: str) -> int:
    return redis.pubsub_numsub(channel)[channel.encode()]


def show_tabs(tabs: list[Page], tmp_path: Path) -> None:
    """What each tab shows, as text and as a screenshot (for a failed test's report)."""
    for name, tab in zip("AB", tabs, strict=False):
        try:
            print(f"--- tab {name}:\n{tab.locator('#log').inner_text(timeout=1000)}")
            print(f"--- status: {tab.locator('header').inner_text(timeout=1000)}")
            screenshot = tmp_path / f"tab-{name}.png"
            tab.screenshot(path=screenshot, timeout=ms(UI_TIMEOUT))
            print(f"--- screenshot: {screenshot}")
        except Exception as exc:  # the page itself may be what failed
            print(f"--- tab {name}: {exc}")


# ------------------------------------------------------------------ the test


def test_chat_in_two_browser_tabs_survives_a_redis_restart(
    tmp_path: Path,
    browser: Browser,
    redis_binary: str,
    redis_server_factory: RedisServerFactory,
) -> None:
    redis = redis_server_factory()
    demo, _ = launch(tmp_path, redis_binary, redis_port=redis.port)
    url = f"http://{HOST}:{demo.http_port}/"
    errors: list[str] = []
    context = browser.new_context()
    tabs: list[Page] = []
    try:
        tabs.append(a := open_tab(context, url, errors))
        tabs.append(b := open_tab(context, url, errors))
        for tab in tabs:
            join(tab, CHANNEL)
        # Two tabs, two WebSockets, one Redis subscriber: the demo's one multiplexed connection.
        assert numsub(redis, CHANNEL) == 1

        expect_chat(a, b, "hello from tab A")

        # Redis goes away: both tabs say so.
        old_pid = redis.pid
        redis.stop()
        for tab in tabs:
            expect_redis_lost(tab)

        # Redis is back on the same port (empty: the subscriptions must be re-made).
        redis.restart()
        assert redis.pid != old_pid
        for tab in tabs:
            expect_redis_back(tab)
        assert numsub(redis, CHANNEL) == 1

        expect_chat(b, a, "hello again from tab B")
        expect_chat(a, b, "and back from tab A")
        assert not errors, errors
    except BaseException:
        show_tabs(tabs, tmp_path)
        raise
    finally:
        context.close()
        print(f"--- scripts/demo output:\n{demo.output()}")  # shown if the test failed
        demo.kill()
