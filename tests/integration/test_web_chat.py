"""The web chat page at `/`, in a real headless Chromium (Debian's chromium and chromedriver,
installed by .ci/run; nothing is downloaded at test time).

Against the echo model: the answer repeats the question word by word, and the magic word
SLOW makes it send one word per 50 ms, so the stream and the stop button can be watched.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.browser import CHROMEDRIVER, CHROMIUM, start_chromium
from tests.integration.polling import wait_until
from tests.integration.servers import TritonProcess
from tests.integration.test_gateway_echo import cancelled_count

pytestmark = pytest.mark.integration

QUESTION = "SLOW 你好 ， **世界** ！ 这是 一个 流式 的 中文 回答 。"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are missing (.ci/run installs them)")
        pytest.skip("Debian's chromium and chromium-driver are not installed (see .ci/run)")
    with start_chromium() as driver:
        yield driver


def last_answer(driver: object) -> tuple[str, str, str]:
    """(state, text, html) of the newest assistant message."""
    from selenium.webdriver.common.by import By

    answers = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")  # type: ignore[attr-defined]
    if not answers:
        return "", "", ""
    content = answers[-1].find_element(By.CLASS_NAME, "content")
    return (answers[-1].get_attribute("data-state") or "", content.text,
            content.get_attribute("innerHTML") or "")


def ask(driver: object, question: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "input")  # type: ignore[attr-defined]
    box.send_keys(question)
    box.send_keys(Keys.ENTER)


def test_chat_page_streams_renders_and_stops(browser: object, echo_gateway: str,
                                             echo_triton: TritonProcess) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    driver.get(echo_gateway + "/")  # type: ignore[attr-defined]
    select = driver.find_element(By.ID, "model")  # type: ignore[attr-defined]
    wait_until(lambda: len(Select(select).options) >= 2, "the model list", timeout_s=15)
    assert sorted(o.text for o in Select(select).options) == ["echo", "echo-alias"]
    Select(select).select_by_visible_text("echo")
    max_tokens = driver.find_element(By.ID, "max_tokens")  # type: ignore[attr-defined]
    max_tokens.clear()
    max_tokens.send_keys("64")

    # A streamed Chinese answer: seen growing, then rendered as Markdown.
    ask(driver, QUESTION)
    seen: list[str] = []

    def finished() -> bool:
        state, text, _ = last_answer(driver)
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        return state == "done"

    wait_until(finished, "the streamed answer", timeout_s=30)
    state, text, html = last_answer(driver)
    assert text == "SLOW 你好 ， 世界 ！ 这是 一个 流式 的 中文 回答 。"
    assert "<strong>世界</strong>" in html
    assert len(seen) >= 3, seen  # partial answers were shown before the whole one
    screenshot = Path(os.environ.get("TRITONCHAT_SCREENSHOT", tempfile.mktemp(suffix=".png")))
    driver.save_screenshot(str(screenshot))  # type: ignore[attr-defined]
    assert screenshot.stat().st_size > 10_000

    # Stop: the browser drops the stream and the server cancels the generation.
    before = cancelled_count(echo_triton)
    ask(driver, "SLOW " + " ".join(f"w{i}" for i in range(300)))
    wait_until(lambda: len(last_answer(driver)[1]) > 10, "the long answer started", timeout_s=15)
    driver.find_element(By.ID, "stop").click()  # type: ignore[attr-defined]
    wait_until(lambda: last_answer(driver)[0] == "stopped", "the page to show the stop", timeout_s=10)
    stopped_at = time.monotonic()
    wait_until(lambda: cancelled_count(echo_triton) > before, "the server to cancel the generation",
               timeout_s=10)
    assert "(stopped)" in last_answer(driver)[1]
    assert time.monotonic() - stopped_at < 10
    assert driver.find_element(By.ID, "send").is_enabled()  # type: ignore[attr-defined]
