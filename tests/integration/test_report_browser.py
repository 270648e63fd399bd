"""The HTML report in a real browser: Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium, headless, offline (no network flags), on the report of the session's tiny study
(conftest ``tiny_study_run``).

What a reader does and sees: the report opens on the study's description with the answer
(winners or "No winner") and a link to the summary; the first result category ``1 Summary``
holds the one-page summary, which shows the verdict table (a row per variant of the last
stage, with its p-value columns), every gate's decision with a reason per variant, the
val_loss-by-stage figure (decoded: natural width > 0) and the compute table; the figure also
opens on its own; the browser console has no errors. At 1280 x 800 the summary (on its own
and in the report's iframe) has no horizontal scroll and no table row taller than 60 px, and
the verdict column holds a short word with its sentence on hover and below the table.

Skips only when chromium, chromedriver or Selenium is missing AND ``STAGERUN_REQUIRE_BROWSER``
is unset; ``.ci/run`` installs them and sets it, so in CI a missing browser fails.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
except ImportError:
    selenium = None

_MISSING = [name for name, found in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER), ("selenium", selenium))
            if not found]
if _MISSING and os.environ.get("STAGERUN_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"STAGERUN_REQUIRE_BROWSER=1 but {', '.join(_MISSING)} missing "
                       "(apt-get install chromium chromium-driver; pip install selenium)")
pytestmark = [
    pytest.mark.skipif(bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed (.ci/run installs them)"),
    pytest.mark.timeout(900),
]


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """Headless chromium through chromedriver (no Selenium Manager download), fresh profile,
    console messages recorded."""
    from selenium import webdriver

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not reach the network
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def _image_decoded(driver, element) -> bool:
    return driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element)


def test_report_opens_on_the_answer_and_the_summary_renders(tiny_study_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    _, results, _, report = tiny_study_run
    verdict = json.loads((results / "verdict.json").read_text())
    gates = {p.stem.removeprefix("gate_"): json.loads(p.read_text()) for p in sorted((results / "gates").glob("gate_*.json"))}
    wait = WebDriverWait(browser, 60)

    browser.get(report.as_uri())
    summary_link = wait.until(EC.element_to_be_clickable((By.XPATH, "//nav//a[normalize-space()='1 Summary']")))
    # The landing page: the study and its answer, before any click.
    landing = browser.find_element(By.CSS_SELECTOR, "div.prose").get_attribute("textContent")
    assert "tiny" in landing and "shakespeare_char" in landing
    answer = "Winner" if verdict["winners"] else "No winner"
    assert answer in landing and all(w in landing for w in verdict["winners"]), landing
    # The first category in the menu is the summary.
    menu = [a.text for a in browser.find_elements(By.XPATH, "//nav//li//a") if a.text.strip()]
    results_menu = menu[menu.index("1 Summary"):]
    assert results_menu[0] == "1 Summary" and "2 Stages" in results_menu, menu

    summary_link.click()
    row = wait.until(EC.presence_of_element_located((By.XPATH, "//tr[td[contains(., '1. one-page summary')]]")))
    row.find_element(By.CSS_SELECTOR, "a[type=button]").click()
    frame = wait.until(EC.presence_of_element_located((By.TAG_NAME, "iframe")))
    browser.switch_to.frame(frame)
    wait.until(EC.presence_of_element_located((By.ID, "verdict-table")))

    # Verdict: one row per variant of the last stage, with the p-value columns, winners named.
    heads = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#verdict-table thead th")]
    assert "variant" in heads and any("p_value" in h for h in heads), heads
    rows = browser.find_elements(By.CSS_SELECTOR, "#verdict-table tbody tr")
    assert sorted(r.find_element(By.TAG_NAME, "td").text for r in rows) == sorted(e["variant"] for e in verdict["results"])
    assert browser.find_element(By.ID, "answer").text.startswith(answer)
    # Gates: every decision with its reason per variant.
    for stage, gate in gates.items():
        table = browser.find_element(By.ID, f"gate-{stage}")
        text = table.text
        for entry in gate["ranking"]:
            assert entry["variant"] in text and entry["reason"][:40] in text, (stage, entry["reason"])
    # The figure is decoded, the compute table has the staged and naive rows.
    figure = browser.find_element(By.ID, "val-loss-figure")
    assert _image_decoded(browser, figure) and figure.size["width"] > 100
    compute = browser.find_element(By.ID, "compute-table").text
    assert "staged total" in compute and "naive" in compute
    browser.switch_to.default_content()

    # The val_loss figure also opens on its own from the category.
    browser.find_element(By.XPATH, "//nav//a[normalize-space()='1 Summary']").click()
    row = wait.until(EC.presence_of_element_located((By.XPATH, "//tr[td[contains(., '3. val_loss by stage')]]")))
    row.find_element(By.CSS_SELECTOR, "a[type=button]").click()
    image = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "img[src^='data:image/png']")))
    wait.until(lambda d: _image_decoded(d, image))

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


#: The summary page must fit a laptop screen: this window, no horizontal scroll, no tall rows.
SCREEN = (1280, 800)
MAX_ROW_PX = 60

_LAYOUT = """
const doc = document.documentElement;
return {inner: window.innerWidth, scroll: doc.scrollWidth, client: doc.clientWidth,
        rows: [...document.querySelectorAll('table')].flatMap(t => [...t.rows].map(
            r => [t.id, r.rowIndex, Math.round(r.getBoundingClientRect().height), r.innerText.slice(0, 80)])),
        tables: [...document.querySelectorAll('div.table')].map(
            d => [d.firstElementChild.id, d.scrollWidth, d.clientWidth])};
