"""The web interface in a real browser (issue 19): Debian's headless Chromium driven by Selenium
against `stripread serve --simulate` in a subprocess, at the reader's 800x480 screen and a 390x844
phone. A patient's test from the start page to its result (with JavaScript and without), the QC
lock met before Start, a technician's QC run from the page, a nurse's clinic view, the trend
plots, and on every page: no sideways scroll, no text under 14 px, no tap target under 44 px, and
no serious or critical violation reported by axe-core (a maintained accessibility checker, run in
the same browser). No patient id in the server's log.

Chromium and ChromeDriver come from Debian (`chromium`, `chromium-driver`; Chinese pages need its
`fonts-noto-cjk`), axe-core from the npm
registry (`npm pack axe-core`, cached under ~/.cache/stripread); when they are missing and the tests
run as root (CI), they are installed here (apt-get, then npm). With STRIPREAD_SCREENSHOTS=<folder>
each page is saved there, whole, at both sizes (`<page>-reader.png`, `<page>-phone.png`).
"""
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
AXE_VERSION = "4.14.1"
AXE_CACHE = Path.home() / ".cache" / "stripread" / f"axe-core-{AXE_VERSION}" / "axe.min.js"
PATIENT, PASSWORD = "P-7788", "a long technician password"
SCREENSHOTS = os.environ.get("STRIPREAD_SCREENSHOTS")
SIZES = {"reader": (800, 480), "phone": (390, 844)}
CONTACT = "Ward 3 technician, phone 0123 456 789"

# Every visible problem a page has at the current size: sideways scroll, text under 14 px (SVG text
# at its rendered size), tap targets under 44 px (links, buttons, fields, disclosure summaries).
LAYOUT_JS = """
const problems = [];
const root = document.documentElement;
if (root.scrollWidth > window.innerWidth) problems.push(`scrolls sideways: ${root.scrollWidth} > ${window.innerWidth}`);
const shown = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0 &&
                      getComputedStyle(el).visibility !== 'hidden'; };
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  const el = node.parentElement;
  if (!node.textContent.trim() || !el || !shown(el) || el.closest('title, noscript')) continue;
  let size = parseFloat(getComputedStyle(el).fontSize);
  if (el instanceof SVGElement) size *= el.getScreenCTM().a;
  if (size < 13.95) problems.push(`text ${size.toFixed(1)} px: ${node.textContent.trim().slice(0, 40)}`);
}
for (const el of document.querySelectorAll('a, button, input:not([type=hidden]), summary, select, textarea')) {
  if (!shown(el)) continue;
  const r = el.getBoundingClientRect();
  if (r.height < 44 || r.width < 44) problems.push(`target ${Math.round(r.width)}x${Math.round(r.height)}: ${(el.textContent || el.id).trim().slice(0, 40)}`);
}
return problems;
"""
AXE_JS = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations
  .filter(v => v.impact === 'serious' || v.impact === 'critical')
  .map(v => `${v.id} (${v.impact}): ${v.nodes.map(n => n.target.join(' ')).slice(0, 3).join(', ')}`)));
