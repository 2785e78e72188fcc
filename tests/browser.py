"""Open an HTML page in headless Chromium (Debian's chromium + chromium-driver) via selenium.

Used by the report tests: the page must load without console errors, every image must
decode, and a screenshot is kept. ``.ci/run`` installs Chromium when it is absent; on a
machine without it the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not CHROMIUM or not CHROMEDRIVER:
        return "Chromium or chromedriver not found (apt-get install chromium chromium-driver)"
    return None


@dataclass
class PageReport:
    errors: list[str]
    images: list[dict]
    scripts: int
    text: str
    alert: str | None


def open_page(page: Path, screenshot: Path) -> PageReport:
    """Load ``page`` (a local file) headless; return its console errors, images and text."""
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,2400"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.get(page.resolve().as_uri())
        try:
            alert = driver.switch_to.alert.text  # an injected script would have raised one
        except NoAlertPresentException:
            alert = None
        images = driver.execute_script(
            "return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,"
            " width: i.naturalWidth}))")
        scripts = driver.execute_script("return document.scripts.length")
        text = driver.execute_script("return document.body.innerText")
        driver.save_screenshot(str(screenshot))
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    return PageReport(errors=errors, images=images, scripts=scripts, text=text, alert=alert)