"""


def _check_fits(layout: dict, where: str) -> None:
    assert layout["scroll"] <= layout["client"], (where, "horizontal scroll", layout["scroll"], layout["client"])
    wide = [t for t in layout["tables"] if t[1] > t[2]]
    assert not wide, (where, "tables wider than the page (own scroll bar)", wide)
    tall = [r for r in layout["rows"] if r[2] > MAX_ROW_PX]
    assert not tall, (where, f"table rows taller than {MAX_ROW_PX} px", tall)


def test_summary_fits_a_1280_by_800_screen(tiny_study_run, browser, tmp_path):
    """At 1280 x 800 the summary (on its own and inside the report) has no horizontal scroll
    and no table row taller than 60 px; the verdict column holds a short word whose full
    sentence is its hover text (title) and is listed below the table."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    _, results, _, report = tiny_study_run
    verdict = json.loads((results / "verdict.json").read_text())
    browser.set_window_size(*SCREEN)
    wait = WebDriverWait(browser, 60)

    # summary.html on its own, as the report's iframe loads it
    browser.get((results / "summary.html").as_uri())
    wait.until(EC.presence_of_element_located((By.ID, "verdict-table")))
    layout = browser.execute_script(_LAYOUT)
    assert layout["inner"] == SCREEN[0], layout["inner"]
    assert layout["rows"], "no table rows measured"
    _check_fits(layout, "summary.html")
    screenshot = tmp_path / "summary-1280x800.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")

    # the verdict: a short word per variant, its sentence on hover and in the list below
    sentences = {e["variant"]: e["verdict"] for e in verdict["results"]}
    words = {"reference", "WINNER", "disqualified", "seed ignored", "cannot win", "not testable",
             "significant, no win", "not significant"}
    cells = browser.find_elements(By.CSS_SELECTOR, "#verdict-table tbody td.word")
    assert len(cells) == len(sentences)
    for cell in cells:
        variant = cell.find_element(By.XPATH, "./parent::tr/td[1]").text
        assert cell.text in words, cell.text
        assert cell.get_attribute("title") == sentences[variant]
        assert (cell.text == "WINNER") == (variant in verdict["winners"])
    listed = browser.find_element(By.ID, "verdict-reasons").text
    assert all(f"{v}: {s}" in listed for v, s in sentences.items()), listed

    # the same page inside the report (the summary category's iframe)
    browser.get(report.as_uri())
    wait.until(EC.element_to_be_clickable((By.XPATH, "//nav//a[normalize-space()='1 Summary']"))).click()
    row = wait.until(EC.presence_of_element_located((By.XPATH, "//tr[td[contains(., '1. one-page summary')]]")))
    row.find_element(By.CSS_SELECTOR, "a[type=button]").click()
    frame = wait.until(EC.presence_of_element_located((By.TAG_NAME, "iframe")))
    top = browser.execute_script(_LAYOUT)
    assert top["scroll"] <= top["client"], ("report", top["scroll"], top["client"])
    browser.switch_to.frame(frame)
    wait.until(EC.presence_of_element_located((By.ID, "verdict-table")))
    _check_fits(browser.execute_script(_LAYOUT), "summary in the report's iframe")
    browser.switch_to.default_content()