"""


def _ensure_chromium() -> None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        _apt_install("chromium", "chromium-driver")
    if not list(Path("/usr/share/fonts").glob("**/NotoSansCJK-Regular.ttc")):     # Chinese glyphs, not boxes
        _apt_install("fonts-noto-cjk")


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"Debian's {', '.join(packages)} not installed (apt-get install {' '.join(packages)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env, capture_output=True)


def _axe_source() -> str:
    """axe-core's browser bundle, fetched once from the npm registry with npm's own client."""
    if not AXE_CACHE.is_file():
        if not shutil.which("npm"):
            _apt_install("npm")
        with tempfile.TemporaryDirectory() as folder:
            packed = subprocess.run(["npm", "pack", f"axe-core@{AXE_VERSION}", "--pack-destination", folder],
                                    capture_output=True, text=True, timeout=300)
            if packed.returncode != 0:
                pytest.fail(f"npm could not fetch axe-core {AXE_VERSION} from the npm registry: {packed.stderr[-500:]}")
            with tarfile.open(Path(folder) / f"axe-core-{AXE_VERSION}.tgz") as archive:
                source = archive.extractfile("package/axe.min.js").read()
        AXE_CACHE.parent.mkdir(parents=True, exist_ok=True)
        AXE_CACHE.write_bytes(source)
    return AXE_CACHE.read_text(encoding="utf-8")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The simulated reader with its web interface, a technician and a nurse, one passing QC run,
    and two stored readings that raise urgent alerts (one of a home patient, one with no patient)."""
    _ensure_chromium()
    folder = tmp_path_factory.mktemp("web")
    db, port = folder / "results.db", _free_port()
    cli = [sys.executable, "-m", "device.cli.commands"]
    (folder / "password").write_text(PASSWORD)
    for name, role in (("tech-1", "technician"), ("nurse-1", "nurse")):
        subprocess.run(cli + ["user", name, "--role", role, "--password-file", str(folder / "password"),
                              "--db", str(db)], check=True, capture_output=True)
    seeded = _seed_alerts(db)
    control = folder / "negative.jpg"
    control.write_bytes(_negative_control_photo())
    subprocess.run(cli + ["qc", "run", "--control", "negative", "--photo", str(control), "--db", str(db)], check=True,
                   capture_output=True)
    log = open(folder / "server.log", "w+")
    process = subprocess.Popen(cli + ["serve", "--simulate", "--speed", "6", "--web", f"127.0.0.1:{port}",
                                      "--db", str(db), "--contact", CONTACT],
                               stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, STRIPREAD_DATA=str(folder)))
    deadline = time.monotonic() + 60
    while "web interface ready" not in (folder / "server.log").read_text():
        assert process.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()
        time.sleep(0.2)
    yield {"url": f"http://127.0.0.1:{port}", "log": folder / "server.log", "db": db, "seeded": seeded}
    process.terminate()
    process.wait(20)
    log.close()


def _seed_alerts(db) -> dict:
    """A home patient's reading with very high glucose, and one with glucose and ketones that no
    patient is linked to, stored as the reader stores them: their record numbers."""
    from device.monitoring.alerts import judge, load_rules
    from device.store.results import ResultStore
    from labdata import RESULT

    def reading(**levels):
        return {**RESULT, "analytes": [dict(a, level=levels[a["analyte"]][0], value=levels[a["analyte"]][1],
                                            flags=["abnormal"], confidence=0.95) if a["analyte"] in levels else a
                                       for a in RESULT["analytes"]]}
    with ResultStore(db) as store:
        home = store.add(reading(GLU=("1000", 990.0)), patient_id="HOME-5", judge=judge(load_rules())).seq
        unlinked = store.add(reading(GLU=("1000", 883.5), KET=("moderate", 40.0)), judge=judge(load_rules())).seq
    return {"home": home, "unlinked": unlinked}


def _negative_control_photo() -> bytes:
    from calibration.in_force import find_control
    from simulator.scene import photograph, random_scene
    control, _ = find_control("negative")
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
                 "--window-size=800,600", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(2)
    driver.axe = _axe_source()
    _size(driver, "reader")
    yield driver
    driver.quit()


def _size(driver, label: str, height: int | None = None) -> None:
    """The viewport exactly: the reader's screen or a phone (a phone's layout viewport, too)."""
    width, screen = SIZES[label]
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height or screen, "deviceScaleFactor": 1, "mobile": label == "phone"})


def _wait(condition, timeout=90, driver=None):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except (NoSuchElementException, StaleElementReferenceException):   # the page was changing
            result = None
        if result:
            return result
        time.sleep(0.25)
    page = driver.find_element("tag name", "body").text if driver else ""
    raise AssertionError(f"timed out; the page said: {page[:500]}")


def _check_page(driver, name: str, first_screen: tuple[str, ...] = ()) -> None:
    """At both sizes: the layout rules, the elements that must be on the first screen (their
    bottom edge inside the viewport without scrolling), axe-core; then a screenshot of each."""
    problems = []
    for label, (_, height) in SIZES.items():
        _size(driver, label)
        driver.refresh() if label == "phone" else None
        driver.execute_script("window.scrollTo(0, 0)")
        problems += [f"{label}: {p}" for p in driver.execute_script(LAYOUT_JS)]
        for selector in first_screen:
            bottom = driver.execute_script(f"return document.querySelector('{selector}').getBoundingClientRect().bottom")
            if bottom > height:
                problems.append(f"{label}: {selector} ends at {bottom:.0f} px, below the first screen ({height} px)")
        driver.execute_script(driver.axe)
        problems += [f"{label}: axe {v}" for v in driver.execute_async_script(AXE_JS)]
        _shoot(driver, name, label)
    _size(driver, "reader")
    assert not problems, f"{name} ({driver.current_url}):\n" + "\n".join(problems)


