"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) against the real
service on 127.0.0.1. Each test saves a screenshot under its temporary directory."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from retrieval.models.bundle import BUNDLE_FILES, MODEL_FILE, sha256_file, write_manifest
from serve.app import create_app
from tests.support.service import API_KEY, LiveServer, png

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

UPLOAD_LIMIT = 20_000
WAIT_S = 120
PROBE_WAIT_S = 240


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no headless Chromium here: install Debian's chromium and chromium-driver (scripts/setup.sh does)")
    return chromium, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,1400", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for errors such as a 404
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page_server(make_settings) -> Iterator[LiveServer]:
    """Probes on, the test API key, and a small upload limit so that an oversized file is cheap to make."""
    with LiveServer(create_app(make_settings(max_upload_bytes=UPLOAD_LIMIT))) as live:
        live.wait_ready()
        yield live


@pytest.fixture()
def query_file(tmp_path, artifacts) -> Path:
    """A Fashion-MNIST test image (not in the gallery) as a PNG file."""
    path = tmp_path / "query.png"
    path.write_bytes(png(artifacts.queries[3]))
    return path


def _open(browser, server: LiveServer, width: int = 1200) -> None:
    browser.set_window_size(width, 1400)
    browser.get(server.url + "/")
    _wait(browser, lambda d: d.find_element(By.ID, "model-facts").is_displayed())


def _screenshot(browser, path: Path) -> None:
    """The whole page: the window grows to the document's height first."""
    width = browser.get_window_size()["width"]
    browser.set_window_size(width, browser.execute_script("return document.documentElement.scrollHeight") + 140)
    browser.save_screenshot(str(path))


def _wait(browser, condition, timeout: float = WAIT_S):
    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.1).until(condition)
    except TimeoutException:
        shown = browser.execute_script(
            "return ['model-status', 'search-error', 'probe-error', 'probe-status']"
            ".map(id => id + ': ' + document.getElementById(id).textContent).join('; ');")
        raise AssertionError(f"the page did not get there within {timeout} s; it shows {shown}") from None


def _choose(browser, path: Path) -> None:
    browser.find_element(By.ID, "image-input").send_keys(str(path))


def _fill(browser, element_id: str, value: str) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def _images_loaded(browser, selector: str) -> bool:
    return browser.execute_script(
        "const imgs = [...document.querySelectorAll(arguments[0])];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);", selector)


