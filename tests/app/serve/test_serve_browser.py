"""The three pages in a real browser: Debian's Chromium driven by Playwright against a real
``handgrad serve``. Digits of mnist-sample are traced onto the canvas with mouse strokes; a run
is started from the Train page and watched to its end. Screenshots of the pages are saved to
``$HANDGRAD_SCREENSHOTS`` (default: a temporary folder, printed), e.g. docs/img."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import digits

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError(
            "CI: the browser tests need Debian's chromium (apt-get install chromium)"
        )
    pytest.skip(
        "Chromium is not installed (apt-get install chromium); the browser tests run in CI",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")


@pytest.fixture(scope="module")
def page(server) -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("HANDGRAD_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


def trace(page, rows: list[list[float]]) -> None:
    """Draw the digit's ink (pixels above 0.4) row by row as mouse strokes, then wait until
    the page shows the prediction for the whole drawing."""
    page.click("#clear")
    box = page.locator("#board").bounding_box()
    side = box["width"] / 28
    for y, row in enumerate(rows):
        x = 0
        while x < 28:
            if row[x] > 0.4:
                start = x
                while x < 28 and row[x] > 0.4:
                    x += 1
                cy = box["y"] + (y + 0.5) * side
                page.mouse.move(box["x"] + (start + 0.5) * side, cy)
                page.mouse.down()
                page.mouse.move(box["x"] + (x - 0.5) * side, cy)
                page.mouse.up()
            x += 1
    page.wait_for_function("window.lab.shownSeq === window.lab.drawSeq && !window.lab.inFlight")


def canvases(page) -> dict[str, str]:
    return page.evaluate(
        """() => ({
            layers: [...document.querySelectorAll('#layers canvas')].map(c => c.toDataURL()).join(),
            saliency: document.getElementById('saliency').toDataURL(),
        })"""
    )


def test_draw_page_reads_real_digits(server, page, shots: Path) -> None:
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model-pick').options.length > 0")
    right, views = 0, []
    cases = digits(8, seed=3)
    for rows, label in cases:
        trace(page, rows)
        right += page.locator("#verdict").text_content() == str(label)
        views.append(canvases(page))
    assert right >= 6, f"{right} of {len(cases)} digits read right"
    assert views[0]["layers"] != views[1]["layers"]
    assert views[0]["saliency"] != views[1]["saliency"]
    before = canvases(page)["saliency"]  # another class: the gradient toward it
    other = (int(page.locator("#verdict").text_content()) + 3) % 10
    page.click(f".prob[data-k='{other}']")
    page.wait_for_function("window.lab.shownSeq === window.lab.drawSeq && !window.lab.inFlight")
    assert canvases(page)["saliency"] != before
    assert page.locator(".prob.target").get_attribute("data-k") == str(other)
    page.click(f".prob[data-k='{other}']")  # keep the target for the screenshot
    page.screenshot(path=str(shots / "draw.png"))
    page.click("#undo")
    page.click("#clear")
    page.wait_for_function("window.lab.shownSeq === window.lab.drawSeq")
    assert page.locator("#verdict").text_content() == "?"


def test_train_page_streams_a_run(server, live_runs: Path, page, shots: Path) -> None:
    page.goto(server.url + "/train")
    page.wait_for_function("document.getElementById('model').options.length > 0")
    page.fill("#epochs", "6")
    page.fill("#name", "from-the-page")
    page.click("#start")
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=90_000)
    updates = page.evaluate("window.trainView.updates")
    assert updates >= 5
    kinds = page.evaluate("window.trainView.events")
    assert kinds.count("epoch") == 6 and "stats" in kinds
    assert page.locator("#stats tbody tr").count() >= 3
    assert (live_runs / "from-the-page" / "metrics.json").is_file()
    assert (live_runs / "from-the-page" / "best.safetensors").is_file()
    page.screenshot(path=str(shots / "train.png"))


def test_runs_page_compares_runs(server, page, shots: Path) -> None:
    page.goto(server.url + "/runs")
    page.wait_for_function("document.querySelectorAll('#runs tbody tr').length >= 3")
    assert page.locator("#runs").get_by_text("from-the-page").count() == 1
    assert page.locator(".uplot").count() == 2
    page.screenshot(path=str(shots / "runs.png"), full_page=True)
    with page.expect_popup() as popup:
        page.locator("#runs a", has_text="report").first.click()
    report = popup.value
    report.wait_for_load_state()
    assert "valid_accuracy" in report.content()
    report.close()