def _shoot(driver, name: str, label: str) -> None:
    if not SCREENSHOTS:
        return
    Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    _size(driver, label, max(SIZES[label][1], min(height, 2400)))
    driver.save_screenshot(str(Path(SCREENSHOTS) / f"{name}-{label}.png"))
    _size(driver, label)


def _expected_alert_titles(db, seq: int) -> set[str]:
    """What the alert rules say about a stored reading, computed here from the store itself."""
    from device.monitoring.alerts import load_rules, reading_alerts
    from device.store.results import ResultStore
    with ResultStore(db) as store:
        record = store.get(seq)
        history = [record] if record.patient_id is None else \
            [r for r in reversed(store.history(record.patient_id, 200)) if r.seq <= seq]
    return {alert.title for alert in reading_alerts(load_rules(), history)}


def _shown_alert_titles(driver) -> set[str]:
    from selenium.webdriver.common.by import By
    return {el.text.rstrip(".") for el in driver.find_elements(By.CSS_SELECTOR, "#safety .alert[data-severity] strong")}


def _start_a_test(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    driver.get(url + "/test")
    driver.find_element(By.ID, "patient_id").send_keys(PATIENT)
    driver.find_element(By.ID, "start").click()
    _wait(lambda: "/test/live" in driver.current_url, timeout=20, driver=driver)


# -- a patient --------------------------------------------------------------------------------------------------

def test_the_home_and_start_pages(server, browser):
    from selenium.webdriver.common.by import By
    browser.get(server["url"] + "/")
    _check_page(browser, "home")
    browser.find_element(By.LINK_TEXT, "Start a test").click()
    assert browser.find_element(By.ID, "start").is_enabled()
    _check_page(browser, "start", first_screen=("#start",))


def test_a_test_counts_down_by_pad_and_ends_on_its_result_with_its_verdict_first(server, browser):
    from selenium.webdriver.common.by import By
    url = server["url"]
    _start_a_test(browser, url)
    pending = _wait(lambda: [text for text in browser.execute_script(
        "return [...document.querySelectorAll('#windows li.pending')].map(li => li.textContent)")
        if ": read in " in text], driver=browser)
    assert any("Sugar (glucose)" in text for text in pending) or "White blood cells: read in " in pending[-1]
    assert "s left in all" in browser.find_element(By.ID, "total").text
    _wait(lambda: browser.find_element(By.ID, "preview").get_attribute("naturalWidth") not in (None, "0"),
          driver=browser)
    browser.get(url + "/test")                                  # Start again: offered the running test back
    assert browser.find_element(By.ID, "back-to-test").is_displayed()
    browser.find_element(By.ID, "back-to-test").click()
    _check_page(browser, "live", first_screen=("#windows", "#cancel"))
    _wait(lambda: "/results/" in browser.current_url, driver=browser)
    rows = browser.find_elements(By.CSS_SELECTOR, "table.pads tbody tr")
    assert len(rows) == 10
    assert all(int(img.get_attribute("naturalWidth")) > 0 for img in browser.find_elements(By.CSS_SELECTOR, "img.crop"))
    verdict = browser.find_element(By.ID, "verdict").text
    assert verdict.startswith("All results are in the normal range") or "need" in verdict or "could not" in verdict
    seq = int(browser.current_url.rsplit("/", 1)[1])
    assert _shown_alert_titles(browser) == _expected_alert_titles(server["db"], seq)
    first = ("#verdict", "#attention") if browser.find_elements(By.ID, "attention") else ("#verdict",)
    _check_page(browser, "result", first_screen=first)


def test_the_live_page_works_without_javascript(server, browser):
    """With scripts off the page refreshes itself (a <noscript> meta refresh) until the result opens."""
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        _start_a_test(browser, server["url"])
        _wait(lambda: "/results/" in browser.current_url, driver=browser)
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})


def test_every_reading_that_raises_an_alert_shows_it_with_or_without_a_patient(server, browser):
    from selenium.webdriver.common.by import By
    url, seeded = server["url"], server["seeded"]
    browser.get(url + f"/results/{seeded['unlinked']}")
    assert "not linked to a patient" in browser.find_element(By.ID, "unlinked").text
    assert _shown_alert_titles(browser) == _expected_alert_titles(server["db"], seeded["unlinked"]) == {
        "Very high glucose in the urine", "Ketones with glucose in the urine (possible ketoacidosis)",
        "Signs of a urinary tract infection"}
    assert "Your clinic has been told" not in browser.find_element(By.TAG_NAME, "main").text
    _check_page(browser, "result-unlinked", first_screen=("#verdict", "#attention"))
    browser.get(url + f"/results/{seeded['home']}")
    assert "Very high glucose in the urine" in _shown_alert_titles(browser)
    assert "does not send results to a clinic" in browser.find_element(By.ID, "safety").text   # no lab here


