"""Open explorer pages in a real headless Chromium (Selenium), for tests, benchmarks and screenshots.

It drives the system's Chromium and chromedriver (Debian: ``apt-get install chromium chromium-driver``), given
by path so Selenium never tries to download a driver. Selenium is a ``dev`` extra (``pip install selenium``).

Example:
    >>> with chromium_driver() as driver:
    ...     driver.get(Path("explore.html").resolve().as_uri())
    ...     wait_for(driver, "return window.explorer && explorer.ready")
    ...     driver.save_screenshot("explore.png")
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from typing import Any, Iterator

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER_NAMES = ("chromedriver",)
INSTALL_HINT = "on Debian/Ubuntu: apt-get install -y chromium chromium-driver"


def find_chromium() -> tuple[str | None, str | None]:
    """``(browser, driver)`` executables on the PATH (or None for each one missing)."""
    browser = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)
    driver = next((path for name in CHROMEDRIVER_NAMES if (path := shutil.which(name))), None)
    return browser, driver


@contextmanager
def chromium_driver(width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A headless Chromium Selenium driver with a ``width x height`` window, quit on exit.

    Raises:
        ImportError: Selenium is not installed.
        FileNotFoundError: no Chromium or no chromedriver on the PATH.
    """
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as error:
        raise ImportError("Driving a browser needs Selenium: pip install selenium (the dev extra has it).") from error
    browser, driver_path = find_chromium()
    if browser is None or driver_path is None:
        missing = " and ".join(name for name, path in (("chromium", browser), ("chromedriver", driver_path))
                               if path is None)
        raise FileNotFoundError(f"No {missing} on the PATH; {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, script: str, timeout: float = 30.0, *arguments: Any, interval: float = 0.02) -> Any:
    """Run ``script`` (JavaScript with a ``return``; ``arguments`` are its ``arguments``) until it returns a true
    value; that value.

    Raises:
        TimeoutError: still false after ``timeout`` seconds (the message has the browser's console errors).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script, *arguments)
        if value:
            return value
        if time.monotonic() > deadline:
            errors = [entry.get("message") for entry in driver.get_log("browser")]
            raise TimeoutError(f"`{script}` still false after {timeout} s; browser console: {errors}")
        time.sleep(interval)


def click_point(driver: Any, index: int) -> tuple[float, float]:
    """Click point ``index`` of the explorer's map with the mouse (a real pointer event); its ``(x, y)`` on the canvas."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "canvas")
    position = driver.execute_script("return explorer.screenPosition(arguments[0])", index)
    size = canvas.size  # offsets are from the element's centre
    x, y = position["x"], position["y"]
    ActionChains(driver).move_to_element_with_offset(canvas, round(x - size["width"] / 2),
                                                     round(y - size["height"] / 2)).click().perform()
    return x, y