def _hits(browser, list_id: str) -> list[dict]:
    return browser.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' li.hit')].map(li => ({"
        "id: Number(li.dataset.id), label: li.dataset.label, class_name: li.dataset.className,"
        "shown: li.querySelector('.label').textContent, moved: li.dataset.moved || '',"
        "alt: li.querySelector('img') ? li.querySelector('img').alt : ''}));", list_id)


def _pixels(browser, image_id: str) -> np.ndarray:
    """The pixels of an <img> whose source is a data: URL (the probe's pictures), as uint8 [H, W, C]."""
    source = browser.find_element(By.ID, image_id).get_attribute("src")
    assert source.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
    return np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)


def _error(browser, box_id: str, timeout: float = WAIT_S) -> str:
    box = browser.find_element(By.ID, box_id)
    _wait(browser, lambda d: box.is_displayed() and box.text, timeout)
    return box.text


def test_search_shows_k_thumbnails_with_class_names_of_search(browser, page_server, query_file, tmp_path):
    _open(browser, page_server)
    assert browser.find_element(By.ID, "model-method").text == "N/A[R]"
    assert browser.find_element(By.ID, "index-facts").text.startswith("1,000 items, flat")
    _choose(browser, query_file)
    _fill(browser, "top-k", "6")
    browser.find_element(By.ID, "search-button").click()
    _wait(browser, lambda d: len(_hits(d, "search-results")) == 6 and _images_loaded(d, "#search-results img"))
    assert _images_loaded(browser, "#query-preview")
    shown = _hits(browser, "search-results")
    expected = httpx.post(f"{page_server.url}/search", files={"image": ("q.png", query_file.read_bytes(), "image/png")},
                          data={"top_k": "6"}).json()["results"]
    assert [h["id"] for h in shown] == [r["id"] for r in expected]
    assert [h["label"] for h in shown] == [str(r["label"]) for r in expected]
    assert [h["shown"] for h in shown] == [r["class_name"] for r in expected] and expected[0]["class_name"]
    assert all(h["alt"] == f"Gallery item {h['id']}, {h['class_name']} (label {h['label']})" for h in shown)
    _screenshot(browser, tmp_path / "search.png")


def test_probe_shows_both_images_and_a_changed_ranking(browser, page_server, query_file, tmp_path):
    _open(browser, page_server)
    _choose(browser, query_file)
    _fill(browser, "top-k", "5")
    _fill(browser, "api-key", API_KEY)
    browser.find_element(By.CSS_SELECTOR, "#attack option[value='GTT']").click()
    _fill(browser, "eps", "77")
    _fill(browser, "steps", "32")
    browser.find_element(By.ID, "probe-button").click()
    _wait(browser, lambda d: d.find_element(By.ID, "probe-output").is_displayed()
          or d.find_element(By.ID, "probe-error").is_displayed(), PROBE_WAIT_S)
    assert not browser.find_element(By.ID, "probe-error").is_displayed(), browser.find_element(By.ID, "probe-error").text
    _wait(browser, lambda d: _images_loaded(d, "#probe-output img.pixels") and _images_loaded(d, "#probe-output .hit img"))
    sizes = browser.execute_script(
        "return ['probe-clean', 'probe-adversarial', 'probe-perturbation'].map(id => document.getElementById(id).naturalWidth);")
    assert sizes == [28, 28, 28]
    clean, attacked = _hits(browser, "probe-clean-hits"), _hits(browser, "probe-adversarial-hits")
    assert len(clean) == len(attacked) == 5
    assert clean[0]["id"] != attacked[0]["id"]
    assert browser.find_element(By.ID, "probe-changed").text == "yes"
    assert int(browser.find_element(By.ID, "probe-rank-after").text) > 1
    assert browser.find_element(By.ID, "probe-min-eps").text.endswith("/255")
    before = {h["id"]: rank for rank, h in enumerate(clean, start=1)}
    after = {h["id"]: rank for rank, h in enumerate(attacked, start=1)}
    assert [h["moved"] for h in attacked] == [_expected_mark(before.get(h["id"]), after[h["id"]]) for h in attacked]
    assert [h["moved"] for h in clean] == ["" if h["id"] in after else "dropped out" for h in clean]
    assert any(hit["moved"] for hit in attacked)
    marks = browser.execute_script(  # the marking rule on rankings that also move items up and down
        "const clean = [1, 2, 3].map((id, i) => ({id, rank: i + 1}));"
        "const attacked = [2, 4, 1].map((id, i) => ({id, rank: i + 1}));"
        "const m = moves(clean, attacked);"
        "return [clean.map(m.cleanMark), attacked.map(m.attackedMark)];")
    assert marks == [["", "", "dropped out"], ["up 1", "new", "down 2"]]
    clean_px, adversarial_px, shown_px = (_pixels(browser, name) for name in
                                          ("probe-clean", "probe-adversarial", "probe-perturbation"))
    difference = adversarial_px.astype(int) - clean_px.astype(int)
    largest = int(np.abs(difference).max())
    assert 0 < largest <= 77
    assert f"(max {largest}/255)" in browser.find_element(By.ID, "perturbation-caption").text
    assert np.abs(shown_px[..., 0] - (128 + difference * 127 / largest)).max() <= 1  # amplified around mid-grey
    _screenshot(browser, tmp_path / "probe.png")
    # the key was entered once: a reload keeps it for this tab, and it never appears in the address
    browser.refresh()
    _wait(browser, lambda d: d.find_element(By.ID, "probe").is_displayed())
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == API_KEY
    assert API_KEY not in browser.current_url


def _expected_mark(rank_before: int | None, rank_after: int) -> str:
    if rank_before is None:
        return "new"
    shift = rank_before - rank_after
    return f"up {shift}" if shift > 0 else f"down {-shift}" if shift < 0 else ""


def test_wrong_key_shows_the_403_message(browser, page_server, query_file, tmp_path):
    _open(browser, page_server)
    _choose(browser, query_file)
    _fill(browser, "api-key", "not-the-key")
    _fill(browser, "steps", "4")
    browser.find_element(By.ID, "probe-button").click()
    text = _error(browser, "probe-error")
    _screenshot(browser, tmp_path / "wrong-key.png")
    assert text.startswith("403 wrong_key: wrong X-API-Key")
    assert browser.switch_to.active_element.get_attribute("id") == "api-key"
    browser.find_element(By.ID, "forget-key").click()
    assert browser.execute_script("return sessionStorage.length") == 0


def test_oversized_and_unsupported_files_show_the_api_messages(browser, page_server, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (160, 160), dtype=np.uint8)
    big = tmp_path / "big.png"
    Image.fromarray(noise).save(big)
    assert UPLOAD_LIMIT < big.stat().st_size < UPLOAD_LIMIT + 60_000  # above the image limit, within the body limit
    _open(browser, page_server)
    _choose(browser, big)
    browser.find_element(By.ID, "search-button").click()
    text = _error(browser, "search-error")
    _screenshot(browser, tmp_path / "too-large.png")
    assert text == f"413 image_too_large: image larger than {UPLOAD_LIMIT} bytes"
    tiff = tmp_path / "query.tiff"
    buffer = io.BytesIO()
    Image.fromarray(noise[:28, :28]).save(buffer, format="TIFF")
    tiff.write_bytes(buffer.getvalue())
    _choose(browser, tiff)
    browser.find_element(By.ID, "search-button").click()
    _wait(browser, lambda d: "415" in d.find_element(By.ID, "search-error").text)
    assert "415 unsupported_image_format" in browser.find_element(By.ID, "search-error").text


def test_page_is_labelled_and_fits_a_phone(browser, page_server, query_file, tmp_path):
    _open(browser, page_server, width=390)
    _choose(browser, query_file)
    browser.find_element(By.ID, "search-form").submit()
    _wait(browser, lambda d: _images_loaded(d, "#search-results img"))
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, select')].filter(e => e.labels.length === 0).map(e => e.id);")
    missing_alt = browser.execute_script(
        "return [...document.querySelectorAll('img')].filter(i => i.src && !i.alt).map(i => i.src);")
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth;")
    _screenshot(browser, tmp_path / "phone.png")
    assert unlabelled == [] and missing_alt == []
    assert overflow <= 0
    assert not browser.execute_script(
        "return [...document.querySelectorAll('script[src], link[href]')].some(e => /^https?:/.test(e.src || e.href)"
        " && !(e.src || e.href).startsWith(location.origin));")


def _search(browser, top_k: str) -> None:
    _fill(browser, "top-k", top_k)
    browser.find_element(By.ID, "search-button").click()


def _hold_requests(browser) -> None:
    """Requests the page makes from now on wait until _release_requests: what the page shows meanwhile is observable."""
    browser.execute_script(
        "const realFetch = window.fetch.bind(window);"
        "let release; const gate = new Promise(resolve => { release = resolve; });"
        "window.releaseRequests = release;"
        "window.fetch = (...args) => gate.then(() => realFetch(...args));")


def test_a_new_search_clears_the_previous_results_while_it_waits(browser, page_server, query_file):
    _open(browser, page_server)
    _choose(browser, query_file)
    _search(browser, "6")
    _wait(browser, lambda d: len(_hits(d, "search-results")) == 6)
    _hold_requests(browser)
    _search(browser, "3")
    assert _hits(browser, "search-results") == []  # cleared at once, before the answer
    assert not browser.find_element(By.ID, "search-output").is_displayed()
    browser.execute_script("window.releaseRequests();")
    _wait(browser, lambda d: len(_hits(d, "search-results")) == 3)


def test_an_error_replaces_the_results_instead_of_showing_above_them(browser, page_server, query_file, tmp_path):
    _open(browser, page_server)
    _choose(browser, query_file)
    _search(browser, "6")
    _wait(browser, lambda d: len(_hits(d, "search-results")) == 6)
    _search(browser, "100000")  # beyond the API's top_k limit
    text = _error(browser, "search-error")
    _screenshot(browser, tmp_path / "search-error.png")
    assert text.startswith("422 ")
    assert _hits(browser, "search-results") == []
    assert not browser.find_element(By.ID, "search-output").is_displayed()
    _search(browser, "4")  # and the next good answer replaces the error
    _wait(browser, lambda d: len(_hits(d, "search-results")) == 4)
    assert not browser.find_element(By.ID, "search-error").is_displayed()


def test_a_probe_error_replaces_the_previous_probe(browser, page_server, query_file):
    _open(browser, page_server)
    _choose(browser, query_file)
    _fill(browser, "top-k", "3")
    _fill(browser, "api-key", API_KEY)
    _fill(browser, "steps", "2")
    browser.find_element(By.ID, "probe-button").click()
    _wait(browser, lambda d: d.find_element(By.ID, "probe-output").is_displayed(), PROBE_WAIT_S)
    assert len(_hits(browser, "probe-clean-hits")) == 3
    _fill(browser, "api-key", "not-the-key")
    browser.find_element(By.ID, "probe-button").click()
    assert _error(browser, "probe-error").startswith("403 wrong_key")
    assert not browser.find_element(By.ID, "probe-output").is_displayed()
    assert _hits(browser, "probe-clean-hits") == [] and _hits(browser, "probe-adversarial-hits") == []
    browser.execute_script("sessionStorage.clear();")


def test_the_page_answers_head_and_has_an_icon_so_its_console_stays_clean(browser, page_server):
    head = httpx.head(f"{page_server.url}/")
    icon = httpx.get(f"{page_server.url}/favicon.ico")
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/html") and head.content == b""
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    browser.get_log("browser")  # drop what earlier tests left
    _open(browser, page_server)
    linked = browser.execute_script("return document.querySelector('link[rel=icon]').href;")
    assert httpx.get(linked).status_code == 200
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []


ROBUSTNESS = {
    "recall_at_1": 0.83, "map": 0.77, "queries": 256, "date": "2026-12-06T12:00:00Z",
    "protocols": {"rob28": {"ers": 40.1, "ers_interval": [38.0, 42.1], "attacker": "PGD 32 steps x 1 start"},
                  "strong": {"ers": 25.3, "ers_interval": [23.0, 27.5], "attacker": "APGD 100 steps x 2 starts"}},
}


@pytest.fixture(scope="module")
def measured_bundle(artifacts, tmp_path_factory) -> Path:
    """The test bundle with the robustness summary that `evaluate` records and `export` carries in config.json."""
    bundle = tmp_path_factory.mktemp("measured") / "bundle"
    shutil.copytree(artifacts.bundle, bundle)
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps(config | {"robustness": ROBUSTNESS}))
    write_manifest(bundle, BUNDLE_FILES, model_sha256=sha256_file(bundle / MODEL_FILE))
    return bundle


def test_the_model_panel_shows_each_measured_protocol_or_not_recorded(browser, page_server, make_settings,
                                                                      measured_bundle, tmp_path):
    _open(browser, page_server)
    assert browser.find_element(By.ID, "model-robustness").text == "not recorded"
    with LiveServer(create_app(make_settings(bundle=measured_bundle, enable_probe=False))) as live:
        live.wait_ready()
        _open(browser, live)
        _screenshot(browser, tmp_path / "robustness.png")
        lines = browser.find_element(By.ID, "model-robustness").text.splitlines()
    assert lines == ["ERS (rob28): 40.1 (38.0-42.1), PGD 32 steps x 1 start",
                     "ERS (strong): 25.3 (23.0-27.5), APGD 100 steps x 2 starts",
                     "256 queries, measured 2026-12-06"]
