"""A real headless browser for tests: Debian's chromium driven by selenium through chromium-driver
(scripts/get_chromium.sh installs both; no browser is downloaded at test time).

``requires_browser`` skips a test when chromium, chromedriver or selenium is missing, except in
CI (``CI`` set), where that is a failure. ``start_browser()`` returns a selenium WebDriver; quit it.
PARROT_CHROMIUM / PARROT_CHROMEDRIVER may name binaries that are not on PATH.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest


def chromium_binary() -> str | None:
    return os.environ.get("PARROT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def chromedriver_binary() -> str | None:
    return os.environ.get("PARROT_CHROMEDRIVER") or shutil.which("chromedriver")


def browser_missing() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -c constraints.txt -e '.[test]')"
    if chromium_binary() is None or chromedriver_binary() is None:
        return "chromium / chromedriver not installed (run scripts/get_chromium.sh as root)"
    return None


requires_browser = pytest.mark.skipif(
    browser_missing() is not None and not os.environ.get("CI"),
    reason=f"{browser_missing()}; in CI this is a failure, not a skip",
)


def start_browser(width: int = 1200, height: int = 820) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = browser_missing()
    if missing:
        raise AssertionError(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(chromedriver_binary()))


def save_png(driver: Any, path: Path, colors: int = 128) -> Path:
    """A screenshot, palette-quantized so the committed PNGs stay small."""
    from io import BytesIO

    from PIL import Image

    image = Image.open(BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path
