"""The web interface in a real browser: Debian's headless Chromium driven by Selenium against
`stripread serve --simulate` in a subprocess. A patient's test from the start page to its result,
the history's trend plots, a technician's login to QC, the clinic's alerts acknowledged, and no
patient id in the server's log.

Chromium and ChromeDriver come from Debian (`chromium`, `chromium-driver`); when they are missing
and the tests run as root (CI), they are installed here. With STRIPREAD_SCREENSHOTS=<folder> the
main pages are saved there at 800x480 (the reader's screen) and 390x844 (a phone).
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PATIENT, PASSWORD = "P-7788", "a long technician password"
SCREENSHOTS = os.environ.get("STRIPREAD_SCREENSHOTS")


def _ensure_chromium() -> None:
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=True, env=env,
                   capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The simulated reader with its web interface, a technician account and one passing QC run."""
    _ensure_chromium()
    folder = tmp_path_factory.mktemp("web")
    db, port = folder / "results.db", _free_port()
    cli = [sys.executable, "-m", "device.cli"]
    (folder / "password").write_text(PASSWORD)
    subprocess.run(cli + ["user", "tech-1", "--password-file", str(folder / "password"), "--db", str(db)], check=True,
                   capture_output=True)
    _seed_an_alert(db)
    control = folder / "negative.jpg"
    control.write_bytes(_negative_control_photo())
    subprocess.run(cli + ["qc", "run", "--control", "negative", "--photo", str(control), "--db", str(db)], check=True,
                   capture_output=True)
    log = open(folder / "server.log", "w+")
    process = subprocess.Popen(cli + ["serve", "--simulate", "--web", f"127.0.0.1:{port}", "--db", str(db)],
                               stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, STRIPREAD_DATA=str(folder)))
    deadline = time.monotonic() + 60
    while "web interface ready" not in (folder / "server.log").read_text():
        assert process.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()
        time.sleep(0.2)
    yield f"http://127.0.0.1:{port}", folder / "server.log"
    process.terminate()
    process.wait(20)
    log.close()


def _seed_an_alert(db) -> None:
    """A home patient's reading with very high glucose, stored as the reader stores one."""
    from device.alerts import judge, load_rules
    from device.store import ResultStore
    from labdata import RESULT
    analytes = [dict(a, level="1000", value=990.0) if a["analyte"] == "GLU" else a for a in RESULT["analytes"]]
    with ResultStore(db) as store:
        store.add({**RESULT, "analytes": analytes}, patient_id="HOME-5", judge=judge(load_rules()))


def _negative_control_photo() -> bytes:
    from device.technician import _control
    from simulator.scene import photograph, random_scene
    control, _ = _control("negative")
    rng = np.random.default_rng(3)
    spec = random_scene(rng, product=control.product, resolution=(1456, 1088), glare=None,
                        levels={a.analyte: a.target for a in control.analytes})
    return photograph(spec, rng)[0]


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=800,480"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(2)
    yield driver
    driver.quit()


def _wait(condition, timeout=90, driver=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    page = driver.find_element("tag name", "body").text if driver else ""
    raise AssertionError(f"timed out; the page said: {page[:500]}")


def _shoot(driver, name: str) -> None:
    if not SCREENSHOTS:
        return
    Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
    for label, size in (("reader", (800, 480)), ("phone", (390, 844))):
        driver.set_window_size(*size)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size[0], max(size[1], min(height, 2400)))
        driver.save_screenshot(str(Path(SCREENSHOTS) / f"{name}-{label}.png"))
    driver.set_window_size(800, 480)


def test_a_test_started_from_the_page_ends_on_its_result(server, browser):
    from selenium.webdriver.common.by import By
    url, _ = server
    browser.get(url + "/")
    _shoot(browser, "home")
    browser.find_element(By.LINK_TEXT, "Start a test").click()
    browser.find_element(By.ID, "patient_id").send_keys(PATIENT)
    _shoot(browser, "start")
    browser.find_element(By.ID, "start").click()
    _wait(lambda: browser.current_url.endswith("/test/live"), timeout=20, driver=browser)
    # the page redraws the countdown twice a second: read its text in one go, not element by element
    pending = _wait(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#windows li.pending')].map(li => li.textContent)"), driver=browser)
    assert pending[0].startswith("read in ")                              # the countdown runs
    _wait(lambda: browser.find_element(By.ID, "preview").get_attribute("naturalWidth") not in (None, "0"),
          driver=browser)
    _shoot(browser, "live")
    _wait(lambda: "/results/" in browser.current_url, driver=browser)
    rows = browser.find_elements(By.CSS_SELECTOR, "table.pads tbody tr")
    assert len(rows) == 10
    crops = browser.find_elements(By.CSS_SELECTOR, "img.crop")
    assert all(int(img.get_attribute("naturalWidth")) > 0 for img in crops)   # each pad's picture loaded
    assert browser.find_element(By.CSS_SELECTOR, ".steps li").text
    _shoot(browser, "result")


def test_the_history_shows_a_patients_trend_plots(server, browser):
    from selenium.webdriver.common.by import By
    url, _ = server
    browser.get(url + "/history")
    browser.find_element(By.LINK_TEXT, PATIENT).click()
    plots = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "svg.trend"), timeout=20, driver=browser)
    assert len(plots) == 10
    assert all(plot.find_elements(By.TAG_NAME, "circle") for plot in plots)
    assert plots[0].size["width"] > 200                                   # drawn, not collapsed
    _shoot(browser, "patient")


def test_a_technician_logs_in_and_sees_qc(server, browser):
    from selenium.webdriver.common.by import By
    url, _ = server
    browser.get(url + "/tech")
    assert browser.current_url.endswith("/tech/login")
    browser.find_element(By.ID, "username").send_keys("tech-1")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    _wait(lambda: browser.current_url.endswith("/tech"), timeout=20, driver=browser)
    assert browser.find_element(By.ID, "qc-status").text == "Quality control passed."
    chart = browser.find_element(By.CSS_SELECTOR, "img.chart")
    _wait(lambda: int(chart.get_attribute("naturalWidth") or 0) > 1000)   # the Levey-Jennings PNG
    assert "firmware" in browser.find_element(By.ID, "device").text
    _shoot(browser, "technician")


def test_the_clinic_view_shows_alerts_newest_first_and_acknowledges_them(server, browser):
    from selenium.webdriver.common.by import By
    url, _ = server
    browser.get(url + "/clinic")                      # logged in by the technician test above
    assert "HOME-5" in [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#review td a")]
    items = browser.find_elements(By.CSS_SELECTOR, "#open-alerts li")
    home = [item.text for item in items if "HOME-5" in item.text]
    assert any("Very high glucose" in text and text.startswith("urgent") for text in home)
    _shoot(browser, "clinic")
    for remaining in range(len(items), 0, -1):
        browser.find_element(By.CSS_SELECTOR, "#open-alerts li button").click()
        _wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#open-alerts li")) == remaining - 1, timeout=20,
              driver=browser)
    assert browser.find_element(By.ID, "no-alerts").text == "No open alerts."


def test_the_server_log_names_no_patient(server, browser):
    url, log = server
    browser.get(url + f"/patients/{PATIENT}")
    browser.get(url + f"/api/results?patient={PATIENT}")
    text = log.read_text()
    assert "session completed" in text and PATIENT not in text and "HOME-5" not in text
