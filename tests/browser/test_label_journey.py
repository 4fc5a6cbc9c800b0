"""Getting better with use, in a real browser: a pool of unlabelled pictures, the first suggestions
labelled, a first run, more labels, "Train again", and the side-by-side comparison."""

import re

import pytest
from browsertools import wait_for_app
from pictures import make_picture

pytestmark = pytest.mark.browser

COLOURS = ["red", "green", "blue"]  # class indices 0, 1, 2 of the picture generator


def open_page(page, studio, path: str, token: str | None = None) -> None:
    page.goto(f"{studio}/{path}" + (f"?s={token}" if token else ""))
    page.wait_for_url(re.compile(r"[?&]s=[\w-]+"))
    wait_for_app(page)


def label_first_suggestion(page, counts: dict[str, int], wanted: int) -> None:
    """Label (or skip) the first waiting suggestion by the colour its file name says."""
    # The cards are laid out in order, so the first of each control on the page belongs to #1.
    caption = page.get_by_text(re.compile(r"#1 \w+_\d+\.png")).first.inner_text()
    colour = re.search(r"#1 (\w+)_\d+\.png", caption).group(1)
    waiting = int(re.search(r"(\d+) suggestions? waiting",
                            page.get_by_text(re.compile(r"suggestions? waiting")).inner_text()).group(1))
    if counts[colour] >= wanted:
        page.get_by_role("button", name="Skip").first.click()
    else:
        field = page.get_by_placeholder("name a new class").first
        field.fill(colour)
        field.press("Enter")
        counts[colour] += 1
    done = {1: "Nothing waiting", 2: "1 suggestion waiting"}.get(waiting, f"{waiting - 1} suggestions waiting")
    page.get_by_text(done, exact=False).wait_for(timeout=60_000)


def test_pool_to_labels_to_train_again(studio, page, tmp_path):
    files = []
    for index, colour in enumerate(COLOURS):
        for number in range(12):
            path = tmp_path / f"{colour}_{number:02d}.png"
            make_picture(index, 300 + number, (64, 48)).save(path)
            files.append(str(path))

    open_page(page, studio, "data")
    token = re.search(r"[?&]s=([\w-]+)", page.url).group(1)
    page.locator('[data-testid="stFileUploader"]').filter(has_text="Drop pictures or a .zip") \
        .locator('input[type="file"]').set_input_files(files)
    page.get_by_text("Kept 36 pictures without labels").wait_for(timeout=60_000)
    page.get_by_role("button", name="Suggest what to label first").click()
    page.get_by_text(re.compile(r"36 pictures without labels")).wait_for(timeout=300_000)

    counts = {colour: 0 for colour in COLOURS}
    for _ in range(24):
        if min(counts.values()) >= 2:
            break
        label_first_suggestion(page, counts, wanted=2)
    assert min(counts.values()) >= 2
    page.get_by_text("ready for training", exact=False).first.wait_for(timeout=60_000)

    open_page(page, studio, "train", token)
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"run=[\w.-]+"), timeout=30_000)
    first_run = re.search(r"run=([\w.-]+)", page.url).group(1)
    page.get_by_role("heading", name=re.compile(r"feature transfer, .*: finished")).wait_for(timeout=300_000)

    open_page(page, studio, "data", token)
    for _ in range(24):
        if min(counts.values()) >= 4:
            break
        label_first_suggestion(page, counts, wanted=4)

    open_page(page, studio, "train", token + f"&run={first_run}")
    page.get_by_text("The data set changed since", exact=False).wait_for(timeout=60_000)
    page.get_by_role("button", name="Train again and compare").click()
    page.get_by_role("heading", name=re.compile(r"Trained again")).wait_for(timeout=60_000)
    page.get_by_text("Accuracy before").wait_for(timeout=300_000)
    page.get_by_text("Wrong → right").first.wait_for(timeout=30_000)
