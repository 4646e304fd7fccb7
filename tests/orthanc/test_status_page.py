"""The status page in a real browser: Debian's headless Chromium, driven by Selenium, against a
real Orthanc with the plugin, its authentication on (``admin`` may write, ``viewer`` may not).

The browser logs in with HTTP Basic credentials once (:func:`_login`); the page's own ``fetch``
calls then carry them (same origin), as behind any Orthanc with ``AuthenticationEnabled``.
Screenshots are saved under the test's ``tmp_path`` (``docs/status-page.png`` is one of them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import JavascriptException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.orthanc.conftest import Harness, series_uid

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORDS = {"admin": "adm1n-st4tus-page", "viewer": "v1ewer-st4tus-page"}
WAIT = 60.0
T1W = "5_anat-T1w_acq-tfl"
#: A candidate rules text an admin pastes in the page (line 6 holds its action).
CANDIDATE = """version: 1
rules:
  - name: hold-t1w
    match: {SeriesDescription: {contains: T1w}}
    actions:
      - skip: held back for review
"""
BOLD = "7_func-bold_task-fa_run-1"


def _xa30(corpus: Path, name: str) -> Path:
    return corpus / "dcm_qa_xa30" / "In" / name


def _corrupt_copy(source: Path, target: Path) -> None:
    """A DICOM whose pixel data is cut short: valid header, truncated payload."""
    dataset = pydicom.dcmread(source)
    dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 3]
    dataset.save_as(target, enforce_file_format=True)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], WebDriver]]:
    """``browser()``: a fresh headless Chromium (own profile, so no login is shared), quit after."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not download anything
    assert CHROMIUM.is_file() and CHROMEDRIVER.is_file(), "apt-get install chromium chromium-driver (APT_PACKAGES)"
    drivers: list[WebDriver] = []

    def start() -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-component-update", "--no-first-run", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1440,900",
                         f"--user-data-dir={tmp_path / f'chromium-profile-{len(drivers)}'}"):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def _server(orthanc_factory: Callable[..., Harness], **bidsbridge: Any) -> Harness:
    return orthanc_factory(orthanc={"AuthenticationEnabled": True, "RegisteredUsers": PASSWORDS},
                           bidsbridge={"Writers": ["admin"], **bidsbridge}, http_auth=("admin", PASSWORDS["admin"]))


def _login(driver: WebDriver, harness: Harness, user: str) -> None:
    """Log the browser in as ``user`` (HTTP Basic): once with the credentials in a URL, as a user
    answers the login prompt once; later pages are opened without them (URLs holding credentials
    break Orthanc Explorer's ``history.replaceState``), Chromium answers Orthanc's 401s itself."""
    host = harness.url.removeprefix("http://")
    driver.get(f"http://{user}:{PASSWORDS[user]}@{host}/system")
    assert "DicomAet" in driver.page_source


def _page(harness: Harness, fragment: str = "") -> str:
    return f"{harness.url}/bidsbridge/ui/{fragment}"


def _open(driver: WebDriver, url: str) -> None:
    """Open a page and wait until its first views are filled (``<body data-loaded>``)."""
    driver.get(url)
    loading = (StaleElementReferenceException, JavascriptException)  # a redirect may replace the document
    WebDriverWait(driver, WAIT, ignored_exceptions=loading).until(
        lambda d: d.execute_script("return document.body && document.body.dataset.loaded === 'true'"))


def _words(text: str) -> str:
    return " ".join(text.split())


def _failed_job(harness: Harness, corpus: Path, tmp_path: Path) -> dict[str, Any]:
    broken = tmp_path / "broken"
    broken.mkdir()
    _corrupt_copy(next(p for p in sorted(_xa30(corpus, T1W).iterdir())), broken / "t1.dcm")
    harness.send([broken])
    (job,) = harness.wait_all_finished(1, timeout=180).values()
    assert job["state"] == "failed" and job["error"], job
    return job