def test_the_history_and_a_patients_trend_plots(server, browser):
    from selenium.webdriver.common.by import By
    url = server["url"]
    browser.get(url + "/history")
    _check_page(browser, "history")
    browser.find_element(By.ID, "p").send_keys(PATIENT)
    browser.find_element(By.CSS_SELECTOR, "form.inline button").click()          # no script needed
    plots = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "svg.trend"), timeout=20, driver=browser)
    assert len(plots) == 10 and all(len(plot.find_elements(By.TAG_NAME, "circle")) == 2 for plot in plots)
    assert plots[0].size["width"] > 300                                   # drawn, not collapsed
    browser.find_element(By.CSS_SELECTOR, "details summary").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "details[open] table.values tbody tr")) == 2
    _check_page(browser, "patient")


# -- staff ------------------------------------------------------------------------------------------------------

def _log_in(browser, url, name, path):
    from selenium.webdriver.common.by import By
    browser.get(url + path)
    _wait(lambda: "/tech/login" in browser.current_url, timeout=20, driver=browser)
    browser.find_element(By.ID, "username").send_keys(name)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    _wait(lambda: browser.current_url.endswith(path), timeout=20, driver=browser)


def _log_out(browser):
    """Log out and wait until the page says so: a test that navigates at once would race the logout."""
    from selenium.webdriver.common.by import By
    browser.find_element(By.CSS_SELECTOR, "form[action='/tech/logout'] button").click()
    _wait(lambda: not browser.find_elements(By.CSS_SELECTOR, "form[action='/tech/logout']"), timeout=20,
          driver=browser)


def test_a_nurse_reviews_the_clinic_and_acknowledges_an_urgent_alert_with_a_note_then_undoes_it(server, browser):
    from selenium.webdriver.common.by import By
    url = server["url"]
    browser.get(url + "/tech/login")
    _check_page(browser, "login")
    _log_in(browser, url, "nurse-1", "/clinic")             # "Clinic" from the patient's screen comes back here
    assert "HOME-5" in browser.find_element(By.ID, "review").text
    _check_page(browser, "clinic")
    urgent = next(item for item in browser.find_elements(By.CSS_SELECTOR, "#open-alerts > li")
                  if "HOME-5" in item.text and "Very high glucose" in item.text)
    note = urgent.find_element(By.NAME, "note")
    assert note.get_attribute("required") == "true"
    note.send_keys("phoned the patient: seen today")
    urgent.find_element(By.TAG_NAME, "button").click()
    done = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#acknowledged li"), timeout=20, driver=browser)
    assert "phoned the patient: seen today" in done[0].text and "nurse-1" in done[0].text
    done[0].find_element(By.TAG_NAME, "button").click()                    # undo
    _wait(lambda: "HOME-5" in browser.find_element(By.ID, "open-alerts").text, timeout=20, driver=browser)
    browser.get(url + "/tech")
    assert "for a technician" in browser.find_element(By.TAG_NAME, "main").text   # a nurse's account stops here
    _check_page(browser, "refused")
    browser.find_element(By.CSS_SELECTOR, "a[href='/clinic']").click()
    _log_out(browser)


def test_a_technician_runs_qc_from_the_page_and_sees_its_verdict(server, browser):
    from selenium.webdriver.common.by import By
    url = server["url"]
    _log_in(browser, url, "tech-1", "/tech")
    assert browser.find_element(By.ID, "qc-status").text == "Quality control passed."
    assert browser.find_elements(By.CSS_SELECTOR, "#qc svg.trend circle")     # Levey-Jennings plots, on the page
    png = browser.find_element(By.CSS_SELECTOR, "a.chart-link").get_attribute("href")
    assert "within the strips' range" in browser.find_element(By.ID, "device").text
    _check_page(browser, "technician")
    assert "Dip a strip in" in browser.find_element(By.ID, "qc").text
    browser.find_element(By.ID, "qc-negative").click()
    _wait(lambda: "/tech/qc/result/" in browser.current_url, driver=browser)
    assert browser.find_element(By.ID, "verdict").text.endswith("(negative): passed")
    seq = browser.current_url.split("/tech/qc/result/")[1].split("?")[0]
    _check_page(browser, "qc-result")
    browser.get(png)                                       # the printable chart
    assert int(browser.find_element(By.TAG_NAME, "img").get_attribute("naturalWidth")) > 1000
    browser.get(url + "/history")                          # the control strip is no patient's result
    assert not browser.find_elements(By.CSS_SELECTOR, f"#records a[href='/results/{seq}']")


