"""End to end in a real browser: ``taskdb dashboard`` and ``taskdb worker`` as child
processes, driven by headless Chromium (Selenium), on both dialects.

Skipped, with the reason, when Chromium or its driver is missing, unless
``TASKDB_REQUIRE_BROWSER=1`` (CI) makes that a failure. With
``TASKDB_SCREENSHOT=path.png`` the overview is saved there (docs/dashboard.png).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import taskdb
from tests.cli.helpers import reap, taskdb_process
from tests.web.conftest import free_port

T = TypeVar("T")
REQUIRE = os.environ.get("TASKDB_REQUIRE_BROWSER") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

TASKS = """
import asyncio
import os
from pathlib import Path


def blob_bytes():
    return bytes(range(256)) * (12 * 1024)  # 3 MiB: stored as a ref


async def handle(value, ctx):
    kind = value["kind"]
    if kind == "progress":
        for step in range(1, 11):
            await asyncio.sleep(0.4)
            await ctx.update_progress(step * 10, f"step {step}")
        return {"steps": 10}
    if kind == "hang":
        await asyncio.sleep(300)
    if kind == "flaky":
        marker = Path(value["marker"])
        if not marker.exists():
            marker.touch()
            raise RuntimeError("first attempt fails")
        return {"second": "attempt"}
    if kind == "blob":
        return {"data": blob_bytes()}
    if kind == "evil":
        raise ValueError(value["text"])
    return None
"""
EVIL = '<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2">'


def _missing() -> str | None:
    if CHROMIUM is None or DRIVER is None:
        return "headless browser tests need Debian's chromium and chromium-driver packages"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole module."""
    reason = _missing()
    if reason is not None:
        if REQUIRE:
            pytest.fail(reason + " (TASKDB_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,860")
    driver = webdriver.Chrome(service=Service(DRIVER or ""), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def until(probe: Callable[[], T], predicate: Callable[[T], bool], timeout: float = 20) -> T:
    """Poll ``probe`` until ``predicate`` holds (fails with the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s; last value: {value!r}")
        time.sleep(0.05)


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[str]:
    """``taskdb dashboard`` and a ``taskdb worker`` running against ``db_url``."""
    (tmp_path / "e2e_tasks.py").write_text(textwrap.dedent(TASKS))
    port = free_port()
    dashboard = taskdb_process(
        "dashboard", "--port", str(port), "--poll", "0.1", db_url=db_url, cwd=tmp_path
    )
    worker = taskdb_process(
        "worker", "e2e_tasks:handle", "-q", "e2e", "-c", "4", "--poll", "0.05",
        db_url=db_url, cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        until(lambda: _up(url, dashboard), bool)
        yield url
    finally:
        for proc in (worker, dashboard):
            reap(proc)
            if proc.stdout is not None:
                proc.stdout.close()


def _up(url: str, proc: Any) -> bool:
    assert proc.poll() is None, proc.stderr.read()
    try:
        with urllib.request.urlopen(url + "/api/stats", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _text(driver: Any, element_id: str) -> str:
    """The element's text ("" while a navigation replaces the page)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.ID, element_id).text)
    except WebDriverException:
        return ""


def test_the_dashboard_live_in_a_browser(
    browser: Any, served: str, db_url: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    with taskdb.connect(db_url) as db:
        jobs = taskdb.SyncJobQueueClient(db, "e2e")
        submit: Callable[..., int] = lambda value, **kw: jobs.submit(value, **kw).id  # noqa: E731

        # the overview opens and lists the queue
        first = submit({"kind": "noop"})
        browser.get(served + "/")
        assert browser.title == "Queues · taskdb"
        until(lambda: browser.find_elements(By.CSS_SELECTOR, 'tr[data-queue="e2e"]'), bool)

        # a running job's progress bar advances live: no reload
        progress = submit({"kind": "progress"})
        browser.get(f"{served}/jobs/{progress}")
        browser.execute_script("window.__same_page = true")
        width = lambda: browser.execute_script(  # noqa: E731
            "return parseFloat(document.getElementById('progress-bar').style.width) || 0"
        )
        seen = {until(width, lambda w: 0 < w < 100, timeout=30)}
        seen.add(until(width, lambda w: w > max(seen), timeout=30))
        until(lambda: _text(browser, "job-status"), lambda s: s == "COMPLETED", timeout=30)
        assert width() == 100 and len(seen) >= 2
        assert browser.execute_script("return window.__same_page === true")
        assert '"steps": 10' in _text(browser, "output")

        # Abort: the running job ends FAILED, aborted
        hang = submit({"kind": "hang"})
        browser.get(f"{served}/jobs/{hang}")
        until(lambda: _text(browser, "job-status"), lambda s: s == "PROCESSING")
        browser.find_element(By.ID, "abort").click()
        until(lambda: _text(browser, "job-status"), lambda s: s == "FAILED")
        until(lambda: browser.find_elements(By.ID, "aborted"), bool)

        # Retry on a failed job: it runs again and completes
        flaky = submit({"kind": "flaky", "marker": str(tmp_path / "marker")}, max_retries=0)
        browser.get(f"{served}/jobs/{flaky}")
        until(lambda: _text(browser, "job-status"), lambda s: s == "FAILED")
        browser.get(f"{served}/jobs/{flaky}")  # now rendered with its Retry button
        browser.find_element(By.ID, "retry").click()
        until(lambda: _text(browser, "job-status"), lambda s: s == "COMPLETED", timeout=30)

        # a blob output downloads with the right bytes
        blob = submit({"kind": "blob"})
        browser.get(f"{served}/jobs/{blob}")
        until(lambda: _text(browser, "job-status"), lambda s: s == "COMPLETED", timeout=30)
        browser.get(f"{served}/jobs/{blob}")  # rendered with its download link
        link = browser.find_element(By.CSS_SELECTOR, "a.download")
        digest = browser.execute_async_script(
            """const done = arguments[arguments.length - 1];
            const hex = (d) => [...new Uint8Array(d)]
              .map((x) => x.toString(16).padStart(2, "0")).join("");
            fetch(arguments[0]).then((r) => r.arrayBuffer())
              .then((b) => crypto.subtle.digest("SHA-256", b))
              .then((d) => done(hex(d))).catch((e) => done("error: " + e));""",
            link.get_attribute("href"),
        )
        assert digest == hashlib.sha256(bytes(range(256)) * (12 * 1024)).hexdigest()

        # a payload and an error holding markup render as text, inert
        evil = submit({"kind": "evil", "text": EVIL}, max_retries=0)  # no backoff to wait out
        browser.get(f"{served}/jobs/{evil}")
        until(lambda: _text(browser, "job-status"), lambda s: s == "FAILED")
        browser.get(f"{served}/jobs/{evil}")
        assert EVIL in _text(browser, "error") and "<script>" in _text(browser, "input")
        browser.get(f"{served}/jobs?q=" + "%3Cscript%3E")
        assert browser.execute_script("return window.__xss === undefined")

        shot = os.environ.get("TASKDB_SCREENSHOT")
        if shot:  # a few more queues for the picture: jobs no worker serves here
            for queue, count in (("emails", 7), ("reports", 3)):
                for n in range(count):
                    taskdb.SyncJobQueueClient(db, queue).submit({"n": n}, task=f"send_{queue}")
        browser.get(served + "/")
        until(lambda: _text(browser, "queues"), lambda t: "e2e" in t)
        if shot:
            time.sleep(1.5)  # the chart's refresh after the last changes
            browser.save_screenshot(shot)
        assert first > 0
