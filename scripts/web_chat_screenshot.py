"""Make docs/web-chat.png: the web chat page streaming a Chinese answer of the default model.

Usage: .venv/bin/python scripts/web_chat_screenshot.py [OUTPUT.png]
Starts tritonserver on model_repository/ and the gateway on free ports, asks the question in
headless Chromium and takes the screenshot once the answer is complete.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from tests.integration.browser import start_chromium  # noqa: E402
from tests.integration.polling import wait_until  # noqa: E402
from tritonchat.launch import launch_gateway, launch_triton  # noqa: E402

QUESTION = "法国的首都是哪里？"
SYSTEM = "你是一个乐于助人的助手，请用中文回答。"


def main() -> int:
    output = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "web-chat.png")
    with launch_triton(ROOT / "model_repository") as triton, \
            launch_gateway([triton.grpc_url]) as gateway, start_chromium() as driver:
        driver.get(gateway + "/")
        select = driver.find_element(By.ID, "model")
        wait_until(lambda: len(Select(select).options) > 0, "the model list", timeout_s=30)
        Select(select).select_by_visible_text("smollm2-135m-instruct")
        temperature = driver.find_element(By.ID, "temperature")
        temperature.clear()
        temperature.send_keys("0")
        max_tokens = driver.find_element(By.ID, "max_tokens")
        max_tokens.clear()
        max_tokens.send_keys("64")
        driver.find_element(By.ID, "system").send_keys(SYSTEM)
        box = driver.find_element(By.ID, "input")
        box.send_keys(QUESTION)
        box.send_keys(Keys.ENTER)

        def done() -> bool:
            answers = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")
            return bool(answers) and answers[-1].get_attribute("data-state") in ("done", "error")

        try:
            wait_until(done, "the answer", timeout_s=240)
        finally:
            driver.save_screenshot(str(output))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
