"""In a real browser: a zip bomb is refused with a sentence, a clashing zip keeps its good
pictures, and an upload is deleted after a confirmation."""

import io
import zipfile

import pytest

from browsertools import wait_for_app
from pictures import make_picture

pytestmark = pytest.mark.browser


def _png(class_index: int, index: int) -> bytes:
    buffer = io.BytesIO()
    make_picture(class_index, index).save(buffer, "PNG")
    return buffer.getvalue()


def _zip(path, entries) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return str(path)


def _upload_zip(page, path: str) -> None:
    page.get_by_role("tab", name="Zip file").click()
    page.locator('input[type="file"]').first.set_input_files(path)


def test_bomb_refused_clash_kept_and_upload_deleted(studio, page, tmp_path):
    bomb = _zip(tmp_path / "bomb.zip", [(f"cats/{i}.jpg", b"\0" * 1024**2) for i in range(200)])
    clash = _zip(tmp_path / "clash.zip", [*((f"pets/{name}/{i}.png", _png(c, i)) for c, name in enumerate(("cat", "dog"))
                                           for i in range(3)),
                                          ("pets/cat/x.png", _png(0, 9)), ("pets/cat/x.png/y.png", _png(0, 10))])
    page.goto(studio + "/data")
    wait_for_app(page)
    _upload_zip(page, bomb)
    page.get_by_text("looks like a zip bomb", exact=False).first.wait_for(timeout=60_000)
    assert not list(studio.home.rglob("*.jpg")), "nothing of the bomb was written"

    _upload_zip(page, clash)
    page.get_by_text("7 pictures in 2 classes are ready", exact=False).first.wait_for(timeout=60_000)
    assert page.get_by_text("Traceback").count() == 0

    page.get_by_text("Your uploads: 1 upload,", exact=False).first.click()
    page.get_by_role("button", name="Delete clash.zip").click()
    page.get_by_role("button", name="Delete for good").click()
    page.get_by_text("Deleted clash.zip", exact=False).first.wait_for(timeout=30_000)
    page.get_by_text("No data set chosen yet", exact=False).first.wait_for()
    assert not [p for p in studio.home.rglob("*.png")]
