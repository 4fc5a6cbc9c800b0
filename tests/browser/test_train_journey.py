"""The main journey in a real browser: demo data, default settings, train, watch, refresh."""

import re

import pytest

from browsertools import wait_for_app

pytestmark = pytest.mark.browser


def open_page(page, studio, path: str, token: str | None = None) -> None:
    page.goto(f"{studio}/{path}" + (f"?s={token}" if token else ""))
    page.wait_for_url(re.compile(r"[?&]s=[\w-]+"))  # the session link appears after the first run
    wait_for_app(page)


def test_demo_data_to_a_trained_model(studio, page):
    open_page(page, studio, "data")
    token = re.search(r"[?&]s=([\w-]+)", page.url).group(1)
    page.get_by_role("tab", name="Demo data").click()
    page.get_by_role("button", name="Use the demo data set").click()
    page.get_by_text("ready for training", exact=False).first.wait_for(timeout=60_000)

    open_page(page, studio, "configure", token)
    page.get_by_text("Estimated time on this machine").wait_for(timeout=60_000)

    open_page(page, studio, "train", token)
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"run=[\w.-]+"), timeout=30_000)
    run_id = re.search(r"run=([\w.-]+)", page.url).group(1)
    page.get_by_text(f"Run {run_id}", exact=False).first.wait_for(timeout=30_000)

    # A refresh mid-run finds the same run again through the URL.
    page.reload()
    wait_for_app(page)
    assert f"run={run_id}" in page.url
    page.get_by_text(f"Run {run_id}", exact=False).first.wait_for(timeout=30_000)

    # The live view reaches the end: the headline says finished and the curves are drawn.
    page.get_by_role("heading", name=re.compile(r"Lite0 feature transfer, .*: finished")).wait_for(timeout=180_000)
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=30_000)
    accuracy = page.locator('[data-testid="stMetricValue"]').first.inner_text()
    assert re.fullmatch(r"\d+ of \d+", accuracy)  # a count of validation pictures, never a bare per cent
    # The fitted head says what guided it.
    page.get_by_text("Guided by the backbone's own 1,000 ImageNet classes", exact=False).first.wait_for(timeout=30_000)