def test_the_qc_lock_is_shown_before_start_with_whom_to_contact(server, browser):
    from device.store.records import Records
    from selenium.webdriver.common.by import By
    url = server["url"]
    with Records(server["db"]) as records:
        passing = records.latest("qc", "generic-10-neg")
        records.add("qc", "generic-10-neg", {**passing.payload, "passed": False,
                                             "run": {**passing.payload["run"], "summary": "out of range on GLU"}})
    try:
        for path in ("/", "/test"):
            browser.get(url + path)
            lock = browser.find_element(By.ID, "qc-lock")
            assert "Do not dip a strip yet" in lock.text and CONTACT in lock.text
            _check_page(browser, "locked-" + ("home" if path == "/" else "start"), first_screen=("#qc-lock",))
        assert not browser.find_element(By.ID, "start").is_enabled()
    finally:
        with Records(server["db"]) as records:
            records.add("qc", "generic-10-neg", passing.payload)


def test_the_server_log_names_no_patient(server, browser):
    url, log = server["url"], server["log"]
    browser.get(url + f"/patients/{PATIENT}")
    browser.get(url + f"/api/results?patient={PATIENT}")
    text = log.read_text()
    assert "session completed" in text and PATIENT not in text and "HOME-5" not in text


# -- Simplified Chinese, SI units, large text (issue 21) ------------------------------------------------------

def test_a_patient_and_a_nurse_in_chinese_with_si_units_and_large_text(server, browser):
    """The display switches on the page itself: Chinese and SI units for the live page, the result
    and the clinic; with large text the verdict and the pads needing attention stay on the first
    800x480 screen. Screenshots: `<page>-zh_CN-reader.png`, `<page>-zh_CN-phone.png`."""
    from selenium.webdriver.common.by import By
    url = server["url"]
    browser.get(url + "/")
    browser.find_element(By.ID, "lang-zh_CN").click()
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "zh-CN"
    assert browser.find_element(By.LINK_TEXT, "开始检测").is_displayed()
    try:
        _start_a_test(browser, url)
        _wait(lambda: "秒后读取" in browser.find_element(By.ID, "windows").text, driver=browser)
        assert "葡萄糖" in browser.find_element(By.ID, "windows").text
        _check_page(browser, "live-zh_CN", first_screen=("#windows", "#cancel"))
        _wait(lambda: "/results/" in browser.current_url, driver=browser)
        browser.find_element(By.ID, "style-si").click()                    # the result's own units switch
        assert "mmol/L" in browser.find_element(By.TAG_NAME, "main").text
        assert "mg/dL" not in browser.find_element(By.TAG_NAME, "main").text
        first = ("#verdict", "#attention") if browser.find_elements(By.ID, "attention") else ("#verdict",)
        _check_page(browser, "result-zh_CN", first_screen=first)
        browser.get(url + f"/results/{server['seeded']['unlinked']}")      # three alerts, four pads to look at
        browser.find_element(By.ID, "large-text").click()
        assert "large" in browser.find_element(By.TAG_NAME, "html").get_attribute("class")
        assert "尿糖极高" in browser.find_element(By.ID, "safety").text
        _check_page(browser, "result-large-zh_CN", first_screen=("#verdict", "#attention"))
        browser.find_element(By.ID, "large-text").click()
        browser.get(url + "/clinic")
        if "/tech/login" in browser.current_url:          # staff still logged in from an earlier test may look too
            _log_in(browser, url, "nurse-1", "/clinic")
        assert "需复核的患者" in browser.find_element(By.TAG_NAME, "h1").text
        assert "尿糖极高" in browser.find_element(By.ID, "open-alerts").text
        _check_page(browser, "clinic-zh_CN")
        _log_out(browser)
    finally:
        for switch in ("lang=en", "style=conventional", "large=0"):
            browser.get(url + f"/display?{switch}")
