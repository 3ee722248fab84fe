"""Headless Chromium for the tests of the lineage page (selenium; skipped where Chromium is missing)."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


def _chromium() -> str | None:
    for binary in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(binary)
        if path:
            return path
    return None


@contextmanager
def headless_chromium(tmp_path: Path) -> Iterator[object]:
    """A selenium Chrome driver on a headless Chromium with a private profile under `tmp_path`; quit after."""
    chromium, driver = _chromium(), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        yield browser
    finally:
        browser.quit()


def severe_errors(browser) -> list:
    """The browser console's SEVERE entries (script errors)."""
    return [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"] if hasattr(browser, "get_log") else []


def graph_shape(browser) -> tuple[int, int]:
    """(nodes, edges) of the page's lineage graph (svg#graph), after checking every node is drawn at a real size."""
    from selenium.webdriver.common.by import By

    nodes = browser.find_elements(By.CSS_SELECTOR, "svg#graph g.node")
    for n in nodes:
        box = browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()", n)
        assert box["width"] > 40 and box["height"] > 15, box
    return len(nodes), len(browser.find_elements(By.CSS_SELECTOR, "svg#graph g.edge"))
