"""The page of `dist-s2s serve` as a user sees it, photographed in headless Chromium for docs/serving.md.

    .venv/bin/python benchmarks/serve_screenshot.py --config configs/multi30k-attention.yaml \
        --checkpoint runs/attention/checkpoints/best.pt --output docs/serving_page.png

Starts the real server on a free port of 127.0.0.1, types the sentences into the page, presses Translate,
waits for the results (and the heat map, for a model with attention) and saves the window.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from serve_load import serving


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sentences", nargs="+", default=["A man in a blue shirt is playing a guitar on the street.",
                                                           "Two dogs run across the snow."])
    parser.add_argument("--output", type=Path, required=True)
    args, overrides = parser.parse_known_args()
    with serving(args.config, args.checkpoint, free_port(), overrides, wait_s=120) as (_, url):
        options = webdriver.ChromeOptions()
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1300"):
            options.add_argument(flag)
        options.binary_location = shutil.which("chromium")
        browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        try:
            browser.get(url + "/")
            WebDriverWait(browser, 60).until(lambda b: "step" in b.find_element(By.ID, "model").text)
            box = browser.find_element(By.ID, "sentences")
            box.clear()
            box.send_keys("\n".join(args.sentences))
            browser.find_element(By.ID, "translate").click()
            WebDriverWait(browser, 120).until(expected_conditions.presence_of_element_located(
                (By.CSS_SELECTOR, ".result .text")))
            time.sleep(0.5)
            browser.save_screenshot(str(args.output))
        finally:
            browser.quit()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