def test_failed_job_shown_with_its_reason_and_retried_by_a_writer(
    orthanc_factory: Callable[..., Harness], browser: Callable[[], WebDriver], corpus: Path, tmp_path: Path
) -> None:
    harness = _server(orthanc_factory, MaxAttempts=1)
    job = _failed_job(harness, corpus, tmp_path)
    row = f'#failures-table tr[data-job="{job["id"]}"]'

    # Orthanc Explorer links to the page (ExtendOrthancExplorer).
    viewer = browser()
    _login(viewer, harness, "viewer")
    viewer.get(f"{harness.url}/app/explorer.html")
    link = WebDriverWait(viewer, WAIT).until(lambda d: d.find_elements(By.ID, "bidsbridge-status"))[0]
    assert link.get_attribute("href").endswith("/bidsbridge/ui/index.html")

    # A reader sees the failure and its reason, and no Retry button (opened without the final slash).
    _open(viewer, _page(harness, "#failures").replace("/ui/#", "/ui#"))
    assert viewer.current_url.split("#")[0].endswith("/bidsbridge/ui/")
    assert _words(viewer.find_element(By.CSS_SELECTOR, f"{row} .reason").text) == _words(job["error"])
    assert "read only" in viewer.find_element(By.ID, "whoami").text
    assert viewer.find_elements(By.CSS_SELECTOR, "button.retry") == []
    viewer.save_screenshot(str(tmp_path / "failures-viewer.png"))

    # A writer retries it with a real click; the queue has it again.
    admin = browser()
    _login(admin, harness, "admin")
    _open(admin, _page(harness, "#failures"))
    assert "signed in as admin" in admin.find_element(By.ID, "whoami").text
    assert _words(admin.find_element(By.CSS_SELECTOR, f"{row} .reason").text) == _words(job["error"])
    assert len(job["history"]) == 1
    failed = harness.get("/bidsbridge/jobs", state="failed")  # the series' early and stable jobs
    assert job["id"] in [j["id"] for j in failed]
    assert int(admin.find_element(By.CSS_SELECTOR, "#count-failed strong").text) == len(failed)
    admin.save_screenshot(str(tmp_path / "failures-admin.png"))
    admin.find_element(By.CSS_SELECTOR, f'{row} button.retry').click()
    WebDriverWait(admin, WAIT).until(lambda d: "queued again" in d.find_element(By.ID, "message").text)

    def requeued() -> bool:
        now = harness.get(f"/bidsbridge/jobs/{job['id']}")
        # Back in the queue (attempts reset), or already tried again: a second attempt in its history.
        return bool(now["state"] in ("queued", "running") or len(now["history"]) >= 2)

    harness.wait_for(requeued, WAIT, f"job {job['id']} to be queued again")

    # The dry run of the active rules against the series, through the page (a POST with a JSON body).
    admin.get(_page(harness, f"#rules/{job['series']}"))  # the same document: a hash change
    WebDriverWait(admin, WAIT).until(
        lambda d: d.find_element(By.ID, "dry-run-series").get_attribute("value") == job["series"])
    assert "(the shipped default rules)" in admin.find_element(By.ID, "rules-status").text
    admin.find_element(By.ID, "dry-run-button").click()
    WebDriverWait(admin, WAIT).until(lambda d: d.find_element(By.ID, "dry-run-text").text)
    text = admin.find_element(By.ID, "dry-run-text").text
    assert "matched mr-pet-ct-images (line 19)" in _words(text)
    assert "-> convert into dataset 'default'" in text
    admin.save_screenshot(str(tmp_path / "rules-dry-run.png"))

    # A candidate text pasted in the page: refused with its diagnostics (422), then tried as fixed.
    admin.find_element(By.ID, "dry-run-use-candidate").click()
    box = admin.find_element(By.ID, "dry-run-rules")
    box.send_keys(CANDIDATE.replace("skip:", "skp:"))
    admin.find_element(By.ID, "dry-run-button").click()
    WebDriverWait(admin, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#dry-run-diagnostics li.error"))
    diagnostic = admin.find_element(By.CSS_SELECTOR, "#dry-run-diagnostics li.error").text
    assert diagnostic.startswith("line 6, column ") and "skp" in diagnostic
    box.clear()
    box.send_keys(CANDIDATE)
    admin.find_element(By.ID, "dry-run-button").click()
    WebDriverWait(admin, WAIT).until(lambda d: ": SKIP" in d.find_element(By.ID, "dry-run-text").text)
    assert "-> skip: held back for review (rule hold-t1w)" in admin.find_element(By.ID, "dry-run-text").text
    assert "candidate rules" in admin.find_element(By.ID, "dry-run-rules-used").text
    assert harness.get("/bidsbridge/rules")["path"] is None  # nothing was saved


def test_converted_series_page_shows_its_qc_picture(
    orthanc_factory: Callable[..., Harness], browser: Callable[[], WebDriver], corpus: Path, tmp_path: Path
) -> None:
    """Needs the QC stage (branch issue13-qc: a done conversion's result lists ``qc`` PNGs under
    ``derivatives/bidsbridge-qc/``); until it is merged this test fails, saying the key is missing."""
    harness = _server(orthanc_factory)
    harness.send([_xa30(corpus, BOLD)])
    (job,) = harness.wait_all_finished(1, timeout=240).values()
    assert job["state"] == "done", job
    series = harness.orthanc_series_id(series_uid(_xa30(corpus, BOLD)))
    listing = requests.get(f"{harness.url}/bidsbridge/series/{series}/qc", auth=harness.auth, timeout=30).json()
    driver = browser()
    _login(driver, harness, "viewer")
    _open(driver, _page(harness, f"#series/{series}"))
    driver.save_screenshot(str(tmp_path / "series.png"))
    images = driver.find_elements(By.CSS_SELECTOR, "#qc img")
    assert images, f"no QC <img> on the series page: GET .../qc listed {listing}; job result keys: " \
                   f"{sorted(job['result'])} (the QC stage adds 'qc')"
    WebDriverWait(driver, WAIT).until(
        lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", images[0])
    )
    driver.save_screenshot(str(tmp_path / "series-qc.png"))
