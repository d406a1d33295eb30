"""The status page in a real browser: Debian's chromium and chromium-driver, driven by selenium.

    bash scripts/test.sh --browser      (installs chromium and chromium-driver if they are missing)

A model whose labels include markup is trained and served; headless chromium loads the page,
types a text, submits it and reads the rendered top label, which must equal the gRPC answer, and
the words marked in the text, which must be those gRPC's explanation names;
the report's figures must load as real PNGs; labels must show as text (no script runs). A
second server requires a bearer token: the page asks for it and then shows the models.
"""

from __future__ import annotations

import csv
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

from conftest import WORDNET_SAMPLE, ServerProcess, _train, start_server

pytestmark = pytest.mark.browser

SCRIPT_LABEL = '<script>document.title="pwned"</script>'
BOLD_LABEL = "<b>noun.animal</b>"
TEXT = "a small domesticated feline that purrs"


@pytest.fixture(scope="module")
def markup_repository(glove_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The WordNet sample with two categories renamed to labels that are markup."""
    folder = tmp_path_factory.mktemp("markup")
    with open(WORDNET_SAMPLE, newline="", encoding="utf-8") as source, \
            open(folder / "data.csv", "w", newline="", encoding="utf-8") as target:
        writer = csv.writer(target)
        writer.writerow(["label", "text"])
        for row in csv.DictReader(source):
            label = {"noun.artifact": SCRIPT_LABEL, "noun.animal": BOLD_LABEL}.get(row["label"], row["label"])
            writer.writerow([label, row["text"]])
    repository = folder / "repository"
    _train(glove_store, repository, "markup", "frozen", data=folder / "data.csv")
    return repository


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "install Debian's chromium and chromium-driver (scripts/test.sh --browser does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2200"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 60, poll_frequency=0.1).until(condition, what)


def _top_label(server: ServerProcess, model: str, text: str) -> str:
    with grpc.insecure_channel(server.target) as channel:
        answer = pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(model=model, texts=[text]))
    return str(answer.results[0].labels[0].label)


def _explained_words(server: ServerProcess, model: str, text: str) -> set[str]:
    with grpc.insecure_channel(server.target) as channel:
        answer = pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(model=model, texts=[text], explain=5))
    return {word.word for word in answer.results[0].explanation.words}


def test_the_page_classifies_shows_the_report_and_escapes_labels(
        markup_repository: Path, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    server = start_server(markup_repository, tmp_path / "server.log")
    try:
        browser.get(f"http://127.0.0.1:{server.http_port}/")
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card[data-model='markup']"), "the model card")
        chips = [chip.text for chip in browser.find_elements(By.CSS_SELECTOR, ".label-chip")]
        assert SCRIPT_LABEL in chips and BOLD_LABEL in chips  # markup shown as text

        box = browser.find_element(By.ID, "texts")
        box.clear()
        box.send_keys(TEXT)
        browser.find_element(By.ID, "classify").click()
        top = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".answer .top"), "an answer")[0]
        expected = _top_label(server, "markup", TEXT)
        assert top.get_attribute("data-label") == expected
        assert top.text.startswith(expected)
        bars = browser.find_elements(By.CSS_SELECTOR, ".answer .bar-name")
        assert len(bars) == 10 and SCRIPT_LABEL in [bar.text for bar in bars]
        # "why" is on: the words gRPC's explanation names are marked in the text, strongest first.
        named = _explained_words(server, "markup", TEXT)
        marks = browser.find_elements(By.CSS_SELECTOR, ".answer .text mark")
        assert [mark.get_attribute("data-word") for mark in marks] == [w for w in TEXT.split() if w in named]
        assert browser.find_element(By.CSS_SELECTOR, ".answer .text").text == TEXT

        # The report's figures: loaded in the page, and real PNGs over HTTP.
        images = _wait(browser, lambda d: [i for i in d.find_elements(By.CSS_SELECTOR, "img[data-figure]")
                                           if d.execute_script("return arguments[0].naturalWidth", i) > 0],
                       "report figures rendered")
        names = {image.get_attribute("data-figure") for image in images}
        assert {"confusion.png", "training_curves.png", "reliability.png"} <= names
        for name in names:
            url = f"http://127.0.0.1:{server.http_port}/ui/api/models/markup/versions/1/figures/{name}"
            with urllib.request.urlopen(url, timeout=30) as response:
                body = response.read()
                assert response.status == 200 and response.headers["Content-Type"] == "image/png"
            assert len(body) > 1000 and body.startswith(b"\x89PNG\r\n\x1a\n")

        # Live figures count the page's own call.
        live = "#live tbody tr[data-model='markup']"
        row = _wait(browser, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, live)
                                        if int(r.find_elements(By.TAG_NAME, "td")[-1].text) >= 1], "live figures")[0]
        assert row.find_elements(By.TAG_NAME, "td")[0].text == "markup"

        # No label ran as a script or became markup.
        assert browser.title == "tlserve"
        assert browser.execute_script("return document.querySelectorAll('script').length") == 1  # page.js only
        assert browser.execute_script("return document.querySelectorAll("
                                      "'.labels b, .labels script, .answer b, .answer script').length") == 0
        screenshot = tmp_path / "page.png"
        browser.save_screenshot(str(screenshot))
        assert screenshot.read_bytes().startswith(b"\x89PNG")
        if os.environ.get("TLSERVE_PAGE_SCREENSHOT"):
            shutil.copy(screenshot, os.environ["TLSERVE_PAGE_SCREENSHOT"])
    finally:
        assert server.stop() == 0


def test_the_page_asks_for_the_token_and_then_shows_the_models(
        markup_repository: Path, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    server = start_server(markup_repository, tmp_path / "server.log", "--auth-token", "s3cret-token")
    try:
        browser.get(f"http://127.0.0.1:{server.http_port}/")
        browser.execute_script("sessionStorage.clear()")
        browser.refresh()
        form = _wait(browser, lambda d: [f for f in d.find_elements(By.ID, "token-form") if f.is_displayed()],
                     "the token form")[0]
        assert not browser.find_elements(By.CSS_SELECTOR, ".card")
        browser.find_element(By.ID, "token").send_keys("s3cret-token")
        form.find_element(By.TAG_NAME, "button").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card[data-model='markup']"), "the models")
    finally:
        assert server.stop() == 0
